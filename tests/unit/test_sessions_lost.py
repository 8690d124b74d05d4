"""A session whose gateway (batch job) is gone for good, over fake kernels: the call that finds
out says so and how to carry on; so does every later call on it, for the server's life, and
so do the other sessions on the same gateway on their next call. Sessions on a gateway that
is still up are kept.

The kernel side is faked at the seam (tests/session_fakes.py): ``gateway.lost_reason`` is
what the backend's lost check answers for every connection to that gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from jlabgw.errors import ConnectionLostError, SessionLostError, UnknownSessionError
from jlabgw.notebook.text import outputs_to_text
from jlabgw.sessions.manager import SessionManager
from jlabgw.sessions.session import SessionTable
from tests.session_fakes import FakeBackend, FakeGateway, FakeStarter, settings_for

pytestmark = pytest.mark.anyio

WHY = "batch job 4242 is no longer running (CANCELLED)"


async def new_session(manager: SessionManager, name: str = "unit") -> str:
    info = await manager.start_new(name)
    return str(info["session_id"])


def every_call(manager: SessionManager, sid: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Each tool that takes a session id, as a call on ``sid``."""
    return {
        "execute_code": lambda: manager.execute(sid, "= 1"),
        "get_execution": lambda: manager.get_execution(sid),
        "edit_cell": lambda: manager.edit_cell(sid, 0, "= 2"),
        "add_markdown": lambda: manager.add_markdown(sid, "# note"),
        "interrupt_kernel": lambda: manager.interrupt(sid),
        "restart_kernel": lambda: manager.restart(sid),
        "shutdown_session": lambda: manager.shutdown(sid),
    }


def says_lost(message: str, sid: str, notebook: str) -> bool:
    return (
        message.startswith(f"{WHY}: session {sid}'s kernel and its variables are gone")
        and f"start_session_resume_notebook with notebook_path='{notebook}'" in message
    )


async def answers(manager: SessionManager, sid: str) -> dict[str, str]:
    """What every call on ``sid`` says: the error's message, or "no error: ..." ."""
    said = {}
    for tool, make_call in every_call(manager, sid).items():
        try:
            result = await asyncio.wait_for(make_call(), timeout=5)
        except SessionLostError as exc:
            said[tool] = str(exc)
        except Exception as exc:
            said[tool] = f"{type(exc).__name__}: {exc}"
        else:
            said[tool] = f"no error: {result!r}"
    return said


