from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from jlabgw.errors import CellIndexError, NotebookError
from jlabgw.notebook.document import NotebookDoc
from jlabgw.notebook.writer import NotebookWriter


@pytest.fixture
def writer() -> Iterator[NotebookWriter]:
    w = NotebookWriter(delay=0.05)
    yield w
    w.close()


def read(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def test_create_writes_a_valid_45_notebook_with_unique_names(
    tmp_path: Path, writer: NotebookWriter
) -> None:
    first = NotebookDoc.create(
        tmp_path / "nb",
        "exp",
        writer,
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    second = NotebookDoc.create(tmp_path / "nb", "exp", writer)
    assert first.path.name == "exp.ipynb"
    assert second.path.name == "exp-2.ipynb"
    nb = read(first.path)
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    assert nb.metadata.kernelspec.name == "python3"


def test_changes_are_written_and_validate(tmp_path: Path, writer: NotebookWriter) -> None:
    doc = NotebookDoc.create(tmp_path, "exp", writer)
    doc.append_cell(new_markdown_cell("# title"))
    index = doc.append_cell(new_code_cell("1+1"))
    with doc.editing():
        doc.nb.cells[index].execution_count = 1
        doc.nb.cells[index].outputs.append(
            nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=1)
        )
    doc.flush()
    nb = read(doc.path)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
    assert nb.cells[1].outputs[0].data["text/plain"] == "2"
    assert all(c.id for c in nb.cells)


def test_writes_coalesce(tmp_path: Path) -> None:
    writer = NotebookWriter(delay=0.3)
    try:
        doc = NotebookDoc.create(tmp_path, "exp", writer)
        before = os.stat(doc.path).st_mtime_ns
        for i in range(50):
            doc.append_cell(new_markdown_cell(str(i)))
        # nothing written yet: the writer is waiting for more changes
        assert os.stat(doc.path).st_mtime_ns == before
        assert len(read(doc.path).cells) == 0
        doc.flush()
        assert len(read(doc.path).cells) == 50
    finally:
        writer.close()


def test_concurrent_appends_lose_nothing(tmp_path: Path, writer: NotebookWriter) -> None:
    doc = NotebookDoc.create(tmp_path, "exp", writer)

    def add(thread: int) -> None:
        for i in range(20):
            doc.append_cell(new_markdown_cell(f"{thread}-{i}"))

    threads = [threading.Thread(target=add, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    doc.flush()
    sources = {c.source for c in read(doc.path).cells}
    assert sources == {f"{t}-{i}" for t in range(4) for i in range(20)}


def test_open_upgrades_44_notebook(tmp_path: Path, writer: NotebookWriter) -> None:
    nb = new_notebook(cells=[new_code_cell("x = 1")])
    nb.nbformat_minor = 4
    for cell in nb.cells:
        del cell["id"]
    path = tmp_path / "old.ipynb"
    path.write_text(json.dumps(nb))
    doc = NotebookDoc.open(path, writer)
    assert doc.nb.nbformat_minor == 5
    assert doc.nb.cells[0].id


def test_open_rejects_garbage(tmp_path: Path, writer: NotebookWriter) -> None:
    path = tmp_path / "bad.ipynb"
    path.write_text("{not json")
    with pytest.raises(NotebookError, match="not a valid notebook"):
        NotebookDoc.open(path, writer)


def test_invalid_model_is_never_written(tmp_path: Path, writer: NotebookWriter) -> None:
    doc = NotebookDoc.create(tmp_path, "exp", writer)
    doc.append_cell(new_markdown_cell("kept"))
    doc.flush()
    with doc.editing():
        doc.nb.cells.append({"cell_type": "bogus"})
    with pytest.raises(NotebookError, match="not writing"):
        doc.flush()
    assert [c.source for c in read(doc.path).cells] == ["kept"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_dir_reports_and_keeps_file(tmp_path: Path, writer: NotebookWriter) -> None:
    doc = NotebookDoc.create(tmp_path, "exp", writer)
    tmp_path.chmod(0o500)
    try:
        doc.append_cell(new_markdown_cell("x"))
        with pytest.raises(NotebookError, match="cannot write"):
            doc.flush()
        assert doc.write_error
    finally:
        tmp_path.chmod(0o700)


def test_write_error_is_reported_then_recovers(tmp_path: Path, writer: NotebookWriter) -> None:
    # Works as root too: a directory where the temp file should go makes the write fail.
    doc = NotebookDoc.create(tmp_path, "exp", writer)
    doc.path.unlink()
    doc.path.mkdir()
    doc.append_cell(new_markdown_cell("x"))
    with pytest.raises(NotebookError, match="cannot write"):
        doc.flush()
    assert "kernel and its state are fine" in (doc.write_error or "")
    doc.path.rmdir()
    doc.append_cell(new_markdown_cell("y"))
    doc.flush()
    assert doc.write_error is None
    assert [c.source for c in read(doc.path).cells] == ["x", "y"]


def test_cell_index(tmp_path: Path, writer: NotebookWriter) -> None:
    doc = NotebookDoc.create(tmp_path, "exp", writer)
    with pytest.raises(CellIndexError, match="has no cells"):
        doc.cell_index(0)
    for i in range(3):
        doc.append_cell(new_markdown_cell(str(i)))
    assert doc.cell_index(-1) == 2
    assert doc.cell_index(-3) == 0
    assert doc.cell_index(1) == 1
    with pytest.raises(CellIndexError, match=r"has 3 cells \(valid: 0..2, or -1..-3"):
        doc.cell_index(3)
    with pytest.raises(CellIndexError):
        doc.cell_index(-4)


def plain_json(nb: nbformat.NotebookNode) -> bytes:
    return (json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def test_incremental_file_is_exactly_json_dumps(tmp_path: Path, writer: NotebookWriter) -> None:
    doc = NotebookDoc.create(
        tmp_path, "exp", writer, metadata={"kernelspec": {"name": "p", "display_name": "P"}}
    )
    assert b"".join(doc.serialize()[1]) == plain_json(doc.nb)  # no cells
    code = new_code_cell("print('é\\n')", outputs=[])
    doc.append_cell(code)
    doc.append_cell(new_markdown_cell("# title\n\nline"))
    assert b"".join(doc.serialize()[1]) == plain_json(doc.nb)
    # a named cell's change is picked up; the cached others stay right
    with doc.editing(code):
        code.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="x\n" * 3))
        code.execution_count = 1
    assert b"".join(doc.serialize()[1]) == plain_json(doc.nb)
    # an edit naming no cell redoes everything (metadata here)
    with doc.editing() as nb:
        nb.metadata["language_info"] = {"name": "python"}
    version, parts = doc.serialize()
    data = b"".join(parts)
    assert data == plain_json(doc.nb)
    assert version == doc.version
    nbformat.validate(json.loads(data))


def test_only_changed_cells_are_serialised(
    tmp_path: Path, writer: NotebookWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jlabgw.notebook import files as files_module

    doc = NotebookDoc.create(tmp_path, "big", writer)
    cells = [new_code_cell(f"x = {i}") for i in range(50)]
    for cell in cells:
        doc.append_cell(cell)
    doc.serialize()
    dumped: list[object] = []
    real = files_module.dumps

    def counting(value: object, depth: int) -> bytes:
        dumped.append(value)
        return real(value, depth)

    monkeypatch.setattr(files_module, "dumps", counting)
    with doc.editing(cells[7]):
        cells[7].source = "x = 'changed'"
    data = b"".join(doc.serialize()[1])
    assert [c for c in dumped if isinstance(c, dict) and "cell_type" in c] == [cells[7]]
    assert data == plain_json(doc.nb)


def test_an_invalid_cell_is_rechecked_until_fixed(tmp_path: Path, writer: NotebookWriter) -> None:
    doc = NotebookDoc.create(tmp_path, "exp", writer)
    cell = new_code_cell("1")
    doc.append_cell(cell)
    doc.flush()
    with doc.editing(cell):
        cell.outputs.append({"output_type": "stream", "name": "stdout"})  # no "text"
    with pytest.raises(NotebookError, match="not writing"):
        doc.flush()
    doc.append_cell(new_markdown_cell("later"))  # does not smuggle the bad cell through
    with pytest.raises(NotebookError, match="not writing"):
        doc.flush()
    with doc.editing(cell):
        cell.outputs[0]["text"] = "fixed\n"
    doc.flush()
    assert read(doc.path).cells[0].outputs[0].text == "fixed\n"


def test_open_removes_temp_files_of_interrupted_writes(
    tmp_path: Path, writer: NotebookWriter
) -> None:
    doc = NotebookDoc.create(tmp_path, "exp", writer)
    stale = tmp_path / ".exp.ipynb.0123456789ab.tmp"
    fresh = tmp_path / ".exp.ipynb.ba9876543210.tmp"
    other = tmp_path / ".other.ipynb.0123456789ab.tmp"
    for path in (stale, fresh, other):
        path.write_text("{")
    old = doc.path.stat().st_mtime - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    NotebookDoc.open(doc.path, writer)
    assert not stale.exists()
    assert fresh.exists()  # maybe a write under way right now
    assert other.exists()  # another notebook's
