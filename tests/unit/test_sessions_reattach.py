"""Reattach (sessions.reattach): the registry one manager leaves on a kept job is taken back
by the next, over a fake KernelStarter on the same fake gateway."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jlabgw.config import Settings
from jlabgw.errors import SessionLostError, UnknownSessionError
from jlabgw.notebook.text import outputs_to_text
from jlabgw.sessions.manager import SessionManager
from tests.session_fakes import FakeBackend, FakeGateway, FakeStarter, settings_for

pytestmark = pytest.mark.anyio

REGISTRY = "fake-job"


def new_manager(
    settings: Settings, gateway: FakeGateway, identity: str = "job-1"
) -> SessionManager:
    backend = FakeBackend(registry=REGISTRY, identity=identity)
    return SessionManager(settings, backend, starter=FakeStarter(gateway))


async def first_server(settings: Settings, gateway: FakeGateway) -> dict[str, str]:
    """A server that starts sessions "a" (one cell run) and "b", then exits leaving them."""
    manager = new_manager(settings, gateway)
    await manager.ready()  # nothing to take back; the registry is written from now on
    a = await manager.start_new("a")
    await manager.execute(a["session_id"], "= 1")
    b = await manager.start_new("b")
    await manager.aclose()
    return {"a": a["session_id"], "b": b["session_id"], "ka": a["kernel_id"], "kb": b["kernel_id"]}


def registry(settings: Settings) -> dict[str, object]:
    data: dict[str, object] = json.loads((settings.state_dir / "sessions" / REGISTRY).read_text())
    return data


async def test_a_second_manager_takes_the_sessions_back(tmp_path: Path) -> None:
    settings, gateway = settings_for(tmp_path), FakeGateway()
    ids = await first_server(settings, gateway)
    assert set(gateway.kernels) == {ids["ka"], ids["kb"]}  # handed over, not shut down
    saved = registry(settings)
    assert saved["identity"] == "job-1"
    assert isinstance(saved["sessions"], list)
    assert {s["session_id"] for s in saved["sessions"]} == {ids["a"], ids["b"]}

    manager = new_manager(settings, gateway)
    try:
        with pytest.raises(UnknownSessionError):  # not before ready()
            manager.get(ids["a"])
        await manager.ready()
        listed = {s.session_id: s for s in manager.list()}
        assert set(listed) == {ids["a"], ids["b"]}
        assert (listed[ids["a"]].kernel_id, listed[ids["a"]].executions) == (ids["ka"], 1)
        assert listed[ids["b"]].experiment_name == "b"
        result = await manager.execute(ids["a"], "= 2")  # the same kernel: it counts on
        assert (result.cell_index, result.execution_count) == (1, 2)
        assert outputs_to_text(result.outputs) == "2\n"
        assert manager.get(ids["b"]).conn.connects == 1  # reconnected on take-back
    finally:
        await manager.aclose()


async def test_a_record_whose_kernel_is_gone_says_how_to_rebuild_it(tmp_path: Path) -> None:
    settings, gateway = settings_for(tmp_path), FakeGateway()
    ids = await first_server(settings, gateway)
    gateway.kill(ids["kb"])
    manager = new_manager(settings, gateway)
    try:
        await manager.ready()
        assert [s.session_id for s in manager.list()] == [ids["a"]]
        with pytest.raises(
            SessionLostError,
            match=rf"its kernel {ids['kb']} is gone.*"
            r"start_session_resume_notebook with notebook_path='b.ipynb'",
        ):
            await manager.execute(ids["b"], "= 1")
        # the next registry no longer names it
        await manager.aclose()
        assert [s["session_id"] for s in registry(settings)["sessions"]] == [ids["a"]]  # type: ignore[union-attr]
    finally:
        await manager.aclose()


async def test_sessions_of_another_job_are_all_gone(tmp_path: Path) -> None:
    settings, gateway = settings_for(tmp_path), FakeGateway()
    ids = await first_server(settings, gateway)
    manager = new_manager(settings, gateway, identity="job-2")
    try:
        await manager.ready()
        assert manager.list() == []
        for sid in (ids["a"], ids["b"]):
            with pytest.raises(SessionLostError, match="they ran on job-1, which is gone"):
                manager.get(sid)
    finally:
        await manager.aclose()


async def test_a_running_cell_is_adopted_with_the_output_of_the_gap(tmp_path: Path) -> None:
    settings, gateway = settings_for(tmp_path), FakeGateway()
    first = new_manager(settings, gateway)
    await first.ready()
    sid = (await first.start_new("long"))["session_id"]
    running = await first.execute(sid, "print before\nwait go\nprint after\n= 7", wait=0.1)
    assert (running.status, outputs_to_text(running.outputs)) == ("running", "before\n")
    await first.aclose()  # the cell goes on in the kernel
    gateway.release("go")  # and ends while no server listens

    second = new_manager(settings, gateway)
    try:
        await second.ready()
        assert list(second.get(sid).runs) == [running.execution_id]  # followed, same id
        done = await second.get_execution(sid, running.execution_id, wait=5)
        assert (done.status, done.cell_index) == ("ok", 0)
        assert outputs_to_text(done.outputs) == "before\nafter\n7\n"  # nothing lost, no repeat
        cell = second.get(sid).doc.nb.cells[0]
        assert cell.execution_count == 1
        assert "jlabgw" not in cell.metadata
        after = await second.execute(sid, "= 8")
        assert (after.cell_index, after.execution_count) == (1, 2)
    finally:
        await second.aclose()