async def test_every_later_call_on_a_lost_session_says_the_job_ended(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    sid = await new_session(manager, "doomed")
    await manager.execute(sid, "= 41")
    notebook = manager.get(sid).doc.path.name

    gateway.lost_reason = WHY
    with pytest.raises(SessionLostError) as first:
        await manager.execute(sid, "= 42")
    assert says_lost(str(first.value), sid, notebook), first.value

    for _ in range(2):  # not only once: for the server's life
        said = await answers(manager, sid)
        assert said == dict.fromkeys(said, str(first.value)), said
    with pytest.raises(SessionLostError):
        manager.get(sid)
    assert manager.list() == []  # not listed as running
    assert manager.status().sessions == []


async def test_the_other_sessions_on_the_lost_gateway_say_so_on_their_next_call(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    first = await new_session(manager, "first")
    siblings = [await new_session(manager, f"sibling{n}") for n in (1, 2)]
    for sid in siblings:
        await manager.execute(sid, "= 1")  # a finished run, for get_execution to find
    notebooks = {sid: manager.get(sid).doc.path.name for sid in siblings}
    conns = [manager.get(sid).conn for sid in siblings]

    gateway.lost_reason = WHY
    with pytest.raises(SessionLostError):
        await manager.execute(first, "= 2")

    assert manager.list() == []
    assert all(conn.closed for conn in conns)  # type: ignore[attr-defined]
    for sid in siblings:
        said = await answers(manager, sid)
        notebook = notebooks[sid]
        wrong = {tool: text for tool, text in said.items() if not says_lost(text, sid, notebook)}
        assert not wrong, wrong


async def test_a_cell_running_on_a_sibling_ends_with_the_loss(
    manager: SessionManager, gateway: FakeGateway
) -> None:
    first = await new_session(manager, "first")
    busy = await new_session(manager, "busy")
    running = await manager.execute(busy, "print started\nwait never", wait=0)
    assert running.status == "running"
    execution = manager.get(busy).find_run(running.execution_id)
    notebook = manager.get(busy).doc.path.name

    gateway.lost_reason = WHY
    with pytest.raises(SessionLostError):
        await manager.execute(first, "= 2")

    assert execution.task is not None
    with pytest.raises(SessionLostError) as ended:
        await asyncio.wait_for(execution.task, timeout=5)  # not left waiting for ever
    assert says_lost(str(ended.value), busy, notebook), ended.value
    with pytest.raises(SessionLostError):
        await manager.get_execution(busy, running.execution_id)


async def test_sessions_on_a_gateway_that_is_up_are_kept(
    manager: SessionManager, gateway: FakeGateway, starter: FakeStarter
) -> None:
    doomed = await new_session(manager, "doomed")
    starter.gateway = FakeGateway()  # the next kernel runs on another gateway (a newer job)
    kept = await new_session(manager, "kept")

    gateway.lost_reason = WHY
    with pytest.raises(SessionLostError):
        await manager.execute(doomed, "= 1")

    assert [s.session_id for s in manager.list()] == [kept]
    out = await manager.execute(kept, "= 7")
    assert outputs_to_text(out.outputs) == "7\n"


class ControlStarter(FakeStarter):
    """Interrupt and restart reach the gateway, and fail when it is gone (as REST calls do)."""

    async def interrupt(self, kernel_id: str, lane: str = "") -> None:
        if self.gateway.lost_reason is not None:
            raise ConnectionLostError("cannot reach the gateway")
        await super().interrupt(kernel_id, lane)

    async def restart(self, kernel_id: str, lane: str = "") -> None:
        if self.gateway.lost_reason is not None:
            raise ConnectionLostError("cannot reach the gateway")
        await super().restart(kernel_id, lane)


@pytest.mark.parametrize("tool", ["interrupt_kernel", "restart_kernel"])
async def test_a_kernel_control_call_can_be_the_one_that_finds_out(
    tmp_path: Path, gateway: FakeGateway, tool: str
) -> None:
    manager = SessionManager(settings_for(tmp_path), FakeBackend(), starter=ControlStarter(gateway))
    try:
        sid = await new_session(manager, "doomed")
        notebook = manager.get(sid).doc.path.name
        gateway.lost_reason = WHY
        control = every_call(manager, sid)[tool]
        with pytest.raises(SessionLostError) as first:
            await control()
        assert says_lost(str(first.value), sid, notebook), first.value
        with pytest.raises(SessionLostError, match="start_session_resume_notebook"):
            await manager.execute(sid, "= 1")
    finally:
        await manager.aclose()


async def test_a_control_call_failing_on_a_gateway_that_is_up_raises_its_own_error(
    tmp_path: Path, gateway: FakeGateway
) -> None:
    starter = ControlStarter(gateway)
    manager = SessionManager(settings_for(tmp_path), FakeBackend(), starter=starter)
    try:
        sid = await new_session(manager)

        async def flaky(kernel_id: str, lane: str = "") -> None:
            raise ConnectionLostError("a hiccup")

        starter.interrupt = flaky  # type: ignore[method-assign]
        with pytest.raises(ConnectionLostError, match="a hiccup"):
            await manager.interrupt(sid)
        assert [s.session_id for s in manager.list()] == [sid]  # still a session
    finally:
        await manager.aclose()


async def test_a_session_no_longer_in_the_table_is_not_recorded_as_lost(
    manager: SessionManager,
) -> None:
    sid = await new_session(manager)
    session = manager.get(sid)
    await manager.shutdown(sid)
    table = SessionTable()
    assert not table.lose(session, "gone")  # never in this table
    with pytest.raises(UnknownSessionError):
        table.get(sid)
    table.add(session)
    assert table.lose(session, "gone")
    assert not table.lose(session, "again")  # once
    with pytest.raises(SessionLostError, match=r"^gone$"):
        table.get(sid)
