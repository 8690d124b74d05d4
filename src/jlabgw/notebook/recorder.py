"""Apply IOPub messages to a code cell the way Jupyter front-ends do.

* ``stream``: consecutive chunks of the same stream merge into one output;
* ``execute_result`` / ``display_data`` / ``error``: ``nbformat.v4.output_from_msg``
  (all mimetypes kept);
* ``update_display_data``: updates every output shown with that ``display_id``, in any cell
  of the session;
* ``clear_output``: clears now, or with ``wait=True`` just before the next output arrives
  (how progress bars redraw in place).
"""

from __future__ import annotations

from typing import Any

from nbformat import NotebookNode
from nbformat.v4 import output_from_msg

from jlabgw.notebook.document import NotebookDoc

__all__ = ["DisplayIndex", "OutputRecorder"]

Message = dict[str, Any]
"""A Jupyter message as the gateway sends it (JSON: header, parent_header, content, ...)."""

_OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error")


class DisplayIndex:
    """display_id → (cell, output) pairs showing it, for one kernel session."""

    def __init__(self) -> None:
        self._outputs: dict[str, list[tuple[NotebookNode, NotebookNode]]] = {}

    def add(self, display_id: str, cell: NotebookNode, output: NotebookNode) -> None:
        self._outputs.setdefault(display_id, []).append((cell, output))

    def get(self, display_id: str) -> list[tuple[NotebookNode, NotebookNode]]:
        return self._outputs.get(display_id, [])


class OutputRecorder:
    """Receives one execution's IOPub messages and keeps its cell's outputs up to date.

    While the cell runs, its metadata names the last message applied to it
    (``metadata.jlabgw.last_msg_id``), written to disk with the outputs it covers: a server
    that takes the cell over after a crash asks the gateway for what came after that message
    (see ``gateway_ext``), so output the dead server received but never wrote is not lost.
    :func:`finish_cell` removes it once the cell is done."""

    def __init__(self, doc: NotebookDoc, cell: NotebookNode, displays: DisplayIndex) -> None:
        self.doc = doc
        self.cell = cell
        self.displays = displays
        self._clear_pending = False
        self.last_line = ""

    def __call__(self, msg: Message) -> None:
        msg_type = msg.get("msg_type") or msg["header"]["msg_type"]
        content: dict[str, Any] = msg.get("content", {})
        if msg_type == "clear_output":
            if content.get("wait"):
                self._clear_pending = True
            else:
                with self.doc.editing(self.cell):
                    self.cell.outputs.clear()
                    self._mark(msg)
            return
        if msg_type == "update_display_data":
            display_id = (content.get("transient") or {}).get("display_id")
            targets = self.displays.get(display_id) if display_id else []
            if targets:
                cells = {id(cell): cell for cell, _ in [*targets, (self.cell, None)]}
                with self.doc.editing(*cells.values()):
                    for _, output in targets:
                        output["data"] = _output_from_msg(_as_display(msg))["data"]
                        output["metadata"] = content.get("metadata", {})
                    self._mark(msg)
            return
        if msg_type not in _OUTPUT_TYPES:
            return  # execute_input, status, comm_* … are not outputs
        with self.doc.editing(self.cell):
            self._mark(msg)
            if self._clear_pending:
                self.cell.outputs.clear()
                self._clear_pending = False
            outputs = self.cell.outputs
            if (
                msg_type == "stream"
                and outputs
                and outputs[-1].get("output_type") == "stream"
                and outputs[-1].get("name") == content.get("name")
            ):
                outputs[-1]["text"] += content.get("text", "")
            else:
                output = _output_from_msg(msg)
                outputs.append(output)
                display_id = (content.get("transient") or {}).get("display_id")
                if display_id and msg_type == "display_data":
                    self.displays.add(display_id, self.cell, output)
        if msg_type == "stream":
            # the tail only: copying a 10 MB chunk to find its last line costs milliseconds
            text = content.get("text", "")[-4096:].rstrip("\n")
            if text:
                self.last_line = text.rsplit("\n", 1)[-1]

    def _mark(self, msg: Message) -> None:
        msg_id = (msg.get("header") or {}).get("msg_id")
        if msg_id:
            self.cell.metadata["jlabgw"] = {"last_msg_id": msg_id}


def resume_point(cell: NotebookNode) -> str | None:
    """The last message a running cell's outputs on disk include (see OutputRecorder)."""
    mark = cell.get("metadata", {}).get("jlabgw") or {}
    value = mark.get("last_msg_id") if isinstance(mark, dict) else None
    return str(value) if value else None


def finish_cell(cell: NotebookNode, execution_count: Any) -> None:
    """Set a finished cell's execution count and drop its running mark (call while editing)."""
    cell.execution_count = execution_count
    cell.metadata.pop("jlabgw", None)


_BIG = 4096  # characters; longer strings are swapped out while nbformat validates


def _output_from_msg(msg: Message) -> NotebookNode:
    """``nbformat.v4.output_from_msg``, without its cost growing with the output's size.

    It validates the new output, and jsonschema's ``oneOf`` for a "multiline string" (a
    string or a list of strings) formats the rejected branch's error with ``repr()`` of the
    whole value: 27 ms for a 10 MB print, 40% of our time on that path. Long strings (stream
    text, base64 images) are validated as empty strings of the same type, then put back.
    """
    content: dict[str, Any] = msg.get("content", {})
    text = content.get("text")
    data: dict[str, Any] = content.get("data") or {}
    big = {k: v for k, v in data.items() if isinstance(v, str) and len(v) > _BIG}
    if not big and not (isinstance(text, str) and len(text) > _BIG):
        plain: NotebookNode = output_from_msg(msg)
        return plain
    light = dict(content)
    if isinstance(text, str) and len(text) > _BIG:
        light["text"] = ""
    if big:
        light["data"] = {**data, **dict.fromkeys(big, "")}
    output: NotebookNode = output_from_msg(dict(msg, content=light))
    if "text" in light and light["text"] == "" and text:
        output["text"] = text
    for mime, value in big.items():
        output["data"][mime] = value
    return output


def _as_display(msg: Message) -> Message:
    """``output_from_msg`` does not know update_display_data; it has display_data's shape."""
    header = dict(msg.get("header", {}), msg_type="display_data")
    return dict(msg, header=header, msg_type="display_data")
