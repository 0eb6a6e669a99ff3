"""The differences between two workflow definitions, for a retried or restarted run and its
parent (the dashboard shows them next to the run)."""

from __future__ import annotations

from typing import Any

_ABSENT: Any = object()


def definition_diff(before: Any, after: Any) -> list[dict[str, Any]]:
    """[{path, change, before, after}] for every leaf that differs, in path order.

    Mappings are compared key by key (`path` is dotted: `steps.unit.retries`); anything else,
    lists included, is compared as a whole. `change` is added, removed or changed; an absent
    side is null.
    """
    out: list[dict[str, Any]] = []
    _walk(before, after, "", out)
    return out


def _walk(before: Any, after: Any, path: str, out: list[dict[str, Any]]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after), key=str):
            sub = f"{path}.{key}" if path else str(key)
            _walk(before.get(key, _ABSENT), after.get(key, _ABSENT), sub, out)
        return
    if before is not _ABSENT and after is not _ABSENT and before == after:
        return
    change = "added" if before is _ABSENT else "removed" if after is _ABSENT else "changed"
    out.append(
        {
            "path": path or "$",
            "change": change,
            "before": None if before is _ABSENT else before,
            "after": None if after is _ABSENT else after,
        }
    )
