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

from jlabgw.notebook import NotebookDoc, NotebookWriter
from jlabgw.outputs import DisplayIndex, OutputRecorder
from jlabgw.render import outputs_to_content, outputs_to_text, strip_ansi


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
    assert "text/html output" in outputs_to_text(only_html.outputs)
    blocks = outputs_to_content([])
    assert isinstance(blocks[0], TextContent)
    assert blocks[0].text == "(no output)"


def test_strip_ansi() -> None:
    assert strip_ansi("\x1b[1;32mgreen\x1b[0m \x1b[2Kdone") == "green done"
