"""Turn a cell's nbformat outputs into MCP content blocks for a tool result.

Text (streams, ``text/plain`` reprs, tracebacks) is merged into as few text blocks as possible,
with ANSI escape codes removed (the notebook keeps them), and capped: past ``limit`` characters
the middle is cut with a note naming the notebook cell that has it all. PNG, JPEG and GIF
outputs become image blocks, downscaled with Pillow to ``max_px`` on the longest side and to
``max_bytes`` when larger (the notebook keeps the original). Kernel output is untrusted: an
image is decoded only as the format its MIME type names, its header size is checked against a
pixel cap before any pixel is decoded, and Pillow's decompression-bomb warning is an error; a
refused image comes back as a short text note in its place. SVG comes back as its source text
(no rasteriser is needed, and models read SVG), within the same text cap. Rich outputs without
``text/plain`` fall back to JSON, Markdown, LaTeX or HTML source, in that order.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastmcp.utilities.types import Image
from mcp.types import ContentBlock, TextContent
from nbformat import NotebookNode

from jlabgw.notebook.text import IMAGE_FORMATS, cap_text, joined, strip_ansi, text_of

__all__ = ["ImageRefused", "Limits", "fit_image", "image_blocks", "outputs_to_content"]

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF"}


@dataclass(frozen=True)
class Limits:
    """What one tool result may carry."""

    text: int = 20000  # characters
    image_px: int = 1568  # longest side
    image_bytes: int = 1_000_000
    image_pixels: int = 50_000_000  # width x height, checked before decoding


class ImageRefused(Exception):
    """An image output that is not shown: why, in a few words."""


def _too_large(size: str, limits: Limits) -> str:
    return f"{size} is over the cap of {limits.image_pixels:,} pixels"


def _refusal_note(mime: str, reason: str, output: NotebookNode) -> str:
    data: dict[str, Any] = output.get("data", {})
    note = f"[{mime} refused: {reason}; the notebook keeps the original]\n"
    if "text/plain" in data:
        note += joined(data["text/plain"]) + "\n"
    return note


def _image_of(output: NotebookNode, limits: Limits | None = None) -> Image | str | None:
    """The output's image block, a note saying why its image was refused, or None (no image)."""
    data: dict[str, Any] = output.get("data", {})
    for mime, fmt in IMAGE_FORMATS.items():
        if mime in data:
            try:
                raw = base64.b64decode(joined(data[mime]))
            except (binascii.Error, ValueError):
                return _refusal_note(mime, "not valid base64", output)
            try:
                raw, fmt = _fit(raw, fmt, limits or Limits())
            except ImageRefused as exc:
                return _refusal_note(mime, str(exc), output)
            return Image(data=raw, format=fmt)
    return None


def fit_image(raw: bytes, fmt: str, limits: Limits) -> tuple[bytes, str] | None:
    """``raw`` within the pixel and byte caps (re-encoded only when it is not), or None if
    it cannot be read or is refused (see :func:`_fit`)."""
    try:
        return _fit(raw, fmt, limits)
    except ImageRefused:
        return None


def _fit(raw: bytes, fmt: str, limits: Limits) -> tuple[bytes, str]:
    """``raw`` within the caps, or :class:`ImageRefused`. Only the format ``fmt`` (from the MIME
    type) is tried; the header's size is checked against ``limits.image_pixels`` before any
    pixel is decoded. PNG keeps line art and transparency; JPEG is the fallback for size."""
    from PIL import Image as PILImage  # Pillow: only when an image comes along
    from PIL import UnidentifiedImageError

    name = _PIL_FORMATS.get(fmt)
    if name is None:
        raise ImageRefused(f"{fmt} images are not shown")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(raw), formats=[name]) as image:
                width, height = image.size
                if width * height > limits.image_pixels:
                    raise ImageRefused(_too_large(f"{width}x{height} px", limits))
                if max(image.size) <= limits.image_px and len(raw) <= limits.image_bytes:
                    image.verify()  # the data is the named format throughout, not only its head
                    return raw, fmt
                image.seek(0)  # an animated GIF: its first frame
                frame = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        # Pillow's own bomb check, in open(): its message names the pixel count, not the sides
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "its size"
        raise ImageRefused(_too_large(size, limits) + ", a possible decompression bomb") from None
    except UnidentifiedImageError:
        raise ImageRefused(f"not a valid {name} image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageRefused(f"a broken {name} image ({exc})") from None
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
    raise ImageRefused(f"does not fit in {limits.image_bytes:,} bytes even when downscaled")


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
        if isinstance(image, Image):
            items.append(image)
            continue
        piece = image if image is not None else text_of(output)
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


def image_blocks(outputs: Iterable[NotebookNode], limits: Limits) -> list[ContentBlock]:
    """The image outputs among ``outputs`` as image blocks, within ``limits`` (a refused one
    as its text note)."""
    blocks: list[ContentBlock] = []
    for output in outputs:
        image = _image_of(output, limits)
        if isinstance(image, Image):
            blocks.append(image.to_image_content())
        elif image is not None:
            blocks.append(TextContent(type="text", text=image))
    return blocks
