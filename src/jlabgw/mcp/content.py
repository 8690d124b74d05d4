"""Turn a cell's nbformat outputs into MCP content blocks for a tool result.

Text (streams, ``text/plain`` reprs, tracebacks) is merged into as few text blocks as possible,
with ANSI escape codes removed (the notebook keeps them), and capped: past ``limit`` characters
the middle is cut with a note naming the notebook cell that has it all. PNG, JPEG and GIF
outputs become image blocks, downscaled with Pillow to ``max_px`` on the longest side and to
``max_bytes`` when larger (the notebook keeps the original). SVG comes back as its source text
(no rasteriser is needed, and models read SVG), within the same text cap. Rich outputs without
``text/plain`` fall back to JSON, Markdown, LaTeX or HTML source, in that order.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastmcp.utilities.types import Image
from mcp.types import ContentBlock, TextContent
from nbformat import NotebookNode

from jlabgw.notebook.text import IMAGE_FORMATS, cap_text, joined, strip_ansi, text_of

__all__ = ["Limits", "fit_image", "outputs_to_content"]


@dataclass(frozen=True)
class Limits:
    """What one tool result may carry."""

    text: int = 20000  # characters
    image_px: int = 1568  # longest side
    image_bytes: int = 1_000_000


def _image_of(output: NotebookNode, limits: Limits | None = None) -> Image | None:
    data: dict[str, Any] = output.get("data", {})
    for mime, fmt in IMAGE_FORMATS.items():
        if mime in data:
            try:
                raw = base64.b64decode(joined(data[mime]))
            except (binascii.Error, ValueError):
                return None
            if limits is not None:
                fitted = fit_image(raw, fmt, limits)
                if fitted is None:
                    return None
                raw, fmt = fitted
            return Image(data=raw, format=fmt)
    return None


def fit_image(raw: bytes, fmt: str, limits: Limits) -> tuple[bytes, str] | None:
    """``raw`` within the pixel and byte caps (re-encoded only when it is not), or None if
    it cannot be read. PNG keeps line art and transparency; JPEG is the fallback for size."""
    from PIL import Image as PILImage  # Pillow: only when an image comes along
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(io.BytesIO(raw)) as image:
            if max(image.size) <= limits.image_px and len(raw) <= limits.image_bytes:
                return raw, fmt
            image.seek(0)  # an animated GIF: its first frame
            frame = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    frame.thumbnail((limits.image_px, limits.image_px))
    for _ in range(6):  # bounded: halve the size until it fits
        out = io.BytesIO()
        frame.save(out, "PNG", optimize=True)
        if out.tell() <= limits.image_bytes:
            return out.getvalue(), "png"
        out = io.BytesIO()
        frame.convert("RGB").save(out, "JPEG", quality=85)
        if out.tell() <= limits.image_bytes:
            return out.getvalue(), "jpeg"
        frame.thumbnail((max(1, frame.width // 2), max(1, frame.height // 2)))
    return None


def outputs_to_content(
    outputs: Iterable[NotebookNode],
    limits: Limits | None = None,
    where: str = "the notebook",
    header: str = "",
    footer: str = "",
) -> list[ContentBlock]:
    """Text blocks (adjacent text merged, capped together) and image blocks, in order."""
    limits = limits or Limits()
    items: list[str | Image] = [header] if header else []
    for output in outputs:
        image = _image_of(output, limits) if output.get("output_type") != "stream" else None
        if image is not None:
            items.append(image)
            continue
        piece = text_of(output)
        if piece:
            piece = strip_ansi(piece)
            if items and isinstance(items[-1], str):
                items[-1] += piece
            else:
                items.append(piece)
    texts = [item for item in items if isinstance(item, str)]
    total = sum(len(t) for t in texts)
    budget = max(0, limits.text - len(footer))
    blocks: list[ContentBlock] = []
    for item in items:
        if isinstance(item, Image):
            blocks.append(item.to_image_content())
            continue
        if total > budget:  # every text block gives up its share of the excess
            item = cap_text(item, max(300, budget * len(item) // total), where)
        blocks.append(TextContent(type="text", text=item))
    if footer:
        if not blocks:
            blocks.append(TextContent(type="text", text="(no new output)"))
        if isinstance(blocks[-1], TextContent):
            blocks[-1] = TextContent(type="text", text=blocks[-1].text + footer)
        else:
            blocks.append(TextContent(type="text", text=footer))
    if not blocks:
        blocks.append(TextContent(type="text", text="(no output)"))
    return blocks
