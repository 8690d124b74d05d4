"""Kernel messages are untrusted input (issue 13): jupyter.messages.parse checks each frame
before it is routed, so nothing malformed reaches the notebook or ends the reader."""

from __future__ import annotations

import json
import re
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, output_from_msg

from jlabgw.jupyter.messages import MAX_DEPTH, parse


def message(msg_type: str, content: Any, channel: str = "iopub", **extra: Any) -> dict[str, Any]:
    return {
        "channel": channel,
        "msg_type": msg_type,
        "header": {"msg_id": "m-1", "msg_type": msg_type},
        "parent_header": {"msg_id": "req-1"},
        "metadata": {},
        "content": content,
        **extra,
    }


def nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        '{"header": {"msg_id": "a", "msg_type": "stream"}, "content": NaN}',
        "[1, 2]",
        "null",
        json.dumps({"content": {}}),  # no header
        json.dumps({**message("stream", {}), "parent_header": "req-1"}),
        json.dumps({**message("stream", {}), "content": "text"}),
        json.dumps({**message("stream", {}), "channel": "elsewhere"}),
        json.dumps({**message("stream", {}), "channel": ["iopub"]}),  # unhashable
        json.dumps({**message("stream", {}), "header": {"msg_id": ["a"], "msg_type": "x"}}),
        json.dumps({**message("stream", {}), "msg_type": "status"}),  # not the header's
        json.dumps({**message("stream", {}), "parent_header": {"msg_id": 7}}),
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_what_is_not_a_message_is_dropped(raw: str) -> None:
    assert parse(raw) is None


@pytest.mark.parametrize(
    ("msg_type", "content", "why"),
    [
        ("stream", {"name": "stdout", "text": 5}, "a stream needs"),
        ("stream", {"text": "x"}, "a stream needs"),
        ("display_data", {"data": {"image/png": 123}}, r"data\['image/png'\] is a int"),
        ("display_data", {"data": "x"}, "data is missing or not an object"),
        ("display_data", {"metadata": {}}, "data is missing"),
        ("display_data", {"data": {"text/plain": ["a", 1]}}, "is a list, not text"),
        ("display_data", {"data": {}, "metadata": []}, "metadata is not an object"),
        ("update_display_data", {"data": {}, "transient": {"display_id": 3}}, "display_id"),
        ("execute_result", {"data": {}, "execution_count": "1"}, "not a count"),
        ("error", {"ename": "E", "evalue": "v", "traceback": "tb"}, "an error needs"),
        ("clear_output", {"wait": "yes"}, "wait is not a boolean"),
        ("display_data", {"data": {"application/json": nest(MAX_DEPTH + 1)}}, "nested deeper"),
    ],
)
def test_a_malformed_output_becomes_a_note_for_its_cell(
    msg_type: str, content: dict[str, Any], why: str
) -> None:
    msg = parse(json.dumps(message(msg_type, content)))
    assert msg is not None
    assert (msg["msg_type"], msg["header"]["msg_id"]) == ("stream", "m-1")
    assert msg["parent_header"] == {"msg_id": "req-1"}
    text = msg["content"]["text"]
    assert text.startswith(f"[jlabgw: a malformed {msg_type} output from the kernel was dropped")
    assert re.search(why, text), text
    # what the recorder makes of the note is a valid notebook
    cell = new_code_cell("x", outputs=[output_from_msg(msg)])
    nbformat.validate(new_notebook(cells=[cell]))


@pytest.mark.parametrize(
    ("msg_type", "content"),
    [
        ("stream", {"name": "stdout", "text": "hi\n"}),
        (
            "display_data",
            {"data": {"text/plain": "x", "image/png": "!!not base64"}, "metadata": {}},
        ),
        (
            "display_data",
            {"data": {"application/x-unknown+json": {"a": [1, None]}}, "metadata": {}},
        ),
        ("display_data", {"data": {"application/vnd.whatever": ["a", "b"]}, "metadata": {}}),
        ("execute_result", {"data": {"text/plain": "1"}, "metadata": {}, "execution_count": 3}),
        ("error", {"ename": "E", "evalue": "v", "traceback": ["a", "b"]}),
    ],
)
def test_a_well_formed_output_passes_unchanged(msg_type: str, content: dict[str, Any]) -> None:
    original = message(msg_type, content)
    assert parse(json.dumps(original)) == original


def test_lone_surrogates_are_replaced_so_the_notebook_can_be_written() -> None:
    raw = json.dumps(message("stream", {"name": "stdout", "text": "a\ud800b"}))
    assert "\\ud800" in raw
    msg = parse(raw)
    assert msg is not None
    assert msg["content"]["text"] == "a?b"
    msg["content"]["text"].encode("utf-8")


def test_a_reply_count_that_is_not_a_count_is_none() -> None:
    content = {"status": "ok", "execution_count": True}
    msg = parse(json.dumps(message("execute_reply", content, channel="shell")))
    assert msg is not None
    assert msg["content"]["execution_count"] is None


def test_missing_optional_fields_are_filled_in() -> None:
    raw = json.dumps({"channel": "iopub", "header": {"msg_id": "s", "msg_type": "status"}})
    assert parse(raw) == {
        "channel": "iopub",
        "header": {"msg_id": "s", "msg_type": "status"},
        "msg_type": "status",
        "parent_header": {},
        "content": {},
        "metadata": {},
    }


def test_fields_an_output_does_not_have_are_dropped() -> None:
    """A display_data with a long "text" once became a display_data output with a text field
    (an invalid notebook): only the protocol's fields of each output reach the recorder."""
    content = {"data": {"text/plain": "x"}, "metadata": {}, "text": "t" * 10_000, "name": 5}
    msg = parse(json.dumps(message("display_data", content)))
    assert msg is not None
    assert msg["content"] == {"data": {"text/plain": "x"}, "metadata": {}}
