"""Turn a cell's nbformat outputs into MCP content blocks for a tool result.

Text (streams, ``text/plain`` reprs, tracebacks) is merged into as few text blocks as possible,
with ANSI escape codes removed (the notebook keeps them). PNG, JPEG and GIF outputs become
image blocks with the right mime type: Jupyter stores them base64-encoded, so they are decoded
once here and fastmcp's :class:`~fastmcp.utilities.types.Image` encodes them for the wire.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Any

from fastmcp.utilities.types import Image
from mcp.types import ContentBlock, TextContent
from nbformat import NotebookNode

__all__ = ["has_error", "outputs_to_content", "outputs_to_text", "strip_ansi"]

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif"}


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def has_error(outputs: Iterable[NotebookNode]) -> bool:
    return any(o.get("output_type") == "error" for o in outputs)


def _text_of(output: NotebookNode) -> str | None:
    kind = output.get("output_type")
    if kind == "stream":
        return str(output.get("text", ""))
    if kind == "error":
        tb = "\n".join(output.get("traceback", []))
        head = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
        return strip_ansi(f"{head}\n{tb}" if tb else head) + "\n"
    data: dict[str, Any] = output.get("data", {})
    if "text/plain" in data:
        text = data["text/plain"]
        return (text if isinstance(text, str) else "".join(text)) + "\n"
    if data:
        return f"[{', '.join(sorted(data))} output: see the notebook]\n"
    return None


def _image_of(output: NotebookNode) -> Image | None:
    data: dict[str, Any] = output.get("data", {})
    for mime, fmt in _IMAGE_FORMATS.items():
        if mime in data:
            raw = data[mime]
            b64 = raw if isinstance(raw, str) else "".join(raw)
            try:
                return Image(data=base64.b64decode(b64), format=fmt)
            except (binascii.Error, ValueError):
                return None
    return None


def outputs_to_text(outputs: Iterable[NotebookNode]) -> str:
    """All textual output, ANSI-free (images appear as a placeholder line)."""
    parts: list[str] = []
    for output in outputs:
        if _image_of(output) is not None and "text/plain" not in output.get("data", {}):
            parts.append("[image]\n")
            continue
        text = _text_of(output)
        if text:
            parts.append(strip_ansi(text))
    return "".join(parts)


def outputs_to_content(outputs: Iterable[NotebookNode], header: str = "") -> list[ContentBlock]:
    """Text blocks (adjacent text merged) and image blocks, in output order."""
    blocks: list[ContentBlock] = []
    text = header
    for output in outputs:
        image = _image_of(output) if output.get("output_type") != "stream" else None
        if image is not None:
            if text:
                blocks.append(TextContent(type="text", text=text))
                text = ""
            blocks.append(image.to_image_content())
            continue
        piece = _text_of(output)
        if piece:
            text += strip_ansi(piece)
    if text or not blocks:
        blocks.append(TextContent(type="text", text=text or "(no output)"))
    return blocks
