"""Bad input through the CLI: one clear line on stderr and exit 2; failures exit 1."""

import pytest

from ..helpers import cli


def _one_line_error(result, code, fragment):
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "nope"], "unknown workflow 'nope'"),
        (["run", "essay"], "input 'topic' is required"),
        (["run", "essay", "-i", "topic=a", "-i", "words=many"], "'many' is not a valid integer"),
        (["run", "essay", "-i", "colour=red"], "unknown input 'colour'"),
        (["run", "essay", "-i", "topic"], "-i expects key=value"),
        (["run", "essay", "--inputs", "{nope"], "--inputs is not valid JSON"),
        (["runs", "show", "run_nope"], "no run run_nope"),
        (["runs", "cancel", "run_nope"], "no run run_nope"),
        (["runs", "list", "--status", "bogus"], "invalid choice"),
        (["runner", "--bogus"], "unrecognized arguments"),
        (["runner"], "no workflow files"),
        (["runner", "--config", "/nonexistent.yaml"], "/nonexistent.yaml: cannot read"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_one_line(env, store, args, fragment):
    _one_line_error(cli(args, env), 2, fragment)


def test_bad_workflow_file_names_file_workflow_and_field(env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("workflows:\n  w:\n    steps:\n      a: {run: x, retries: lots}\n")
    result = cli(["workflows", "publish", str(bad)], env)
    _one_line_error(result, 2, f"{bad}: workflow 'w', field 'steps.a.retries'")
    result = cli(["runner", "--config", str(bad)], env)
    _one_line_error(result, 2, "field 'steps.a.retries'")


def test_bad_settings_and_database_urls(env, tmp_path):
    _one_line_error(cli(["runs", "list"], {**env, "LOOPDECK_STALL_AFTER": "soon"}), 2,
                    "LOOPDECK_STALL_AFTER='soon' is not a number")  # fmt: skip
    _one_line_error(cli(["runs", "list"], {**env, "LOOPDECK_DATABASE_URL": "mysql://x/y"}), 2,
                    "unsupported database URL")  # fmt: skip
    missing_dir = f"sqlite:///{tmp_path}/no/such/dir/x.db"
    _one_line_error(cli(["runs", "list"], {**env, "LOOPDECK_DATABASE_URL": missing_dir}), 2,
                    "directory of the SQLite database does not exist")  # fmt: skip


def test_state_conflicts_exit_1(env, store):
    run, _ = store.create_run("essay", {"topic": "a"})
    assert cli(["runs", "cancel", run["id"], "--reason", "x"], env).returncode == 0
    _one_line_error(cli(["runs", "cancel", run["id"]], env), 1, "already cancelled")
    _one_line_error(cli(["runs", "retry", run["id"] + "x"], env), 2, "no run")


def test_list_show_publish_and_upgrade(env, store, tmp_path):
    run, _ = store.create_run("essay", {"topic": "hello"})
    listed = cli(["runs", "list"], env)
    assert listed.returncode == 0 and run["id"] in listed.stdout
    import json

    as_json = json.loads(cli(["runs", "list", "--json"], env).stdout)
    assert as_json["runs"][0]["id"] == run["id"]
    shown = cli(["runs", "show", run["id"], "--events"], env)
    assert shown.returncode == 0 and "run.queued" in shown.stdout
    from shared.migrate import head_revision

    assert f"revision {head_revision()}" in cli(["db", "upgrade"], env).stdout
    good = tmp_path / "good.yaml"
    good.write_text("workflows:\n  mine:\n    steps:\n      a: {run: 'true'}\n")
    published = cli(["workflows", "publish", str(good)], env)
    assert published.returncode == 0 and "mine" in published.stdout
    assert "mine" in cli(["workflows", "list"], env).stdout
    created = cli(["run", "mine"], env)
    assert created.returncode == 0 and created.stdout.strip().startswith("run_")
