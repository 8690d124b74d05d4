"""The cell tools over MCP stdio with real kernels (local backend): insert at an index
(execute_code / add_markdown ``cell_index``), run_cell, delete_cell, move_cell; the notebook
file on disk after each operation, and every error path. One server for the module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from mcp import Client

from jlabgw.notebook.text import outputs_to_text
from tests.helpers import wait_until
from tests.mcp_client import call, new_session, poll_to_the_end, serve, text_of

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so the shared server below can be a module fixture."""
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    root = tmp_path_factory.mktemp("notebook-tools")
    with (root / "server.log").open("w") as log:
        async with serve(root, log, JLABGW_EXEC_WAIT="2") as running:
            yield running


async def session(client: Client, name: str) -> tuple[str, Path]:
    sid = await new_session(client, name)
    listed = await call(client, "list_sessions")
    path = next(
        s["notebook_path"] for s in listed.structured_content["result"] if s["session_id"] == sid
    )
    return sid, Path(path)


def disk(path: Path, sources: list[str]) -> list[Any]:
    """The notebook on disk once it holds exactly ``sources`` (the writer coalesces), valid."""

    def ready() -> bool:
        try:
            return [c.source for c in nbformat.read(path, as_version=4).cells] == sources
        except (OSError, ValueError):
            return False

    if not wait_until(ready, timeout=10):
        found = [c.source for c in nbformat.read(path, as_version=4).cells]
        raise AssertionError(f"{path.name} holds {found}, not {sources}")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return list(nb.cells)


async def run(client: Client, sid: str, code: str, **args: Any) -> Any:
    result = await call(client, "execute_code", session_id=sid, code=code, **args)
    assert not result.is_error, text_of(result)
    return result


async def test_execute_code_and_add_markdown_insert_at_an_index(client: Client) -> None:
    sid, path = await session(client, "insert")
    await run(client, sid, "a = 1")
    await run(client, sid, "b = a + 1")
    first = await run(client, sid, "print('first')", cell_index=0)
    assert first.meta["cell_index"] == 0
    assert text_of(first) == "first\n"
    disk(path, ["print('first')", "a = 1", "b = a + 1"])

    md = await call(client, "add_markdown", session_id=sid, markdown="## b", cell_index=-2)
    assert md.structured_content["cell_index"] == 2
    disk(path, ["print('first')", "a = 1", "## b", "b = a + 1"])

    last = await run(client, sid, "b * 10")  # -1 appends, as before
    assert last.meta["cell_index"] == 4
    assert text_of(last) == "20\n"
    mid = await run(client, sid, "'mid'", cell_index=2)
    assert mid.meta["cell_index"] == 2
    end = await run(client, sid, "'end'", cell_index=6)  # len(cells): appends too
    assert end.meta["cell_index"] == 6
    cells = disk(path, ["print('first')", "a = 1", "'mid'", "## b", "b = a + 1", "b * 10", "'end'"])
    assert outputs_to_text(cells[2].outputs) == "'mid'\n"
    assert outputs_to_text(cells[0].outputs) == "first\n"
    assert [c.execution_count for c in cells if c.cell_type == "code"] == [3, 1, 5, 2, 4, 6]

    for tool, args in (
        ("execute_code", {"code": "1", "cell_index": 8}),
        ("execute_code", {"code": "1", "cell_index": -9}),
        ("add_markdown", {"markdown": "x", "cell_index": 100}),
    ):
        bad = await call(client, tool, session_id=sid, **args)
        assert bad.is_error
        assert "out of range for a new cell: the notebook has 7 cells" in text_of(bad)
        assert "valid: 0..7, or -1..-8 from the end; -1 appends" in text_of(bad)
    disk(path, ["print('first')", "a = 1", "'mid'", "## b", "b = a + 1", "b * 10", "'end'"])


