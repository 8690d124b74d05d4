"""Running and following cells (sessions.runner) through SessionManager, over fake kernels.

The kernel side is faked at the seam (a fake KernelStarter and connections); the notebook is
real, written by a NotebookWriter under tmp_path.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import pytest

from jlabgw.errors import (
    CodeTooLargeError,
    SessionBusyError,
    SessionLostError,
    UnknownExecutionError,
)
from jlabgw.notebook.text import outputs_to_text
from jlabgw.sessions.manager import SessionManager
from tests.session_fakes import FakeGateway, FakeStarter

pytestmark = pytest.mark.anyio


async def new_session(manager: SessionManager) -> str:
    info = await manager.start_new("unit")
    return str(info["session_id"])


async def test_outputs_land_in_the_notebook_cell(manager: SessionManager) -> None:
    sid = await new_session(manager)
    first = await manager.execute(sid, "print hello\n= 42")
    second = await manager.execute(sid, "fail")

    assert (first.cell_index, first.execution_count, first.status) == (0, 1, "ok")
    assert outputs_to_text(first.outputs) == "hello\n42\n"
    assert (second.cell_index, second.status, second.is_error) == (1, "error", True)
    manager.writer.flush()
    nb = nbformat.read(manager.get(sid).doc.path, as_version=4)
    nbformat.validate(nb)
    assert [c.source for c in nb.cells] == ["print hello\n= 42", "fail"]
    assert [c.execution_count for c in nb.cells] == [1, 2]
    assert nb.cells[0].outputs[0].text == "hello\n"
    assert nb.cells[0].outputs[1].data["text/plain"] == "42"
    assert nb.cells[1].outputs[0].ename == "ValueError"
    assert "jlabgw" not in nb.cells[0].metadata  # the running mark is gone once finished
    assert manager.list()[0].executions == 2


async def test_a_busy_session_refuses_naming_the_execution(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    sid = await new_session(manager)
    slow = await manager.execute(sid, "print started\nwait go\n= 1", wait=0)
    assert slow.status == "running"
    assert outputs_to_text(slow.outputs) == "started\n"
    with pytest.raises(SessionBusyError, match=rf"execution {slow.execution_id} \(cell 0.*queue"):
        await manager.execute(sid, "= 2", wait=1)  # bounded, should it not refuse
    assert manager.list()[0].state == "busy"
    gateway.release("go")
    done = await manager.get_execution(sid, slow.execution_id, wait=5)
    assert (done.status, done.execution_count) == ("ok", 1)
    assert outputs_to_text(done.outputs) == "1\n"  # only what was not reported yet
    assert done.follow_up
    assert manager.list()[0].state == "idle"


async def test_queue_runs_after_the_busy_cell(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    sid = await new_session(manager)
    slow = await manager.execute(sid, "wait go\nprint first", wait=0)
    queued = asyncio.create_task(manager.execute(sid, "print second", queue=True))
    await asyncio.sleep(0.1)
    assert not queued.done()  # waits for its turn
    late = await manager.get_execution(sid, wait=0)  # the latest: the queued one
    assert (late.status, late.cell_index) == ("queued", None)
    gateway.release("go")
    second = await asyncio.wait_for(queued, timeout=5)
    assert (second.cell_index, second.execution_count) == (1, 2)
    assert outputs_to_text(second.outputs) == "second\n"
    first = await manager.get_execution(sid, slow.execution_id, wait=5)
    assert (first.status, first.execution_count) == ("ok", 1)
    assert gateway.kernels[manager.get(sid).kernel_id].ran == [
        "wait go\nprint first",
        "print second",
    ]


async def test_queued_calls_each_run_once_in_order(manager: SessionManager) -> None:
    sid = await new_session(manager)
    results = await asyncio.gather(*(manager.execute(sid, f"= {i}", queue=True) for i in range(5)))
    assert sorted(r.execution_count or 0 for r in results) == [1, 2, 3, 4, 5]
    assert sorted(r.cell_index or 0 for r in results) == [0, 1, 2, 3, 4]
    cells = manager.get(sid).doc.nb.cells
    assert [c.execution_count for c in cells] == [1, 2, 3, 4, 5]


async def test_wait_zero_returns_running_and_get_execution_follows_to_the_end(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    sid = await new_session(manager)
    first = await manager.execute(sid, "print a\nwait one\nprint b\nwait two\n= done", wait=0)
    assert first.running
    assert not first.is_error
    assert outputs_to_text(first.outputs) == "a\n"
    gateway.release("one")
    await asyncio.sleep(0.05)
    middle = await manager.get_execution(sid, first.execution_id, wait=0)
    assert (middle.status, outputs_to_text(middle.outputs)) == ("running", "b\n")
    gateway.release("two")
    last = await manager.get_execution(sid, wait=5)  # omitted: the latest execution
    assert (last.status, last.execution_count) == ("ok", 1)
    assert outputs_to_text(last.outputs) == "done\n"
    again = await manager.get_execution(sid)
    assert again.outputs == []
    with pytest.raises(UnknownExecutionError, match=rf"recent: {first.execution_id}"):
        await manager.get_execution(sid, "nope")
    cell = manager.get(sid).doc.nb.cells[0]
    assert outputs_to_text(cell.outputs) == "a\nb\ndone\n"  # the cell has all of it


async def test_progress_names_the_last_line_while_waiting(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    sid = await new_session(manager)
    seen: list[str] = []

    async def progress(done: float, total: float | None, message: str) -> None:
        seen.append(message)
        if len(seen) == 2:
            gateway.release("go")

    result = await manager.execute(sid, "print epoch 1\nwait go", progress, wait=5)
    assert result.status == "ok"
    assert seen[0].startswith("running for"), seen
    assert seen[0].endswith(": epoch 1"), seen


async def test_cell_timeout_interrupts_the_cell(
    manager: SessionManager, starter: FakeStarter
) -> None:
    sid = await new_session(manager)
    result = await manager.execute(sid, "print start\nwait never", cell_timeout=0.2, wait=5)
    assert result.status == "error"
    assert "KeyboardInterrupt" in outputs_to_text(result.outputs)
    assert result.warnings == ["the cell was interrupted after its timeout of 0.2 s"]
    assert starter.interrupted == [manager.get(sid).kernel_id]
    after = await manager.execute(sid, "= alive", cell_timeout=5)  # the kernel goes on
    assert outputs_to_text(after.outputs) == "alive\n"
    assert after.warnings == []
    assert starter.interrupted == [manager.get(sid).kernel_id]  # no second interrupt


async def test_a_lost_gateway_ends_the_session_with_how_to_resume(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    sid = await new_session(manager)
    path = manager.get(sid).doc.path
    gateway.lost_reason = "the batch job ended"
    with pytest.raises(
        SessionLostError, match=rf"the batch job ended.*notebook_path='{path.name}'"
    ):
        await manager.execute(sid, "= 1")
    with pytest.raises(SessionLostError, match="start_session_resume_notebook"):
        manager.get(sid)  # and so does every later call: the loss is remembered
    assert manager.list() == []


async def test_code_too_large_is_refused_before_anything_runs(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    sid = await new_session(manager)
    with pytest.raises(CodeTooLargeError, match="10 MiB"):
        await manager.execute(sid, "#" * (9 * 2**20 + 1))
    assert gateway.kernels[manager.get(sid).kernel_id].ran == []
    assert manager.get(sid).doc.nb.cells == []


async def test_resume_reruns_code_cells_in_place_and_reports_failures(
    manager: SessionManager,
) -> None:
    info = await manager.start_new("to resume")
    sid = info["session_id"]
    await manager.execute(sid, "= 1")
    await manager.add_markdown(sid, "notes")
    await manager.execute(sid, "fail")
    await manager.shutdown(sid)
    resumed = await manager.resume("again", Path(info["notebook_path"]).name)
    assert resumed["executed_cells"] == 2
    assert resumed["failed_cells"] == [{"cell_index": 2, "ename": "ValueError", "evalue": "boom"}]
    cells = manager.get(resumed["session_id"]).doc.nb.cells
    assert [c.execution_count for c in cells if c.cell_type == "code"] == [1, 2]
