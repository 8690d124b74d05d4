"""A person editing the notebook file (as their editor would: nbformat, in place) while the
session records into it: their edits are kept, the session's changes go on top, and what
cannot be merged goes to a conflict file instead of over their work."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell, new_output

from jlabgw.errors import CellIndexError
from jlabgw.notebook import document as document_module
from jlabgw.notebook import files as files_module
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.writer import NotebookWriter


@pytest.fixture
def writer() -> Iterator[NotebookWriter]:
    w = NotebookWriter(delay=0.02)
    yield w
    w.close()


def read(path: Path) -> NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def person_edits(path: Path, change: Callable[[NotebookNode], None]) -> None:
    """What JupyterLab or VS Code does on save: read, change, write the whole file."""
    nb = nbformat.read(path, as_version=4)
    change(nb)
    nbformat.write(nb, path)


def stream(text: str) -> NotebookNode:
    return new_output("stream", name="stdout", text=text)


def plain_json(nb: NotebookNode) -> bytes:
    return (json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def session(tmp_path: Path, writer: NotebookWriter) -> tuple[NotebookDoc, list[NotebookNode]]:
    """A notebook with two finished cells, a markdown note and a cell still running."""
    doc = NotebookDoc.create(tmp_path, "exp", writer)
    done = new_code_cell("x = 1", execution_count=1, outputs=[stream("one\n")])
    note = new_markdown_cell("# agent's note")
    other = new_code_cell("y = 2", execution_count=2)
    running = new_code_cell("for i in range(9): print(i)", outputs=[stream("0\n")])
    for cell in (done, note, other, running):
        doc.append_cell(cell)
    doc.hold(running)
    doc.flush()
    return doc, [done, note, other, running]


def insert_markdown(nb: NotebookNode) -> None:
    nb.cells.insert(0, new_markdown_cell("# the person's title"))


def change_source(nb: NotebookNode) -> None:
    nb.cells[0].source = "x = 1  # checked by hand"


def delete_cell(nb: NotebookNode) -> None:
    del nb.cells[1]


def reorder(nb: NotebookNode) -> None:
    nb.cells[0], nb.cells[2] = nb.cells[2], nb.cells[0]


EDITS = {
    "new markdown": (insert_markdown, ["#", "x = 1", "#", "y = 2", "for"]),
    "changed source": (change_source, ["x = 1  # checked by hand", "#", "y = 2", "for"]),
    "deleted cell": (delete_cell, ["x = 1", "y = 2", "for"]),
    "reordered": (reorder, ["y = 2", "#", "x = 1", "for"]),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_persons_edit_is_kept_under_the_sessions_changes(
    tmp_path: Path, writer: NotebookWriter, edit: str
) -> None:
    change, expected = EDITS[edit]
    doc, (done, _, _, running) = session(tmp_path, writer)
    ids = {c.source: c.id for c in read(doc.path).cells}
    person_edits(doc.path, change)
    # the session goes on: the running cell prints more, then a new cell is run
    with doc.editing(running):
        running.outputs[0]["text"] += "1\n2\n"
    doc.append_cell(new_code_cell("z = 3", execution_count=3, outputs=[stream("three\n")]))
    doc.flush()

    nb = read(doc.path)
    sources = [c.source for c in nb.cells]
    assert len(sources) == len(expected) + 1, sources
    assert all(s.startswith(e) for s, e in zip(sources, [*expected, "z = 3"], strict=True))
    by_source = {c.source: c for c in nb.cells}
    assert by_source["for i in range(9): print(i)"].outputs[0].text == "0\n1\n2\n"
    assert by_source["z = 3"].outputs[0].text == "three\n"
    for source, cell_id in ids.items():  # ids are stable; a deleted cell stays deleted
        if source in by_source:
            assert by_source[source].id == cell_id
    if edit == "new markdown":
        assert nb.cells[0].source == "# the person's title"
    if edit == "deleted cell":
        assert "# agent's note" not in by_source
    # the session's view is the merged notebook, and later writes are incremental again
    assert [c.id for c in doc.nb.cells] == [c.id for c in nb.cells]
    assert doc.path.read_bytes() == plain_json(doc.nb)
    with doc.editing(running):
        running.outputs[0]["text"] += "3\n"
    doc.flush()
    assert doc.path.read_bytes() == plain_json(doc.nb)
    assert doc.conflict is None
    assert not doc.conflict_path.exists()
    assert done.execution_count == 1


def test_the_persons_source_and_the_sessions_outputs_of_one_cell_merge(
    tmp_path: Path, writer: NotebookWriter
) -> None:
    doc, (_, _, _, running) = session(tmp_path, writer)

    def fix(nb: NotebookNode) -> None:
        nb.cells[3].source = "for i in range(9): print(i)  # fixed"
        nb.cells[3].metadata["tags"] = ["slow"]

    person_edits(doc.path, fix)
    with doc.editing(running):
        running.outputs[0]["text"] += "1\n"
    doc.flush()
    cell = read(doc.path).cells[3]
    assert cell.source.endswith("# fixed")
    assert cell.metadata["tags"] == ["slow"]
    assert cell.outputs[0].text == "0\n1\n"
    assert running.source.endswith("# fixed")  # the same object: the recorder keeps it


def test_deleting_the_running_cell_writes_a_conflict_file(
    tmp_path: Path, writer: NotebookWriter
) -> None:
    doc, (_, _, _, running) = session(tmp_path, writer)
    person_edits(doc.path, lambda nb: nb.cells.pop(3))
    theirs = doc.path.read_bytes()
    with doc.editing(running):
        running.outputs[0]["text"] += "1\n"
    doc.flush()
    assert doc.path.read_bytes() == theirs  # the person's file, untouched
    conflict = read(doc.conflict_path)
    assert conflict.cells[3].outputs[0].text == "0\n1\n"
    assert doc.conflict is not None
    assert "exp.jlabgw-conflict.ipynb" in doc.conflict
    assert "still running" in doc.conflict
    assert doc.write_error is None
    # more output: still only the conflict file
    with doc.editing(running):
        running.outputs[0]["text"] += "2\n"
    doc.flush()
    assert doc.path.read_bytes() == theirs
    assert read(doc.conflict_path).cells[3].outputs[0].text == "0\n1\n2\n"
    # the person undoes the deletion and saves: merged and written again
    person_edits(doc.path, lambda nb: nb.cells.append(conflict.cells[3]))
    assert doc.sync()
    doc.flush()
    assert doc.conflict is None
    assert read(doc.path).cells[3].outputs[0].text == "0\n1\n2\n"


def test_deleting_a_cell_the_session_changed_is_a_conflict(
    tmp_path: Path, writer: NotebookWriter
) -> None:
    doc, (_, _, other, _) = session(tmp_path, writer)
    with doc.editing(other):
        other.outputs.append(stream("re-run\n"))
    person_edits(doc.path, lambda nb: nb.cells.pop(2))
    theirs = doc.path.read_bytes()
    doc.flush()
    assert doc.path.read_bytes() == theirs
    assert doc.conflict is not None
    assert "deleted" in doc.conflict
    assert "re-run\n" in [o.get("text") for o in read(doc.conflict_path).cells[2].outputs]


def test_a_file_that_is_no_longer_a_notebook_is_left_alone(
    tmp_path: Path, writer: NotebookWriter
) -> None:
    doc, (_, _, _, running) = session(tmp_path, writer)
    doc.path.write_text('{"cells": [')  # a half-saved file
    with doc.editing(running):
        running.outputs[0]["text"] += "1\n"
    doc.flush()
    assert doc.path.read_text() == '{"cells": ['
    assert doc.conflict is not None
    assert "no longer a valid notebook" in doc.conflict
    assert read(doc.conflict_path).cells[3].outputs[0].text == "0\n1\n"


def test_without_a_persons_edit_the_file_is_never_read(
    tmp_path: Path, writer: NotebookWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    real = files_module.read_notebook

    def counting(path: Path) -> NotebookNode:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(files_module, "read_notebook", counting)
    monkeypatch.setattr(document_module.nbformat, "read", None)  # any other read would fail
    doc, (_, _, _, running) = session(tmp_path, writer)
    for i in range(30):
        with doc.editing(running):
            running.outputs[0]["text"] += f"{i}\n"
        doc.flush()
        doc.cell_index(0)
    assert reads == []
    monkeypatch.undo()
    monkeypatch.setattr(files_module, "read_notebook", counting)
    person_edits(doc.path, insert_markdown)
    doc.append_cell(new_markdown_cell("after"))
    doc.flush()
    doc.append_cell(new_markdown_cell("after 2"))
    doc.flush()
    assert reads == [doc.path]  # once per edit of the person's


def test_indexes_refer_to_the_file_as_it_is_now(tmp_path: Path, writer: NotebookWriter) -> None:
    doc, (done, note, _, _) = session(tmp_path, writer)
    assert doc.nb.cells[doc.cell_index(1)] is note
    person_edits(doc.path, insert_markdown)
    index = doc.cell_index(1)
    assert index == 1
    assert doc.nb.cells[index] is done  # "cell 1" is what the person sees as cell 1
    assert doc.index_of(note) == 2
    assert doc.append_cell(new_markdown_cell("end")) == 5
    person_edits(doc.path, lambda nb: nb.cells.pop(1))
    with pytest.raises(CellIndexError, match="deleted"):
        doc.index_of(done)


def test_both_changing_one_cells_source_is_a_conflict(
    tmp_path: Path, writer: NotebookWriter
) -> None:
    doc, (_, note, _, _) = session(tmp_path, writer)
    with doc.editing(note):
        note.source = "# the agent's wording"
    person_edits(doc.path, lambda nb: setattr(nb.cells[1], "source", "# the person's wording"))
    theirs = doc.path.read_bytes()
    doc.flush()
    assert doc.path.read_bytes() == theirs
    assert doc.conflict is not None
    assert "both the file and the session changed its source" in doc.conflict
    assert read(doc.conflict_path).cells[1].source == "# the agent's wording"


def test_our_own_write_in_flight_is_not_taken_for_a_persons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = NotebookWriter(delay=60)  # writes on flush only: the test plays the writer
    doc, (_, _, _, running) = session(tmp_path, slow)
    reads: list[Path] = []
    monkeypatch.setattr(files_module, "read_notebook", reads.append)
    with doc.editing(running):
        running.outputs[0]["text"] += "1\n"
    # the writer serialised and replaced the file, but has not recorded it as its own yet
    version, data = doc.serialize(writing=True)
    doc.path.write_bytes(b"".join(data))
    assert not doc.sync()  # a tool call meanwhile: no read, no merge
    assert doc.cell_index(3) == 3
    doc.wrote(version)
    doc.write_finished()
    assert not doc.sync()
    assert reads == []
    slow.close()


def test_deleting_the_conflict_file_lets_the_persons_version_win(
    tmp_path: Path, writer: NotebookWriter
) -> None:
    doc, (_, note, other, running) = session(tmp_path, writer)
    with doc.editing(note):
        note.source = "# the agent's wording"

    def edit(nb: NotebookNode) -> None:
        nb.cells[1].source = "# the person's wording"
        del nb.cells[3]  # the running cell

    person_edits(doc.path, edit)
    with doc.editing(running):
        running.outputs[0]["text"] += "1\n"
    doc.flush()
    assert doc.conflict is not None
    assert "delete it" in doc.conflict
    doc.conflict_path.unlink()  # "keep my version"
    doc.append_cell(new_code_cell("z = 3", execution_count=3))
    doc.flush()
    assert doc.conflict is None
    nb = read(doc.path)
    assert [c.source for c in nb.cells] == ["x = 1", "# the person's wording", "y = 2", "z = 3"]
    assert not doc.conflict_path.exists()
    assert doc.path.read_bytes() == plain_json(doc.nb)
    assert other.source == "y = 2"


def test_a_save_under_way_is_waited_for_not_a_conflict(
    tmp_path: Path, writer: NotebookWriter
) -> None:
    doc, (_, _, _, running) = session(tmp_path, writer)
    whole = doc.path.read_bytes()
    doc.path.write_bytes(whole[: len(whole) // 2])  # an editor writing in place, half done
    with doc.editing(running):
        running.outputs[0]["text"] += "1\n"
    assert not doc.sync()
    assert doc.conflict is None  # just saved: not (yet) a broken notebook
    assert doc.path.read_bytes() == whole[: len(whole) // 2]
    person_edits_bytes = whole.replace(b"agent's note", b"person's note")
    doc.path.write_bytes(person_edits_bytes)  # the save completes
    doc.flush()
    nb = read(doc.path)
    assert nb.cells[1].source == "# person's note"
    assert nb.cells[3].outputs[0].text == "0\n1\n"
    assert doc.conflict is None
