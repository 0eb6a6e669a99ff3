from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import EXAMPLES, Proc, base_env, free_port, http, wait_for


class Up:
    """A real `loopdeck up` in its own working directory."""

    def __init__(self, tmp_path: Path, **env_extra: str) -> None:
        self.cwd = tmp_path / "up"
        self.cwd.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = f"sqlite:///{self.cwd / 'loopdeck.db'}"
        env = base_env(self.db_url, **env_extra)
        env.pop("LOOPDECK_DATABASE_URL")  # `up` picks ./loopdeck.db by itself
        self.env = env
        self.proc = Proc(["up", "--port", str(self.port)], env, tmp_path / "up.log",
                         cwd=str(self.cwd))  # fmt: skip
        wait_for(lambda: "Loopdeck is up" in self.proc.output() or not self.proc.alive(), 60,
                 what="loopdeck up to start")  # fmt: skip
        assert self.proc.alive(), self.proc.output()

    def cli_env(self) -> dict[str, str]:
        return {**self.env, "LOOPDECK_DATABASE_URL": self.db_url}


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    server = Up(tmp_path)
    yield server
    server.proc.stop(timeout=40)


@pytest.fixture
def client(up: Up):
    with http(up.url) as c:
        yield c


__all__ = ["EXAMPLES", "Up"]
