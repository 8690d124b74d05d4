"""Scratch runs (sessions.scratch) through SessionManager over fake kernels: a throwaway
kernel is discarded when its run ends (at once, or after get_execution followed it, or at
close), a run in a session's kernel records nothing and is not named in the registry."""

from __future__ import annotations

import asyncio

import pytest

from jlabgw.errors import SessionBusyError, SessionLostError
from jlabgw.notebook.text import outputs_to_text
from jlabgw.progress import no_progress
from jlabgw.sessions.manager import SessionManager
from tests.session_fakes import FakeGateway, FakeStarter

pytestmark = pytest.mark.anyio


async def test_a_throwaway_kernel_is_discarded_when_its_run_ends(
    manager: SessionManager, gateway: FakeGateway, starter: FakeStarter
) -> None:
    done = await manager.scratch.throwaway("= 1", no_progress, wait=5, cell_timeout=None)
    assert (done.status, outputs_to_text(done.outputs)) == ("ok", "1\n")
    assert starter.discarded == starter.started[-1:]
    assert done.session_id.startswith("scratch-")

    slow = await manager.scratch.throwaway("wait go\n= 2", no_progress, wait=0, cell_timeout=None)
    assert slow.status == "running"
    kernel = starter.started[-1]
    assert kernel not in starter.discarded
    gateway.release("go")
    end = await manager.get_execution(slow.session_id, slow.execution_id, wait=5)
    assert (end.status, outputs_to_text(end.outputs)) == ("ok", "2\n")
    for _ in range(100):  # the discard is a task of its own, just started
        if kernel in starter.discarded:
            break
        await asyncio.sleep(0.01)
    assert kernel in starter.discarded

    left = await manager.scratch.throwaway("wait never", no_progress, wait=0, cell_timeout=None)
    assert left.status == "running"
    await manager.scratch.aclose()
    assert starter.started[-1] in starter.discarded


async def test_a_scratch_run_in_a_session_records_nothing(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    sid = (await manager.start_new("host"))["session_id"]
    await manager.execute(sid, "= 1")
    session = manager.get(sid)
    running = await manager.scratch.in_session(
        session, "wait go\n= 5", no_progress, wait=0, cell_timeout=None
    )
    assert running.status == "running"
    assert session.record()["running"] is None  # nothing in the notebook to take back
    with pytest.raises(SessionBusyError):
        await manager.execute(sid, "= 2", wait=1)
    gateway.release("go")
    end = await manager.get_execution(sid, running.execution_id, wait=5)
    assert outputs_to_text(end.outputs) == "5\n"
    assert end.notebook_path.name == "scratch (not recorded)"
    assert [c.source for c in session.doc.nb.cells] == ["= 1"]
    assert any("no longer reproduces" in w for w in running.warnings)


async def test_a_lost_gateway_during_a_scratch_run_loses_the_session_naming_its_notebook(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    sid = (await manager.start_new("host"))["session_id"]
    session = manager.get(sid)
    gateway.lost_reason = "the batch job ended"
    with pytest.raises(
        SessionLostError, match=rf"the batch job ended.*notebook_path='{session.doc.path.name}'"
    ):
        await manager.scratch.in_session(session, "= 1", no_progress, wait=5, cell_timeout=None)
    with pytest.raises(SessionLostError, match="start_session_resume_notebook"):
        manager.get(sid)
