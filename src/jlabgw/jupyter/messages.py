"""Messages from a kernel's WebSocket, checked before anything uses them.

Kernel output is untrusted input: a cell can publish any message (``session.send``,
``publish_display_data``) and the WebSocket peer could be anything. :func:`parse` turns one
text frame into a message whose fields have the types the Jupyter protocol gives them, so
routing never trips over it and no output that would make the notebook invalid reaches the
recorder:

* not JSON (or NaN/Infinity, or nested past the parser's depth), not an object, no header, a
  ``parent_header``/``content``/``metadata`` that is not an object: dropped, and logged;
* an output (stream, display_data, execute_result, update_display_data, error) whose fields
  nbformat would reject: replaced by a stderr note in the cell naming what was wrong, so the
  cell says what happened and the notebook stays valid; fields the protocol does not give
  that output are dropped, missing optional ones filled in;
* an ``execution_count`` that is not a count: None;
* lone surrogates (``"\\ud800"`` in the JSON), which no UTF-8 file can hold: replaced.

The checks read the small fields, walk JSON mime values (depth-bounded) and ask each string
whether it is ASCII (O(1)); a 10 MB text is read once, by the JSON parser, unless it is not
ASCII (then once more, encoded, to find lone surrogates).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

__all__ = ["OUTPUTS", "note", "parse"]

log = logging.getLogger(__name__)

Message = dict[str, Any]

CHANNELS = frozenset({"shell", "iopub", "control", "stdin"})
# each output's content fields (the protocol's); others are dropped before the recorder
FIELDS = {
    "stream": ("name", "text"),
    "display_data": ("data", "metadata", "transient"),
    "update_display_data": ("data", "metadata", "transient"),
    "execute_result": ("data", "metadata", "transient", "execution_count"),
    "error": ("ename", "evalue", "traceback"),
    "clear_output": ("wait",),
}
OUTPUTS = frozenset(FIELDS)
MAX_DEPTH = 64  # of a JSON mime value (application/json); past it the output is refused
_JSON_MIME = re.compile(r"^application/(.*\+)?json$")  # nbformat: any JSON value


class _Malformed(ValueError):
    """What is wrong with a message or an output, in words for a log line or a note."""


def _no_constants(name: str) -> Any:
    raise _Malformed(f"{name} is not JSON")


def parse(raw: str | bytes) -> Message | None:
    """The message in text frame ``raw``, checked; None if it is not one (logged)."""
    try:
        msg: Message = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, _Malformed, bad UTF-8
        log.warning("dropped a kernel message that is not JSON: %s", str(exc)[:200])
        return None
    try:
        _check_envelope(msg)
    except _Malformed as exc:
        log.warning("dropped a malformed kernel message: %s", exc)
        return None
    if _has_surrogates(msg):  # rare: then rebuild it
        try:
            msg = _clean(msg)
        except RecursionError:
            log.warning("dropped a kernel message nested too deep to clean")
            return None
    msg_type = msg["header"]["msg_type"]
    if msg.get("channel") == "iopub" and msg_type in OUTPUTS:
        content = msg["content"] = {
            k: msg["content"][k] for k in FIELDS[msg_type] if k in msg["content"]
        }
        try:
            _check_output(msg_type, content)
        except _Malformed as exc:
            why = f"a malformed {msg_type} output from the kernel was dropped: {exc}"
            log.warning("%s", why)
            parent = msg["parent_header"].get("msg_id")
            # under the output's own msg_id: replays of it are dropped, resuming after it works
            return note(parent, msg["header"]["msg_id"], why) if parent else None
    elif "execution_count" in msg["content"] and not _is_count(msg["content"]["execution_count"]):
        msg["content"]["execution_count"] = None
    return msg


def note(parent_msg_id: str, msg_id: str, text: str) -> Message:
    """A stderr line for request ``parent_msg_id``'s cell: ``[jlabgw: TEXT]``."""
    return {
        "channel": "iopub",
        "msg_type": "stream",
        "header": {"msg_id": msg_id, "msg_type": "stream"},
        "parent_header": {"msg_id": parent_msg_id},
        "metadata": {},
        "content": {"name": "stderr", "text": f"[jlabgw: {text}]\n"},
    }


