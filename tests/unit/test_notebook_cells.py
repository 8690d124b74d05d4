"""Inserting, deleting and moving cells in a NotebookDoc, and a person's edit saved before the
session's change reached the file: both are kept, merged by cell id (the session's new cell
where it put it, its deleted cell gone, its order if it moved cells)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell

from jlabgw.errors import CellIndexError
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.writer import NotebookWriter


@pytest.fixture
def writer() -> Iterator[NotebookWriter]:
    w = NotebookWriter(delay=2.0)  # the session's change waits: the person saves first
    yield w
    w.close()


def sources(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return [c.source for c in nb.cells]


def person_edits(path: Path, change: Callable[[NotebookNode], None]) -> None:
    nb = nbformat.read(path, as_version=4)
    change(nb)
    nbformat.write(nb, path)


def notebook(tmp_path: Path, writer: NotebookWriter) -> tuple[NotebookDoc, list[NotebookNode]]:
    doc = NotebookDoc.create(tmp_path, "cells", writer)
    cells = [new_code_cell(s) for s in ("a", "b", "c")]
    for cell in cells:
        doc.append_cell(cell)
    doc.flush()
    return doc, cells


def test_insert_point_and_its_range(tmp_path: Path, writer: NotebookWriter) -> None:
    doc, (a, _b, c) = notebook(tmp_path, writer)
    assert doc.insert_point(0) is a
    assert doc.insert_point(2) is c
    assert doc.insert_point(3) is None  # after the last: appended
    assert doc.insert_point(-1) is None
    assert doc.insert_point(-2) is c
    assert doc.insert_point(-4) is a
    for bad in (4, -5):
        with pytest.raises(CellIndexError, match=r"valid: 0\.\.3, or -1\.\.-4 from the end"):
            doc.insert_point(bad)


def test_insert_remove_move(tmp_path: Path, writer: NotebookWriter) -> None:
    doc, (a, b, c) = notebook(tmp_path, writer)
    assert doc.insert_cell(new_markdown_cell("m"), b) == 1
    assert doc.remove_cell(a) == 0
    assert doc.move_cell(c, 0) == (2, 0)
    doc.flush()
    assert sources(doc.path) == ["c", "m", "b"]
    with pytest.raises(CellIndexError, match="no longer in"):
        doc.remove_cell(a)


@pytest.mark.parametrize(
    ("session_change", "expected"),
    [
        ("insert", ["# person", "a", "new", "b", "c", "person's end"]),
        ("delete", ["# person", "a", "c", "person's end"]),
        ("move", ["# person", "c", "a", "b", "person's end"]),
    ],
)
def test_a_persons_save_before_the_sessions_write_keeps_both(
    tmp_path: Path, writer: NotebookWriter, session_change: str, expected: list[str]
) -> None:
    doc, (_a, b, c) = notebook(tmp_path, writer)
    if session_change == "insert":
        doc.insert_cell(new_code_cell("new"), b)
    elif session_change == "delete":
        doc.remove_cell(b)
    else:
        doc.move_cell(c, 0)

    def edit(nb: NotebookNode) -> None:
        nb.cells.insert(0, new_markdown_cell("# person"))
        nb.cells.append(new_markdown_cell("person's end"))

    assert sources(doc.path) == ["a", "b", "c"]  # the session's change is not written yet
    person_edits(doc.path, edit)
    doc.flush()
    assert sources(doc.path) == expected
    assert [c.source for c in doc.nb.cells] == expected
    assert doc.conflict is None


def test_a_cell_the_session_deleted_but_the_person_changed_is_kept(
    tmp_path: Path, writer: NotebookWriter
) -> None:
    doc, (_a, b, _c) = notebook(tmp_path, writer)
    doc.remove_cell(b)

    def edit(nb: NotebookNode) -> None:
        nb.cells[1].source = "b  # the person's work"

    assert sources(doc.path) == ["a", "b", "c"]
    person_edits(doc.path, edit)
    doc.flush()
    assert sources(doc.path) == ["a", "b  # the person's work", "c"]
