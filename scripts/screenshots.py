"""Regenerate the dashboard screenshots in docs/screenshots/ (shown in the README).

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

Starts `loopdeck up` in a temporary directory with the example workflows and a small gated one
(an approval gate), runs them, and photographs each page and two dialogs of the control
plane with the distribution's Chromium (apt-get install -y chromium) through playwright.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("LOOPDECK_CHROMIUM", "/usr/bin/chromium")
# A release that waits for a person before publishing (docs/control-plane.md, approval gates).
GATED = """
workflows:
  ship:
    description: Build and lint, then publish once someone approves
    inputs:
      version: {type: string, default: "1.5.1"}
    steps:
      build: {run: "python -m examples.release build", timeout: 120}
      lint: {run: "python -m examples.release lint", needs: [build]}
      publish: {run: "python -m examples.release publish", needs: [build, lint],
                approval: {prompt: "Publish this release to the package index?"}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"screenshots: timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPDECK_")}
        env.update(LOOPDECK_HEARTBEAT_INTERVAL="1", LOOPDECK_STALL_AFTER="10",
                   LOOPDECK_TRACKING_URL="https://mlflow.example.com/#/runs/{run_id}")  # fmt: skip
        gated = Path(tmp) / "gated.yaml"
        gated.write_text(GATED)
        examples = str(ROOT / "examples" / "loopdeck.yaml")
        up = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "up", "--port", str(port),
             "--config", examples, "--config", str(gated)],  # fmt: skip
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            shoot(url, out)
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(60)
    print(f"screenshots written to {out}")
    return 0


def shoot(url: str, out: Path) -> None:
    api = httpx.Client(base_url=url, timeout=10)
    _wait(lambda: api.get("/api/runners").json()["runners"], 30, "loopdeck up")

    def start(workflow: str, inputs: dict[str, Any], **extra: Any) -> str:
        resp = api.post("/api/runs", json={"workflow": workflow, "inputs": inputs, **extra})
        resp.raise_for_status()
        return str(resp.json()["id"])

    def finished(run_id: str) -> None:
        _wait(lambda: api.get(f"/api/runs/{run_id}").json()["status"]
              in ("succeeded", "failed", "cancelled"), 60, f"run {run_id}")  # fmt: skip

    start("release", {"version": "1.4.0"})
    essay = start("essay", {"topic": "tides", "pace": 0.2})
    broken = start("release", {"version": "1.5.0", "break_docs": True})
    ship = start("ship", {"version": "1.5.1"})
    for run_id in (essay, broken):
        finished(run_id)
    _wait(lambda: api.get(f"/api/runs/{ship}").json()["status"] == "waiting", 60, "the gate")
    start("essay", {"topic": "lighthouses"}, queue="gpu")  # stays queued: nobody serves "gpu"
    sleepy = start("sleepy", {"seconds": 600})
    _wait(lambda: api.get(f"/api/runs/{sleepy}").json()["status"] == "running", 30, "sleepy")
    _wait(lambda: api.get(f"/api/runs/{sleepy}/events").json()["events"][-1]["type"] == "log",
          30, "sleepy's first log line")  # fmt: skip
    drafts = [a for a in api.get(f"/api/runs/{essay}/artifacts").json()["artifacts"]
              if a["filename"] == "draft.md"]  # fmt: skip

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)

        def page(width: int = 1280, height: int = 860, scheme: str = "light") -> Any:
            ctx = browser.new_context(viewport={"width": width, "height": height},
                                      color_scheme=scheme, device_scale_factor=1)  # fmt: skip
            return ctx.new_page()

        def snap(p: Any, name: str, path: str, full: bool = False) -> None:
            p.goto(url + path)
            p.wait_for_function("window.loopdeck && window.loopdeck.ready")
            p.wait_for_timeout(300)
            p.screenshot(path=str(out / name), full_page=full)

        p = page()
        snap(p, "runs.png", "/")
        p.get_by_role("button", name="Start run").click()
        p.wait_for_timeout(200)
        p.screenshot(path=str(out / "start-run.png"))
        p.goto(url + f"/runs/{essay}")
        p.locator("#r-artifacts details", has_text="draft.md · attempt 3").locator(
            "summary").click()  # fmt: skip
        p.locator("#r-artifacts .markdown h1").first.wait_for()
        p.screenshot(path=str(out / "run-loop.png"), full_page=True)
        snap(p, "run-graph.png", f"/runs/{broken}")
        p.get_by_role("button", name="Re-run failed…").click()
        p.locator("#confirm-preview .plan-rerun").wait_for()
        p.get_by_label("Reason (required)").fill("the cross-reference is fixed")
        p.screenshot(path=str(out / "rerun-dialog.png"))
        p.keyboard.press("Escape")
        snap(p, "run-gate.png", f"/runs/{ship}")
        snap(p, "run-live.png", f"/runs/{sleepy}")
        snap(p, "artifact-diff.png",
             f"/runs/{essay}/artifacts/{drafts[-1]['id']}?against={drafts[0]['id']}")  # fmt: skip
        snap(p, "runners.png", "/runners")
        snap(p, "workflows.png", "/workflows")
        snap(page(scheme="dark"), "runs-dark.png", "/")
        snap(page(375, 812, "dark"), "run-mobile.png", f"/runs/{essay}")
        browser.close()
    api.post(f"/api/runs/{sleepy}/cancel", json={"reason": "screenshots taken"})
    api.close()


if __name__ == "__main__":
    sys.exit(main())