def _check_envelope(msg: Any) -> None:
    if not isinstance(msg, dict):
        raise _Malformed(f"a JSON {type(msg).__name__}, not an object")
    header = msg.get("header")
    if not isinstance(header, dict) or not isinstance(header.get("msg_id"), str):
        raise _Malformed("no header with a msg_id")
    msg_type = header.get("msg_type", msg.get("msg_type"))
    if not isinstance(msg_type, str):
        raise _Malformed("no msg_type")
    header["msg_type"] = msg_type
    if msg.get("msg_type", msg_type) != msg_type:
        raise _Malformed(f"msg_type {msg.get('msg_type')!r} is not the header's {msg_type!r}")
    msg["msg_type"] = msg_type
    channel = msg.get("channel")
    if channel is not None and (not isinstance(channel, str) or channel not in CHANNELS):
        raise _Malformed(f"unknown channel {str(channel)[:40]!r}")
    for key in ("parent_header", "content", "metadata"):
        value = msg.setdefault(key, {})
        if value is None:
            msg[key] = {}
        elif not isinstance(value, dict):
            raise _Malformed(f"{key} is a {type(value).__name__}, not an object")
    parent_id = msg["parent_header"].get("msg_id")
    if parent_id is not None and not isinstance(parent_id, str):
        raise _Malformed("parent_header.msg_id is not a string")


def _is_count(value: Any) -> bool:
    return value is None or (type(value) is int and value >= 0)


def _text(value: Any) -> bool:
    """nbformat's "multiline string": a string or a list of strings."""
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    )


def _check_output(msg_type: str, content: dict[str, Any]) -> None:
    """Raise if nbformat would reject the output ``content`` makes (or routing needs more)."""
    if msg_type == "stream":
        if not isinstance(content.get("name"), str) or not isinstance(content.get("text"), str):
            raise _Malformed("a stream needs a name and a text, both strings")
    elif msg_type == "error":
        traceback = content.setdefault("traceback", [])
        if not (
            isinstance(content.get("ename"), str)
            and isinstance(content.get("evalue"), str)
            and isinstance(traceback, list)
            and all(isinstance(line, str) for line in traceback)
        ):
            raise _Malformed("an error needs ename and evalue strings, a list of strings")
    elif msg_type == "clear_output":
        if not isinstance(content.get("wait", False), bool):
            raise _Malformed("clear_output's wait is not a boolean")
    else:  # the mime bundles
        _check_bundle(content)
        if msg_type == "execute_result" and not _is_count(content.get("execution_count")):
            raise _Malformed("execution_count is not a count")
        if msg_type == "execute_result":
            content.setdefault("execution_count", None)


def _check_bundle(content: dict[str, Any]) -> None:
    data = content.get("data")
    if not isinstance(data, dict):
        raise _Malformed("data is missing or not an object")
    content.setdefault("metadata", {})  # optional enough: nbformat wants one, empty will do
    for mime, value in data.items():
        if _JSON_MIME.match(mime):
            _check_depth(value, mime)
        elif not _text(value):
            raise _Malformed(f"data[{mime[:60]!r}] is a {type(value).__name__}, not text")
    for key in ("metadata", "transient"):
        if not isinstance(content.get(key, {}), dict):
            raise _Malformed(f"{key} is not an object")
    _check_depth(content.get("metadata", {}), "metadata")
    display_id = (content.get("transient") or {}).get("display_id")
    if display_id is not None and not isinstance(display_id, str):
        raise _Malformed("transient.display_id is not a string")


def _check_depth(value: Any, what: str) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _Malformed(f"{what[:60]} is nested deeper than {MAX_DEPTH}")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _has_surrogates(msg: Message) -> bool:
    """Whether a string in ``msg`` holds a lone surrogate (the JSON had ``\\ud800``). An
    ASCII string, the usual big one (text, base64), is told in O(1) by ``isascii``."""
    stack: list[Any] = [msg]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _clean(value: Any) -> Any:
    """``value`` with lone surrogates in its strings (and keys) replaced."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value
