"""OutputRecorder and rendering, fed with IOPub messages shaped as ipykernel sends them."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from mcp.types import ImageContent, TextContent
from nbformat.v4 import new_code_cell

from jlabgw.mcp.content import outputs_to_content
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.recorder import DisplayIndex, OutputRecorder
from jlabgw.notebook.text import outputs_to_text, strip_ansi
from jlabgw.notebook.writer import NotebookWriter


def msg(msg_type: str, **content: Any) -> dict[str, Any]:
    return {
        "header": {"msg_type": msg_type},
        "msg_type": msg_type,
        "content": content,
        "parent_header": {"msg_id": "p"},
        "metadata": {},
        "channel": "iopub",
    }


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.fixture
def doc(tmp_path: Path) -> Iterator[NotebookDoc]:
    writer = NotebookWriter(delay=0.01)
    d = NotebookDoc.create(tmp_path, "t", writer)
    yield d
    writer.close()


def record(
    doc: NotebookDoc, *messages: dict[str, Any], displays: DisplayIndex | None = None
) -> nbformat.NotebookNode:
    cell = new_code_cell("x")
    doc.append_cell(cell)
    recorder = OutputRecorder(doc, cell, displays or DisplayIndex())
    for m in messages:
        recorder(m)
    return cell


def test_consecutive_streams_merge_per_name(doc: NotebookDoc) -> None:
    cell = record(
        doc,
        msg("stream", name="stdout", text="a\n"),
        msg("stream", name="stdout", text="b\n"),
        msg("stream", name="stderr", text="oops\n"),
        msg("stream", name="stdout", text="c\n"),
    )
    assert [(o.name, o.text) for o in cell.outputs] == [
        ("stdout", "a\nb\n"),
        ("stderr", "oops\n"),
        ("stdout", "c\n"),
    ]


def test_clear_output_wait_keeps_only_the_last_state(doc: NotebookDoc) -> None:
    messages = []
    for i in range(100):
        messages += [msg("clear_output", wait=True), msg("stream", name="stdout", text=f"{i}%")]
    cell = record(doc, *messages)
    assert [o.text for o in cell.outputs] == ["99%"]


def test_clear_output_immediate(doc: NotebookDoc) -> None:
    cell = record(doc, msg("stream", name="stdout", text="gone"), msg("clear_output", wait=False))
    assert cell.outputs == []


def test_update_display_data_reaches_earlier_cells(doc: NotebookDoc) -> None:
    displays = DisplayIndex()
    first = record(
        doc,
        msg("display_data", data={"text/plain": "v1"}, metadata={}, transient={"display_id": "d1"}),
        displays=displays,
    )
    second = record(
        doc,
        msg(
            "update_display_data",
            data={"text/plain": "v2"},
            metadata={},
            transient={"display_id": "d1"},
        ),
        displays=displays,
    )
    assert first.outputs[0].data == {"text/plain": "v2"}
    assert second.outputs == []
    assert "transient" not in first.outputs[0]


def test_all_mimetypes_kept_and_notebook_valid(doc: NotebookDoc) -> None:
    png = base64.b64encode(tiny_png()).decode()
    cell = record(
        doc,
        msg(
            "display_data",
            data={"text/plain": "<Figure>", "image/png": png, "text/html": "<b>x</b>"},
            metadata={},
        ),
    )
    assert set(cell.outputs[0].data) == {"text/plain", "image/png", "text/html"}
    doc.flush()
    nbformat.validate(nbformat.read(doc.path, as_version=4))


def test_non_output_messages_ignored(doc: NotebookDoc) -> None:
    cell = record(
        doc,
        msg("execute_input", code="x", execution_count=1),
        msg("status", execution_state="busy"),
        msg("comm_open", comm_id="c"),
    )
    assert cell.outputs == []


def test_render_text_image_and_error(doc: NotebookDoc) -> None:
    png = tiny_png()
    cell = record(
        doc,
        msg("stream", name="stdout", text="before\n"),
        msg("display_data", data={"image/png": base64.b64encode(png).decode() + "\n"}, metadata={}),
        msg("execute_result", data={"text/plain": "42"}, metadata={}, execution_count=3),
        msg(
            "error",
            ename="ValueError",
            evalue="bad",
            traceback=["\x1b[0;31mValueError\x1b[0m: bad"],
        ),
    )
    blocks = outputs_to_content(cell.outputs)
    assert isinstance(blocks[0], TextContent)
    assert blocks[0].text == "before\n"
    assert isinstance(blocks[1], ImageContent)
    assert blocks[1].mime_type == "image/png"
    assert base64.b64decode(blocks[1].data) == png  # decoded once, encoded once
    assert isinstance(blocks[2], TextContent)
    assert blocks[2].text == "42\nValueError: bad\nValueError: bad\n"
    assert "\x1b" not in blocks[2].text


def test_render_plain_fallback_and_empty(doc: NotebookDoc) -> None:
    cell = record(
        doc,
        msg(
            "display_data", data={"text/html": "<table/>", "text/plain": "   a\n0  1"}, metadata={}
        ),
    )
    assert outputs_to_text(cell.outputs) == "   a\n0  1\n"
    only_html = record(doc, msg("display_data", data={"text/html": "<b/>"}, metadata={}))
    assert outputs_to_text(only_html.outputs) == "[text/html]\n<b/>\n"  # the source, marked
    blocks = outputs_to_content([])
    assert isinstance(blocks[0], TextContent)
    assert blocks[0].text == "(no output)"


def test_strip_ansi() -> None:
    assert strip_ansi("\x1b[1;32mgreen\x1b[0m \x1b[2Kdone") == "green done"


def test_cap_keeps_head_and_mostly_tail_and_says_where() -> None:
    from jlabgw.notebook.text import cap_text

    text = "".join(f"line {i}\n" for i in range(100_000))
    capped = cap_text(text, 2000, "cell 3 of run.ipynb")
    assert len(capped) <= 2000
    assert capped.startswith("line 0\n")
    assert capped.endswith("line 99999\n")
    cut = len(text) - len(capped.split("\n[... ")[0]) - len(capped.split("...]\n")[-1])
    assert f"[... {cut:,} characters cut here; the whole output is in cell 3 of run.ipynb" in capped
    assert cap_text("short", 2000, "x") == "short"


def test_text_blocks_share_the_limit_and_images_are_kept() -> None:
    from jlabgw.mcp.content import Limits

    outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="a" * 50_000),
        nbformat.v4.new_output(
            "display_data", data={"image/png": base64.b64encode(tiny_png()).decode()}
        ),
        nbformat.v4.new_output("stream", name="stdout", text="b" * 10_000),
    ]
    blocks = outputs_to_content(outputs, Limits(text=6000), "cell 0 of x.ipynb", footer="\n[end]")
    assert [type(b) for b in blocks] == [TextContent, ImageContent, TextContent]
    assert sum(len(b.text) for b in blocks if isinstance(b, TextContent)) <= 6000
    assert blocks[-1].text.endswith("b\n[end]")
    assert "characters cut here" in blocks[0].text


def test_carriage_returns_collapse_to_the_last_state() -> None:
    from jlabgw.notebook.text import collapse_carriage_returns

    bar = "".join(f"\r{i}/100" for i in range(101)) + "\n" + "done\n"
    assert collapse_carriage_returns(bar) == "100/100\ndone\n"
    assert collapse_carriage_returns("a\r\nb\n") == "a\nb\n"  # CRLF line ends are kept as lines
    assert collapse_carriage_returns("plain\n") == "plain\n"


def test_rich_fallbacks_and_svg() -> None:
    outputs = [
        nbformat.v4.new_output("display_data", data={"application/json": {"a": [1, 2]}}),
        nbformat.v4.new_output("display_data", data={"text/markdown": "# Title"}),
        nbformat.v4.new_output(
            "display_data", data={"image/svg+xml": "<svg/>", "text/plain": "<Figure>"}
        ),
        nbformat.v4.new_output("display_data", data={"text/html": "<b>x</b>", "text/plain": "x"}),
    ]
    text = outputs_to_text(outputs)
    assert text == (
        '[application/json]\n{\n "a": [\n  1,\n  2\n ]\n}\n'
        "[text/markdown]\n# Title\n"
        "[SVG image]\n<svg/>\n"
        "x\n"
    )


def test_big_images_are_downscaled_small_ones_untouched() -> None:
    import io

    from PIL import Image

    from jlabgw.mcp.content import Limits, fit_image

    buf = io.BytesIO()
    Image.new("RGB", (3000, 1000), (10, 200, 30)).save(buf, "PNG")
    raw = buf.getvalue()
    fitted = fit_image(raw, "png", Limits(image_px=600))
    assert fitted is not None
    data, fmt = fitted
    assert Image.open(io.BytesIO(data)).size == (600, 200)
    assert fmt == "png"
    assert fit_image(raw, "png", Limits(image_px=4000)) == (raw, "png")  # fits: as is
    # noise does not compress: past the byte cap it becomes a JPEG, then smaller
    noisy = Image.frombytes("RGB", (1200, 1200), bytes(range(256)) * (1200 * 1200 * 3 // 256))
    buf = io.BytesIO()
    noisy.save(buf, "PNG")
    capped = fit_image(buf.getvalue(), "png", Limits(image_px=1568, image_bytes=100_000))
    assert capped is not None
    assert len(capped[0]) <= 100_000
    assert fit_image(b"not an image", "png", Limits()) is None
