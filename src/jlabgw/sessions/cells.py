"""The cell use cases of a session's notebook: insert (code, run; markdown), edit, re-run,
delete and move, by index in the notebook as it is on disk now.

An index is resolved to a *cell* at once (a person's saved edits merged first), and from there
on the cell object is what counts: a new cell goes before the cell that holds its place, so a
person's edit merged meanwhile cannot move it, and a running cell's outputs keep flowing into
that cell wherever it is moved. The cell that is running cannot be deleted or moved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nbformat import NotebookNode
from nbformat.v4 import new_markdown_cell

from jlabgw.errors import CellIndexError, SessionBusyError
from jlabgw.progress import Progress
from jlabgw.sessions.execution import ExecutionResult
from jlabgw.sessions.runner import Runner
from jlabgw.sessions.session import Session

__all__ = ["Cells"]


class Cells:
    """Cell-level use cases for :class:`~.manager.SessionManager`, on its runner."""

    def __init__(self, runner: Runner, changed: Callable[[], None]) -> None:
        """``changed``: cells were inserted, moved or deleted (the registry notes where the
        running cell is now)."""
        self._runner = runner
        self._changed = changed

    async def execute(
        self,
        session: Session,
        code: str,
        progress: Progress,
        *,
        cell_index: int = -1,
        wait: float | None = None,
        cell_timeout: float | None = None,
        queue: bool = False,
    ) -> ExecutionResult:
        """Run ``code`` in a new cell that lands at ``cell_index`` (-1: appended)."""
        before = None if cell_index == -1 else session.doc.insert_point(cell_index)
        return await self._runner.run(
            session,
            None,
            code,
            progress,
            wait=wait,
            cell_timeout=cell_timeout,
            queue=queue,
            before=before,
        )

    async def run_cell(
        self,
        session: Session,
        cell_index: int,
        progress: Progress,
        *,
        wait: float | None = None,
        cell_timeout: float | None = None,
        queue: bool = False,
    ) -> ExecutionResult:
        """Run code cell ``cell_index`` again as it is: its outputs replaced, a new count."""
        index, cell = session.doc.cell_at(cell_index)
        if cell.cell_type != "code":
            raise CellIndexError(
                f"cell {index} is a {cell.cell_type} cell; only code cells run (edit_cell "
                "changes its text)"
            )
        return await self._runner.run(
            session,
            index,
            None,
            progress,
            wait=wait,
            cell_timeout=cell_timeout,
            queue=queue,
            cell=cell,
        )

    async def edit(
        self,
        session: Session,
        cell_index: int,
        code: str,
        progress: Progress,
        *,
        wait: float | None = None,
    ) -> ExecutionResult | str:
        """Replace a cell's source. Code cells are re-executed; markdown cells just change."""
        index, cell = session.doc.cell_at(cell_index)
        if cell.cell_type != "code":
            with session.doc.editing(cell):
                cell.source = code
            return f"cell {index} ({cell.cell_type}) updated; not executed" + conflict_note(session)
        return await self._runner.run(session, index, code, progress, wait=wait, cell=cell)

    def add_markdown(self, session: Session, markdown: str, cell_index: int = -1) -> dict[str, Any]:
        """A markdown cell that lands at ``cell_index`` (-1: appended)."""
        doc = session.doc
        before = None if cell_index == -1 else doc.insert_point(cell_index)
        index = doc.insert_cell(new_markdown_cell(markdown), before)
        if before is not None:
            self._changed()
        return _answer(session, cell_index=index, cells=len(doc.nb.cells))

    def delete(self, session: Session, cell_index: int) -> dict[str, Any]:
        """Delete cell ``cell_index``; refused for the cell that is running."""
        cell = self._cell(session, cell_index, "delete")
        index = session.doc.remove_cell(cell)
        self._changed()
        return _answer(
            session,
            deleted=index,
            cell_type=cell.cell_type,
            source=_head(cell.source),
            cells=len(session.doc.nb.cells),
        )

    def move(self, session: Session, from_index: int, to_index: int) -> dict[str, Any]:
        """Move cell ``from_index`` so that it ends at ``to_index``; refused for the running
        cell (other cells may move around it)."""
        cell = self._cell(session, from_index, "move")
        was, to = session.doc.move_cell(cell, to_index)
        self._changed()
        return _answer(session, moved_from=was, cell_index=to, cells=len(session.doc.nb.cells))

    @staticmethod
    def _cell(session: Session, cell_index: int, verb: str) -> NotebookNode:
        index, cell = session.doc.cell_at(cell_index)
        busy = session.busy_with()
        if busy is not None and busy.cell is cell:
            raise SessionBusyError(
                f"cell {index} is running (execution {busy.id}); cannot {verb} it. Wait for it "
                f"(get_execution) or stop it (interrupt_kernel) first"
            )
        return cell


def conflict_note(session: Session) -> str:
    """A warning to add to a short tool answer while the notebook cannot be written."""
    warning = session.doc.write_error or session.doc.conflict
    return f". Warning: {warning}" if warning else ""


def _answer(session: Session, **fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = {**fields, "notebook_path": str(session.doc.path)}
    warning = session.doc.write_error or session.doc.conflict
    if warning:
        result["warning"] = warning
    return result


def _head(source: str, limit: int = 80) -> str:
    line = source.strip().split("\n", 1)[0]
    return line if len(line) <= limit and "\n" not in source.strip() else line[:limit] + " ..."