async def test_delete_and_move_cells(client: Client) -> None:
    sid, path = await session(client, "delete and move")
    for code in ("x = 1", "y = 2", "z = 3"):
        await run(client, sid, code)
    await call(client, "add_markdown", session_id=sid, markdown="# notes")

    moved = await call(client, "move_cell", session_id=sid, from_index=-1, to_index=0)
    assert not moved.is_error, text_of(moved)
    assert moved.structured_content["moved_from"] == 3
    assert moved.structured_content["cell_index"] == 0
    disk(path, ["# notes", "x = 1", "y = 2", "z = 3"])
    await call(client, "move_cell", session_id=sid, from_index=1, to_index=-1)
    cells = disk(path, ["# notes", "y = 2", "z = 3", "x = 1"])
    assert [c.execution_count for c in cells[1:]] == [2, 3, 1]  # outputs move with the cell

    deleted = await call(client, "delete_cell", session_id=sid, cell_index=2)
    assert not deleted.is_error, text_of(deleted)
    assert deleted.structured_content["deleted"] == 2
    assert deleted.structured_content["source"] == "z = 3"
    assert deleted.structured_content["cells"] == 3
    disk(path, ["# notes", "y = 2", "x = 1"])
    after = await run(client, sid, "z")  # deleting a cell does not touch the kernel
    assert text_of(after) == "3\n"
    disk(path, ["# notes", "y = 2", "x = 1", "z"])

    for tool, args, message in (
        ("delete_cell", {"cell_index": 4}, "valid: 0..3, or -1..-4 from the end"),
        ("move_cell", {"from_index": 9, "to_index": 0}, "cell index 9 is out of range"),
        ("move_cell", {"from_index": 0, "to_index": -5}, "cell index -5 is out of range"),
        ("delete_cell", {"cell_index": 0, "session_id": "nope"}, "unknown session_id 'nope'"),
    ):
        bad = await call(client, tool, **{"session_id": sid, **args})
        assert bad.is_error
        assert message in text_of(bad)
    disk(path, ["# notes", "y = 2", "x = 1", "z"])


async def test_run_cell_reruns_in_place(client: Client) -> None:
    sid, path = await session(client, "run cell")
    await run(client, sid, "n = 0")
    await run(client, sid, "n += 1\nprint('n is', n)")
    await call(client, "add_markdown", session_id=sid, markdown="text")
    again = await call(client, "run_cell", session_id=sid, cell_index=1)
    assert not again.is_error
    assert text_of(again) == "n is 2\n"
    assert again.meta["cell_index"] == 1
    assert again.meta["execution_count"] == 3
    cells = disk(path, ["n = 0", "n += 1\nprint('n is', n)", "text"])
    assert wait_until(
        lambda: nbformat.read(path, as_version=4).cells[1].execution_count == 3, timeout=10
    )
    cells = disk(path, ["n = 0", "n += 1\nprint('n is', n)", "text"])
    assert outputs_to_text(cells[1].outputs) == "n is 2\n"  # replaced, not added to

    bad = await call(client, "run_cell", session_id=sid, cell_index=-1)
    assert bad.is_error
    assert "cell 2 is a markdown cell; only code cells run" in text_of(bad)
    bad = await call(client, "run_cell", session_id=sid, cell_index=3)
    assert bad.is_error
    assert "out of range" in text_of(bad)

    # a long cell: its output so far and an execution_id, then get_execution to the end
    slow = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(1.2)"
    edited = await call(client, "edit_cell", session_id=sid, cell_index=0, code=slow)
    busy = await call(client, "run_cell", session_id=sid, cell_index=0)
    assert busy.is_error  # the edit is still running it
    assert f"still running execution {edited.meta['execution_id']}" in text_of(busy)
    await poll_to_the_end(client, sid, edited)
    first = await call(client, "run_cell", session_id=sid, cell_index=0)
    assert first.meta["status"] == "running"
    reports = await poll_to_the_end(client, sid, first)
    assert reports[-1].meta["status"] == "ok"
    cells = disk(path, [slow, "n += 1\nprint('n is', n)", "text"])
    assert wait_until(
        lambda: outputs_to_text(nbformat.read(path, as_version=4).cells[0].outputs) == "0\n1\n2\n",
        timeout=10,
    )


async def test_the_running_cell_cannot_be_deleted_or_moved(client: Client) -> None:
    sid, path = await session(client, "running")
    await run(client, sid, "a = 1")
    loop = "import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(1)"
    first = await call(client, "execute_code", session_id=sid, code=loop)
    assert first.meta["status"] == "running"
    for tool, args in (
        ("delete_cell", {"cell_index": 1}),
        ("move_cell", {"from_index": -1, "to_index": 0}),
    ):
        bad = await call(client, tool, session_id=sid, **args)
        assert bad.is_error
        assert "cell 1 is running (execution" in text_of(bad)
        assert "interrupt_kernel" in text_of(bad)
    # other cells may move and be added around it: its output follows the cell
    await call(client, "add_markdown", session_id=sid, markdown="# above", cell_index=0)
    await call(client, "move_cell", session_id=sid, from_index=1, to_index=-1)
    reports = await poll_to_the_end(client, sid, first)
    assert reports[-1].meta["status"] == "ok"
    assert reports[-1].meta["cell_index"] == 1
    cells = disk(path, ["# above", loop, "a = 1"])
    assert wait_until(
        lambda: (
            outputs_to_text(nbformat.read(path, as_version=4).cells[1].outputs) == "0\n1\n2\n3\n"
        ),
        timeout=10,
    )
    assert outputs_to_text(cells[2].outputs) == ""
    deleted = await call(client, "delete_cell", session_id=sid, cell_index=1)  # done: it may go
    assert not deleted.is_error
    disk(path, ["# above", "a = 1"])
