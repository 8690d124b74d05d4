"""Two servers of one user on one job (issue 12): each owns the sessions it started. Server B
never takes the sessions of a live server A, and A's records survive B's writes and B's exit;
a record whose owner is dead (or whose pid now is another process) is taken back as before.
Over the fakes of tests/session_fakes.py; "servers" are managers with different owners."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jlabgw.config import Settings
from jlabgw.errors import UnknownSessionError
from jlabgw.notebook.text import outputs_to_text
from jlabgw.sessions import registry as registry_module
from jlabgw.sessions.manager import SessionManager
from tests.helpers import owner_of
from tests.session_fakes import FakeBackend, FakeGateway, FakeStarter, settings_for

pytestmark = pytest.mark.anyio

REGISTRY = "fake-job"


class ExitingBackend(FakeBackend):
    """A backend whose job does not stay when the server exits (no JLABGW_KEEP_JOB)."""

    def keeps_kernels(self) -> bool:
        return False


def new_manager(settings: Settings, gateway: FakeGateway, keep: bool = True) -> SessionManager:
    backend = (FakeBackend if keep else ExitingBackend)(registry=REGISTRY, identity="job-1")
    return SessionManager(settings, backend, starter=FakeStarter(gateway))


def on_disk(settings: Settings) -> dict[str, dict[str, Any]]:
    path = settings.state_dir / "sessions" / REGISTRY
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {r["session_id"]: r for r in data["sessions"]}


async def written(settings: Settings, check: Callable[[dict[str, dict[str, Any]]], bool]) -> None:
    """Wait for the registry's writer thread to put what ``check`` expects on disk."""
    for _ in range(500):
        if check(on_disk(settings)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the registry never got there: {on_disk(settings)}")


@pytest.mark.parametrize("keep", [True, False], ids=["B-keeps-job", "B-exits"])
async def test_a_live_owners_sessions_stay_its_own(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    child: subprocess.Popen[bytes],
    keep: bool,
) -> None:
    settings, gateway = settings_for(tmp_path), FakeGateway()
    a = new_manager(settings, gateway)  # owner: this test process, alive
    await a.ready()
    sa = (await a.start_new("a"))["session_id"]
    await a.execute(sa, "= 1")
    sb = (await a.start_new("b"))["session_id"]
    await written(settings, lambda d: {sa, sb} <= set(d))
    mine = registry_module.this_owner()

    # server B: another live process
    monkeypatch.setattr(registry_module, "this_owner", lambda: owner_of(child.pid))
    b = new_manager(settings, gateway, keep=keep)
    try:
        await b.ready()
        assert b.list() == []  # A's sessions are not B's
        with pytest.raises(UnknownSessionError):
            b.get(sa)
        sc = (await b.start_new("c"))["session_id"]
        await written(settings, lambda d: sc in d)
        records = on_disk(settings)
        assert set(records) == {sa, sb, sc}  # B's write kept A's records
        assert records[sa]["owner"] == records[sb]["owner"] == mine
        assert records[sc]["owner"] == owner_of(child.pid)
    finally:
        await b.aclose()
    records = on_disk(settings)
    assert records[sa]["owner"] == records[sb]["owner"] == mine  # still A's after B left
    if keep:  # B handed its session over: no owner, for the next server
        assert (records[sc]["owner"], records[sc]["handed_over"]) == (None, True)
    else:  # B shut its session down
        assert set(records) == {sa, sb}
    try:
        result = await a.execute(sa, "= 2")  # A's kernel was not touched
        assert (result.execution_count, outputs_to_text(result.outputs)) == (2, "2\n")
    finally:
        await a.aclose()


@pytest.mark.parametrize("how", ["dead", "recycled"])
async def test_a_dead_owners_sessions_are_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    settings, gateway = settings_for(tmp_path), FakeGateway()
    if how == "dead":  # a process that ran, and was reaped: its pid runs nothing
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        dead = owner_of(proc.pid)
        proc.kill()
        proc.wait()
    else:  # this process's pid, but a start time that is not ours: the pid was reused
        dead = {"host": socket.gethostname(), "process": f"{os.getpid()}:1"}
    monkeypatch.setattr(registry_module, "this_owner", lambda: dead)
    a = new_manager(settings, gateway)
    await a.ready()
    sa = (await a.start_new("a"))["session_id"]
    await a.execute(sa, "= 1")
    await written(settings, lambda d: sa in d and d[sa]["owner"] == dead)
    # A "died" without handing over (its kernel goes on); server C is this process
    monkeypatch.undo()
    c = new_manager(settings, gateway)
    try:
        await c.ready()
        assert [s.session_id for s in c.list()] == [sa]
        result = await c.execute(sa, "= 2")
        assert (result.execution_count, outputs_to_text(result.outputs)) == (2, "2\n")
        await written(settings, lambda d: d[sa]["owner"] == registry_module.this_owner())
    finally:
        await c.aclose()
        a.writer.close()  # A stays "dead": its kernels are C's


async def test_a_handed_over_session_is_marked_and_taken_back(tmp_path: Path) -> None:
    settings, gateway = settings_for(tmp_path), FakeGateway()
    a = new_manager(settings, gateway)
    await a.ready()
    sa = (await a.start_new("a"))["session_id"]
    await a.aclose()  # JLABGW_KEEP_JOB: handed over
    assert (on_disk(settings)[sa]["owner"], on_disk(settings)[sa]["handed_over"]) == (None, True)
    b = new_manager(settings, gateway)  # the same process: still, only because handed over
    try:
        await b.ready()
        assert [s.session_id for s in b.list()] == [sa]
        await written(settings, lambda d: d[sa]["owner"] == registry_module.this_owner())
        assert "handed_over" not in on_disk(settings)[sa]
    finally:
        await b.aclose()
