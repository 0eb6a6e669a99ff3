"""Artifacts rendered for reading: Markdown as HTML (raw HTML disabled), JSON pretty-printed,
text with line numbers, and a line diff between two versions of the same artifact.

Only Markdown produces HTML here (markdown-it escapes the text and refuses javascript:/data:
links); everything else is returned as plain lines that the templates escape.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup

MAX_INLINE_BYTES = 512 * 1024
MAX_DIFF_LINES = 5_000
TEXT_SUFFIXES = (
    ".txt", ".log", ".csv", ".tsv", ".py", ".sh", ".yaml", ".yml", ".toml", ".ini", ".cfg",
    ".xml", ".html", ".htm", ".css", ".js", ".ts", ".sql", ".diff", ".patch", ".rst", ".out",
)  # fmt: skip


def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def kind_of(meta: dict[str, Any], content: bytes | None = None) -> str:
    """markdown | json | text | binary, from the name and media type (and a peek at content)."""
    name = (meta.get("filename") or "").lower()
    media = (meta.get("media_type") or "").lower().split(";")[0].strip()
    if name.endswith((".md", ".markdown")) or media in ("text/markdown", "text/x-markdown"):
        return "markdown"
    if name.endswith(".json") or media == "application/json" or media.endswith("+json"):
        return "json"
    if media.startswith("text/") or name.endswith(TEXT_SUFFIXES):
        return "text"
    if content is not None and b"\x00" not in content[:4096]:
        try:
            content[:4096].decode("utf-8")
        except UnicodeDecodeError as exc:
            # A multi-byte character cut at the peek boundary is still text.
            if exc.start < len(content[:4096]) - 4:
                return "binary"
        return "text"
    return "binary"


@dataclass
class Rendered:
    kind: str
    html: Markup | None = None
    lines: list[str] = field(default_factory=list)
    note: str | None = None


def _decode(content: bytes) -> str:
    return content.decode("utf-8", errors="replace")


def pretty_json(text: str) -> tuple[str, str | None]:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False), None
    except ValueError as exc:
        return text, f"not valid JSON ({exc}); shown as text"


def render(meta: dict[str, Any], content: bytes) -> Rendered:
    kind = kind_of(meta, content)
    if kind == "binary":
        return Rendered("binary", note="binary content; download it to look inside")
    if len(content) > MAX_INLINE_BYTES:
        return Rendered(
            kind, note=f"too large to show here ({len(content):,} bytes); open the raw file"
        )
    text = _decode(content)
    if kind == "markdown":
        return Rendered("markdown", html=Markup(_markdown().render(text)))
    note = None
    if kind == "json":
        text, note = pretty_json(text)
    return Rendered(kind, lines=text.splitlines() or [""], note=note)


@dataclass
class Diff:
    lines: list[tuple[str, str]]  # (add|del|hunk|ctx|file, text)
    added: int
    removed: int
    note: str | None = None


def _comparable(meta: dict[str, Any], content: bytes) -> list[str] | None:
    if kind_of(meta, content) == "binary" or len(content) > MAX_INLINE_BYTES:
        return None
    text = _decode(content)
    if kind_of(meta, content) == "json":
        text, _ = pretty_json(text)
    return text.splitlines()


def diff(old_meta: dict[str, Any], old: bytes, new_meta: dict[str, Any], new: bytes) -> Diff:
    """A unified diff from `old` to `new` (JSON compared pretty-printed)."""
    a, b = _comparable(old_meta, old), _comparable(new_meta, new)
    if a is None or b is None:
        return Diff([], 0, 0, "binary or very large artifacts are not compared")
    label_a = f"{old_meta['filename']} (attempt {old_meta.get('attempt')})"
    label_b = f"{new_meta['filename']} (attempt {new_meta.get('attempt')})"
    out: list[tuple[str, str]] = []
    added = removed = 0
    for line in difflib.unified_diff(a, b, label_a, label_b, lineterm="", n=3):
        if line.startswith(("---", "+++")) and len(out) < 2:
            out.append(("file", line))
        elif line.startswith("@@"):
            out.append(("hunk", line))
        elif line.startswith("+"):
            added += 1
            out.append(("add", line))
        elif line.startswith("-"):
            removed += 1
            out.append(("del", line))
        else:
            out.append(("ctx", line))
        if len(out) >= MAX_DIFF_LINES:
            return Diff(out, added, removed, f"diff cut at {MAX_DIFF_LINES:,} lines")
    return Diff(out, added, removed, None if out else "the two versions are identical")


def order(artifact: dict[str, Any]) -> tuple[int, str, str]:
    """Oldest version first. By attempt, then time: ids written within one millisecond do
    not sort in creation order."""
    return (artifact.get("attempt") or 0, artifact.get("created_at") or "", artifact["id"])


def versions(artifacts: list[dict[str, Any]], current: dict[str, Any]) -> list[dict[str, Any]]:
    """The other artifacts of the same run with the same filename (the attempts to compare)."""
    return sorted(
        (a for a in artifacts if a["filename"] == current["filename"] and a["id"] != current["id"]),
        key=order,
    )


def grouped(artifacts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Artifacts grouped by filename, in order of first appearance; versions oldest first."""
    groups: dict[str, dict[str, Any]] = {}
    for a in sorted(artifacts, key=order):
        g = groups.setdefault(a["filename"], {"filename": a["filename"], "items": []})
        g["items"].append(a)
    return list(groups.values())
