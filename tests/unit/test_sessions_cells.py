"""The cell use cases (sessions.cells) through SessionManager over fake kernels: a new cell
goes before the cell that held its place when asked, the running cell is refused to delete
and move, and the registry's record names where the running cell is now."""

from __future__ import annotations

import pytest

from jlabgw.errors import CellIndexError, SessionBusyError
from jlabgw.sessions.manager import SessionManager
from tests.session_fakes import FakeGateway

pytestmark = pytest.mark.anyio


def sources(manager: SessionManager, sid: str) -> list[str]:
    return [c.source for c in manager.get(sid).doc.nb.cells]


async def test_a_queued_insert_goes_before_the_cell_that_held_its_place(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    sid = (await manager.start_new("cells"))["session_id"]
    await manager.execute(sid, "= 1")
    slow = await manager.execute(sid, "wait go\n= 2", wait=0)
    queued = await manager.execute(sid, "= 0", wait=0, queue=True, cell_index=0)
    assert queued.status == "queued"
    await manager.add_markdown(sid, "# top", cell_index=0)  # meanwhile, above everything
    gateway.release("go")
    await manager.get_execution(sid, slow.execution_id, wait=5)
    done = await manager.get_execution(sid, queued.execution_id, wait=5)
    assert done.status == "ok"
    assert done.cell_index == 1  # before "= 1", which held index 0 when it was asked
    assert sources(manager, sid) == ["# top", "= 0", "= 1", "wait go\n= 2"]


async def test_the_running_cell_is_refused_and_the_record_follows_it(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    sid = (await manager.start_new("running"))["session_id"]
    await manager.execute(sid, "= 1")
    slow = await manager.execute(sid, "wait go\n= 2", wait=0)
    with pytest.raises(SessionBusyError, match=r"cell 1 is running .*cannot delete"):
        await manager.delete_cell(sid, 1)
    with pytest.raises(SessionBusyError, match=r"cell 1 is running .*cannot move"):
        await manager.move_cell(sid, -1, 0)
    await manager.move_cell(sid, 0, 1)  # the other cell moves below it
    await manager.add_markdown(sid, "# a", cell_index=0)
    record = manager.get(sid).record()
    assert record["running"]["cell_index"] == 1
    assert sources(manager, sid) == ["# a", "wait go\n= 2", "= 1"]
    with pytest.raises(CellIndexError, match=r"markdown cell; only code cells run"):
        await manager.run_cell(sid, 0)
    gateway.release("go")
    done = await manager.get_execution(sid, slow.execution_id, wait=5)
    assert (done.status, done.cell_index) == ("ok", 1)
    deleted = await manager.delete_cell(sid, 1)
    assert (deleted["deleted"], deleted["cells"]) == (1, 2)
    again = await manager.run_cell(sid, -1)
    assert (again.status, again.cell_index, again.execution_count) == ("ok", 1, 3)
