"""Pure pieces of the control plane: config diffs, token and rate-limit settings, exposure
checks, and the loader's rule on approval gates."""

import pytest

from api.auth import parse_tokens
from shared.cli.serve import check_exposure, is_loopback
from shared.errors import ConfigError, WorkflowFileError
from shared.settings import Settings
from shared.workflows import definition_diff, load_text


def test_definition_diff_lists_leaf_changes_by_path():
    before = {"steps": {"a": {"run": "x", "retries": 0}, "b": {"run": "y", "needs": ["a"]}},
              "queue": "default"}  # fmt: skip
    after = {"steps": {"a": {"run": "x", "retries": 2}, "c": {"run": "z"}},
             "queue": "default", "priority": 5}  # fmt: skip
    assert definition_diff(before, after) == [
        {"path": "priority", "change": "added", "before": None, "after": 5},
        {"path": "steps.a.retries", "change": "changed", "before": 0, "after": 2},
        {"path": "steps.b", "change": "removed", "before": {"run": "y", "needs": ["a"]},
         "after": None},
        {"path": "steps.c", "change": "added", "before": None, "after": {"run": "z"}},
    ]  # fmt: skip
    assert definition_diff(before, before) == []
    assert definition_diff({"needs": ["a"]}, {"needs": ["a", "b"]})[0]["path"] == "needs"
    assert definition_diff(1, 2) == [{"path": "$", "change": "changed", "before": 1, "after": 2}]


def test_tokens_parse_names_secrets_with_colons_and_roles():
    tokens = parse_tokens(" ana:s3cret:with:colons:viewer , ci-bot:another-secret:admin ,")
    assert [(t.name, t.role) for t in tokens] == [("ana", "viewer"), ("ci-bot", "admin")]
    assert parse_tokens("") == ()
    with pytest.raises(ConfigError, match="entry 1"):
        parse_tokens("bad name:long-secret-1:viewer")


def test_rate_limit_setting():
    assert (Settings().rate_limit, Settings().rate_limit_window) == (120, 60.0)
    s = Settings.from_env({"LOOPDECK_RATE_LIMIT": "30/10"})
    assert (s.rate_limit, s.rate_limit_window) == (30, 10.0)
    assert Settings.from_env({"LOOPDECK_RATE_LIMIT": "50"}).rate_limit_window == 60.0
    assert Settings.from_env({"LOOPDECK_RATE_LIMIT": "off"}).rate_limit == 0
    assert Settings.from_env({"LOOPDECK_RATE_LIMIT": "5/30s"}).rate_limit_window == 30.0
    for bad in ("lots", "5/0", "-1/60", "5/x"):
        with pytest.raises(ConfigError, match="LOOPDECK_RATE_LIMIT"):
            Settings.from_env({"LOOPDECK_RATE_LIMIT": bad})


def test_without_tokens_the_api_only_listens_on_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    open_settings = Settings()
    check_exposure("127.0.0.1", open_settings, insecure=False)
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0 without API tokens"):
        check_exposure("0.0.0.0", open_settings, insecure=False)
    check_exposure("0.0.0.0", open_settings, insecure=True)
    check_exposure("0.0.0.0", Settings(api_tokens="a:long-secret-1:admin"), insecure=False)


def test_approval_gates_are_for_graph_steps():
    wf = load_text("workflows:\n  g:\n    steps:\n      s: {run: x, approval: {prompt: 'ok?'}}\n")
    assert wf["g"].steps["s"].approval.prompt == "ok?"
    with pytest.raises(WorkflowFileError) as err:
        load_text(
            "workflows:\n  l:\n    loop:\n      produce: {call: 'm:f', approval: {prompt: p}}\n"
            "      evaluate: {call: 'm:g'}\n"
        )
    assert err.value.field == "loop.produce.approval"
    with pytest.raises(WorkflowFileError) as err:
        load_text("workflows:\n  g:\n    steps:\n      s: {run: x, approval: {prompt: ''}}\n")
    assert err.value.field == "steps.s.approval.prompt"
