"""A person editing the notebook (as their editor saves it: nbformat, the whole file) while a
real session records into it, through SessionManager on a real local gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nbformat
import pytest
from nbformat import NotebookNode
from nbformat.v4 import new_markdown_cell

from jlabgw.cluster.backends import LocalBackend
from jlabgw.notebook.text import outputs_to_text
from jlabgw.sessions.manager import SessionManager
from tests.helpers import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

LOOP = "import time\nfor i in range(10):\n    print(i, flush=True)\n    time.sleep(0.2)"


@pytest.fixture
async def manager(tmp_path: Path, shared_backend: LocalBackend) -> AsyncIterator[SessionManager]:
    m = SessionManager(make_settings(tmp_path, progress_interval="0.2"), shared_backend)
    yield m
    await m.aclose()


def on_disk(path: Path) -> NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def person_edits(path: Path, change: Callable[[NotebookNode], None]) -> None:
    nb = nbformat.read(path, as_version=4)
    change(nb)
    nbformat.write(nb, path)


async def printed(manager: SessionManager, sid: str, marker: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        cells = manager.get(sid).doc.nb.cells
        if cells and marker in outputs_to_text(cells[-1].outputs):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the cell did not print {marker!r} within {timeout} s")


def all_edits(nb: NotebookNode) -> None:
    """A new markdown cell, a changed source, a deleted cell and two cells swapped."""
    nb.cells.insert(0, new_markdown_cell("# the person's title"))
    nb.cells[1].source = "a = 1  # checked by hand"
    del nb.cells[2]  # the agent's markdown note
    nb.cells[2], nb.cells[3] = nb.cells[3], nb.cells[2]


async def test_edits_while_idle_are_kept(manager: SessionManager) -> None:
    info = await manager.start_new("idle edits")
    sid, path = info["session_id"], Path(info["notebook_path"])
    await manager.execute(sid, "a = 1")
    await manager.add_markdown(sid, "agent's note")
    await manager.execute(sid, "print('b')")
    await manager.execute(sid, "print('c')")
    manager.writer.flush()
    ids = [c.id for c in on_disk(path).cells]
    person_edits(path, all_edits)

    result = await manager.execute(sid, "a + 1")
    assert result.cell_index == 4  # in the notebook as it is on disk now
    assert not result.warnings
    manager.writer.flush()
    nb = on_disk(path)
    assert [c.source for c in nb.cells] == [
        "# the person's title",
        "a = 1  # checked by hand",
        "print('c')",
        "print('b')",
        "a + 1",
    ]
    assert [c.id for c in nb.cells[1:4]] == [ids[0], ids[3], ids[2]]
    assert outputs_to_text(nb.cells[4].outputs) == "2\n"
    assert nb.cells[4].execution_count == 4
    assert outputs_to_text(nb.cells[2].outputs) == "c\n"


async def test_edits_saved_while_a_cell_runs_are_kept(manager: SessionManager) -> None:
    info = await manager.start_new("running edits")
    sid, path = info["session_id"], Path(info["notebook_path"])
    await manager.execute(sid, "a = 1")
    running = await manager.execute(sid, LOOP, wait=0.1)
    assert running.running
    await printed(manager, sid, "3")
    manager.writer.flush()

    def edit(nb: NotebookNode) -> None:
        nb.cells.insert(0, new_markdown_cell("# notes while it runs"))
        nb.cells[1].source = "a = 1  # fixed"

    person_edits(path, edit)
    done = await manager.get_execution(sid, running.execution_id)
    assert done.status == "ok"
    assert done.cell_index == 2  # the cell moved down: the person inserted one above it
    assert not done.warnings
    await manager.execute(sid, "a + 1")
    manager.writer.flush()
    nb = on_disk(path)
    assert [c.source for c in nb.cells] == [
        "# notes while it runs",
        "a = 1  # fixed",
        LOOP,
        "a + 1",
    ]
    assert outputs_to_text(nb.cells[2].outputs) == "".join(f"{i}\n" for i in range(10))
    assert nb.cells[2].execution_count == 2
    assert outputs_to_text(nb.cells[3].outputs) == "2\n"


async def test_edit_cell_by_index_after_a_person_inserted_a_cell_above(
    manager: SessionManager,
) -> None:
    info = await manager.start_new("index edits")
    sid, path = info["session_id"], Path(info["notebook_path"])
    for code in ("x = 1", "x * 2", "x * 3"):
        await manager.execute(sid, code)
    manager.writer.flush()
    person_edits(path, lambda nb: nb.cells.insert(0, new_markdown_cell("# above")))
    # the agent was told "cell 2" by the person looking at the file: that is "x * 2" now
    result = await manager.edit_cell(sid, 2, "x * 20")
    assert not isinstance(result, str)
    assert result.cell_index == 2
    assert outputs_to_text(result.outputs) == "20\n"
    message = await manager.edit_cell(sid, 0, "# above, edited by the agent")
    assert message == "cell 0 (markdown) updated; not executed"
    manager.writer.flush()
    nb = on_disk(path)
    assert [c.source for c in nb.cells] == [
        "# above, edited by the agent",
        "x = 1",
        "x * 20",
        "x * 3",
    ]


async def test_deleting_the_running_cell_leaves_the_file_and_warns(
    manager: SessionManager,
) -> None:
    info = await manager.start_new("conflict")
    sid, path = info["session_id"], Path(info["notebook_path"])
    await manager.execute(sid, "a = 1")
    running = await manager.execute(sid, LOOP, wait=0.1)
    await printed(manager, sid, "2")
    manager.writer.flush()
    person_edits(path, lambda nb: nb.cells.pop(1))
    theirs = path.read_bytes()
    done = await manager.get_execution(sid, running.execution_id)
    assert done.status == "ok"
    manager.writer.flush()
    assert path.read_bytes() == theirs  # the person's file, untouched
    conflict = path.with_name("conflict.jlabgw-conflict.ipynb")
    assert any(conflict.name in w and "deleted" in w for w in done.warnings), done.warnings
    nb = on_disk(conflict)
    assert outputs_to_text(nb.cells[1].outputs) == "".join(f"{i}\n" for i in range(10))
    added = await manager.add_markdown(sid, "more")
    assert conflict.name in added["warning"]
    assert manager.get(sid).describe().notebook_write_error
