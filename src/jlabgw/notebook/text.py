"""Plain-text views of a cell's outputs: what a terminal, a log or a text result shows.

No MCP here: the CLI (``jlabgw run``) and the session layer use these; :mod:`jlabgw.mcp.content`
builds MCP blocks on top of them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any

from nbformat import NotebookNode

__all__ = [
    "IMAGE_FORMATS",
    "cap_text",
    "collapse_carriage_returns",
    "has_error",
    "joined",
    "outputs_to_text",
    "strip_ansi",
    "text_of",
]

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif"}
_TEXT_FALLBACKS = ("application/json", "text/markdown", "text/latex", "text/html")
_HEAD_SHARE = 0.25  # of a cut text, the head keeps this much, the tail (latest lines) the rest


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def collapse_carriage_returns(text: str) -> str:
    """Each line as a terminal shows it: a progress bar redrawn with ``\\r`` (tqdm without
    widgets) ends as its last state, not thousands of states. The notebook keeps the raw text,
    which Jupyter renders the same way."""
    if "\r" not in text:
        return text
    lines = text.split("\n")
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines)


def has_error(outputs: Iterable[NotebookNode]) -> bool:
    return any(o.get("output_type") == "error" for o in outputs)


def text_of(output: NotebookNode) -> str | None:
    kind = output.get("output_type")
    if kind == "stream":
        return collapse_carriage_returns(str(output.get("text", "")))
    if kind == "error":
        tb = "\n".join(output.get("traceback", []))
        head = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
        return strip_ansi(f"{head}\n{tb}" if tb else head) + "\n"
    data: dict[str, Any] = output.get("data", {})
    if "image/svg+xml" in data:
        return f"[SVG image]\n{joined(data['image/svg+xml'])}\n"
    if "text/plain" in data:
        return joined(data["text/plain"]) + "\n"
    for mime in _TEXT_FALLBACKS:
        if mime in data:
            value = data[mime]
            text = json.dumps(value, indent=1) if mime == "application/json" else joined(value)
            return f"[{mime}]\n{text}\n"
    if data:
        return f"[{', '.join(sorted(data))} output: see the notebook]\n"
    return None


def joined(value: Any) -> str:
    return value if isinstance(value, str) else "".join(value)


def cap_text(text: str, limit: int, where: str) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and (mostly) tail with a
    note of what was cut and ``where`` the whole of it is."""
    if len(text) <= limit:
        return text
    note_room = 200
    keep = max(0, limit - note_room)
    head = int(keep * _HEAD_SHARE)
    tail = keep - head
    cut = len(text) - head - tail
    return (
        f"{text[:head]}\n[... {cut:,} characters cut here; the whole output is in {where} ...]\n"
        f"{text[len(text) - tail :]}"
    )


def _has_image(output: NotebookNode) -> bool:
    """The output carries a decodable PNG, JPEG or GIF."""
    data: dict[str, Any] = output.get("data", {})
    for mime in IMAGE_FORMATS:
        if mime in data:
            try:
                base64.b64decode(joined(data[mime]))
            except (binascii.Error, ValueError):
                return False
            return True
    return False


def outputs_to_text(outputs: Iterable[NotebookNode]) -> str:
    """All textual output, ANSI-free (images appear as a placeholder line)."""
    parts: list[str] = []
    for output in outputs:
        if _has_image(output) and "text/plain" not in output.get("data", {}):
            parts.append("[image]\n")
            continue
        text = text_of(output)
        if text:
            parts.append(strip_ansi(text))
    return "".join(parts)
