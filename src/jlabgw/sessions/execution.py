"""One run of a code cell, followed across tool calls.

MCP clients give up on a tool call after a minute or so, and training loops run for hours. So a
run is its own task: ``execute_code`` waits for it a while (``JLABGW_EXEC_WAIT``) and, if it is
still going, returns the output so far with the run's id; ``get_execution`` returns what was
added since and waits a while more. The kernel never sees any of this: the cell runs once, its
outputs stream into the notebook as they arrive, whoever is (or is not) waiting.

"What was added since" is tracked per output: a stream output grows in place, so only its new
characters are returned; when the outputs were cleared or replaced (``clear_output``, a tqdm
bar redrawing), the current outputs are returned whole and the result says so.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbformat import NotebookNode

from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.recorder import OutputRecorder
from jlabgw.notebook.text import has_error

__all__ = ["Execution", "ExecutionResult"]


@dataclass
class ExecutionResult:
    """What a tool call reports about one execution.

    ``outputs`` are the outputs not reported before (all of them on the first report); the
    notebook cell always has every output."""

    session_id: str
    execution_id: str
    cell_index: int | None  # None while queued behind another execution
    execution_count: int | None
    status: str  # "ok" | "error" | "aborted" from the kernel; "running" | "queued" meanwhile
    outputs: list[NotebookNode]
    notebook_path: Path
    elapsed: float = 0.0
    redrawn: bool = False  # outputs were cleared/replaced since the last report: these are all
    follow_up: bool = False  # an earlier report of this execution was made
    warnings: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.status in ("running", "queued")

    @property
    def is_error(self) -> bool:
        if self.running:
            return False
        return self.status != "ok" or has_error(self.outputs)


@dataclass
class Execution:
    """A cell's run: its task, its place in the notebook once started, and what was reported."""

    doc: NotebookDoc
    timeout: float | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    created: float = field(default_factory=time.monotonic)
    task: asyncio.Task[dict[str, Any]] | None = None  # resolves to the execute_reply content
    started: float | None = None
    cell: NotebookNode | None = None
    cell_index: int | None = None
    recorder: OutputRecorder | None = None
    timed_out: bool = False
    reports: int = 0
    msg_id: str | None = None  # the execute_request's, once sent (the registry records it)
    _seen: list[tuple[int, int]] = field(default_factory=list)  # (id(output), text length)

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - (self.started or self.created)

    @property
    def last_line(self) -> str:
        return self.recorder.last_line if self.recorder else ""

    def begin(self, cell: NotebookNode, index: int, recorder: OutputRecorder) -> None:
        self.cell, self.cell_index, self.recorder = cell, index, recorder
        self.started = time.monotonic()

    def new_outputs(self) -> tuple[list[NotebookNode], bool]:
        """Outputs not reported yet, and whether the earlier ones were cleared or replaced."""
        if self.cell is None:
            return [], False
        with self.doc.reading():
            current = list(self.cell.outputs)
            lengths = [_text_length(o) for o in current]
        seen, self._seen = self._seen, [(id(o), n) for o, n in zip(current, lengths, strict=True)]
        fresh: list[NotebookNode] = []
        for i, (output, length) in enumerate(zip(current, lengths, strict=True)):
            if i >= len(seen):
                fresh.append(output)
                continue
            seen_id, seen_length = seen[i]
            if seen_id != id(output) or length < seen_length:
                return current, True  # cleared or replaced: report the current state whole
            if length > seen_length:  # a stream that grew: only its new text
                fresh.append(NotebookNode(output, text=output["text"][seen_length:]))
        if len(current) < len(seen):
            return current, True
        return fresh, False


def _text_length(output: NotebookNode) -> int:
    return len(output.get("text", "")) if output.get("output_type") == "stream" else -1
