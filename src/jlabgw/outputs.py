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

from .kernel import Message
from .notebook import NotebookDoc

__all__ = ["DisplayIndex", "OutputRecorder"]

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
    """Receives one execution's IOPub messages and keeps its cell's outputs up to date."""

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
            return
        if msg_type == "update_display_data":
            display_id = (content.get("transient") or {}).get("display_id")
            targets = self.displays.get(display_id) if display_id else []
            if targets:
                with self.doc.editing(*{id(cell): cell for cell, _ in targets}.values()):
                    for _, output in targets:
                        output["data"] = output_from_msg(_as_display(msg))["data"]
                        output["metadata"] = content.get("metadata", {})
            return
        if msg_type not in _OUTPUT_TYPES:
            return  # execute_input, status, comm_* … are not outputs
        with self.doc.editing(self.cell):
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
                output = output_from_msg(msg)
                outputs.append(output)
                display_id = (content.get("transient") or {}).get("display_id")
                if display_id and msg_type == "display_data":
                    self.displays.add(display_id, self.cell, output)
        if msg_type == "stream":
            text = content.get("text", "").rstrip("\n")
            if text:
                self.last_line = text.rsplit("\n", 1)[-1]


def _as_display(msg: Message) -> Message:
    """``output_from_msg`` does not know update_display_data; it has display_data's shape."""
    header = dict(msg.get("header", {}), msg_type="display_data")
    return dict(msg, header=header, msg_type="display_data")
