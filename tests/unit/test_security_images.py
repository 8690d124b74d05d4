"""Kernel output is untrusted input to the MCP server: hostile images (issue 13).

A header claiming a huge size, a palette PNG that compresses 169 Mpx into a few hundred kB, an
image whose bytes are not the format its MIME type names: each comes back as a short text note in
place of the image (the cell's text outputs still come back), never as an exception, and without
decoding the pixels.
"""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import nbformat
from mcp.types import ImageContent, TextContent

from jlabgw.mcp.content import Limits, fit_image, outputs_to_content


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """65 bytes: a valid PNG signature, IHDR (RGB, 8 bit) claiming ``width`` x ``height``, an
    empty IDAT and IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b""))
        + _chunk(b"IEND", b"")
    )


def tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def _display(mime: str, raw: bytes, text: str | None = "<Figure size 640x480>") -> object:
    data = {mime: base64.b64encode(raw).decode()}
    if text is not None:
        data["text/plain"] = text
    return nbformat.v4.new_output("display_data", data=data)


def test_header_bomb_is_65_bytes_and_refused_with_a_note() -> None:
    bomb = header_bomb()
    assert len(bomb) == 65
    outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="before\n"),
        _display("image/png", bomb),
        nbformat.v4.new_output("stream", name="stdout", text="after\n"),
    ]
    blocks = outputs_to_content(outputs)
    assert not any(isinstance(b, ImageContent) for b in blocks)
    text = "".join(b.text for b in blocks if isinstance(b, TextContent))
    assert text.startswith("before\n")
    assert text.endswith("after\n")
    assert "image/png refused" in text
    assert "900,000,000 pixels is over the cap of 50,000,000 pixels" in text, text
    assert "notebook keeps" in text
    assert fit_image(bomb, "png", Limits()) is None


def test_pixel_cap_refuses_before_decoding() -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (200, 100), (5, 5, 5)).save(buf, "PNG")
    outputs = [_display("image/png", buf.getvalue(), text=None)]
    blocks = outputs_to_content(outputs, Limits(image_pixels=10_000))
    (block,) = blocks
    assert isinstance(block, TextContent)
    assert "200x100 px is over the cap of 10,000 pixels" in block.text, block.text
    # under the cap: an image
    (block,) = outputs_to_content(outputs, Limits(image_pixels=30_000))
    assert isinstance(block, ImageContent)


def test_png_sent_as_jpeg_or_gif_is_refused() -> None:
    png = tiny_png()
    for mime in ("image/jpeg", "image/gif"):
        blocks = outputs_to_content([_display(mime, png, text=None)])
        assert not any(isinstance(b, ImageContent) for b in blocks), mime
        text = "".join(b.text for b in blocks if isinstance(b, TextContent))
        assert f"{mime} refused: not a valid" in text, text
    assert fit_image(png, "jpeg", Limits()) is None
    # the same bytes under their own MIME type pass
    (block,) = outputs_to_content([_display("image/png", png, text=None)])
    assert isinstance(block, ImageContent)


def test_palette_bomb_memory_stays_bounded(tmp_path: Path) -> None:
    """A 13000x13000 palette PNG of a few hundred kB, refused by the cap: the process's peak RSS
    grows by far less than the 169 MB (palette) or 676 MB (RGBA) that decoding would take."""
    from PIL import Image

    image = Image.new("P", (13000, 13000), 0)
    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    image.paste(1, (100, 100, 200, 200))
    path = tmp_path / "bomb.png"
    image.save(path, "PNG", optimize=True)
    del image
    size = path.stat().st_size
    assert size < 2_000_000, size
    script = textwrap.dedent(
        f"""
        import base64, resource, sys
        import nbformat
        from PIL import Image  # imported before the baseline, as in a running server
        from jlabgw.mcp.content import outputs_to_content
        raw = open({str(path)!r}, "rb").read()
        out = nbformat.v4.new_output(
            "display_data", data={{"image/png": base64.b64encode(raw).decode()}}
        )
        outputs_to_content([nbformat.v4.new_output("stream", name="stdout", text="warm\\n")])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        blocks = outputs_to_content([out])
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        note = getattr(blocks[0], "text", "")[:300].replace("\\n", " ")
        print((after - before) // 1024, blocks[0].type, note)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    grown_mib, kind, note = run.stdout.split(" ", 2)
    print(f"palette bomb {size} bytes: peak RSS +{grown_mib} MiB, {kind}: {note}")
    assert kind == "text", run.stdout
    assert "169,000,000 pixels is over the cap" in note
    assert int(grown_mib) < 100, run.stdout


def test_the_pixel_cap_is_a_setting(tmp_path: Path) -> None:
    from jlabgw.mcp.results import limits_for
    from tests.helpers import make_settings

    settings = make_settings(tmp_path, image_max_pixels="1000000")
    limits = limits_for(settings)
    assert limits.image_pixels == 1_000_000
    blocks = outputs_to_content([_display("image/png", header_bomb(2000, 2000))], limits)
    text = " ".join(b.text for b in blocks if isinstance(b, TextContent))
    assert "2000x2000 px is over the cap of 1,000,000 pixels" in text
