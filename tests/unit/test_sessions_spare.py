"""The spare kernel started ahead (sessions.kernels.SparePool), over a fake KernelStarter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jlabgw.sessions.manager import SessionManager
from tests.session_fakes import FakeBackend, FakeGateway, FakeStarter, settings_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def manager(tmp_path: Path, starter: FakeStarter) -> AsyncIterator[SessionManager]:
    settings = settings_for(tmp_path, spare_kernel="true")
    m = SessionManager(settings, FakeBackend(), starter=starter)
    yield m
    await m.aclose()


async def spare_kernel(manager: SessionManager) -> str:
    """The kernel id of the spare, once it has started."""
    assert manager._spare is not None
    return (await asyncio.wait_for(asyncio.shield(manager._spare), timeout=5)).conn.kernel_id


async def test_a_new_session_takes_the_spare_and_a_new_one_starts_behind_it(
    manager: SessionManager, starter: FakeStarter
) -> None:
    assert manager.status().spare_kernel is None
    manager.prepare_spare()
    spare = manager._spare
    ready = await spare_kernel(manager)
    assert manager.status().spare_kernel == "ready"
    manager.prepare_spare()  # one is there: no second spare
    assert manager._spare is spare

    info = await manager.start_new("takes the spare")
    assert info["kernel_id"] == ready
    result = await manager.execute(info["session_id"], "= 42")
    assert result.outputs[0].data["text/plain"] == "42"
    assert manager._spare is not None  # the next one
    assert manager._spare is not spare
    behind = await spare_kernel(manager)
    assert behind != ready
    assert starter.started == [ready, behind]


async def test_another_kernel_name_does_not_take_the_spare(
    manager: SessionManager, starter: FakeStarter
) -> None:
    manager.prepare_spare()
    ready = await spare_kernel(manager)
    info = await manager.start_new("other kernel", kernel_name="ir")
    assert info["kernel_id"] != ready
    assert await spare_kernel(manager) == ready  # still there for the next default session


async def test_a_dead_spare_is_discarded_and_a_new_kernel_started(
    manager: SessionManager, gateway: FakeGateway, starter: FakeStarter
) -> None:
    manager.prepare_spare()
    dead = await spare_kernel(manager)
    gateway.kill(dead)  # culled while waiting: kernel_info fails
    info = await manager.start_new("not the dead one")
    assert info["kernel_id"] != dead
    assert info["kernel_id"] in gateway.kernels
    assert starter.discarded == [dead]
    result = await manager.execute(info["session_id"], "= fresh")
    assert result.status == "ok"


async def test_a_caller_cancelled_while_claiming_does_not_lose_the_spare(
    manager: SessionManager, starter: FakeStarter
) -> None:
    starter.hold = asyncio.Event()
    manager.prepare_spare()
    spare = manager._spare
    assert manager.status().spare_kernel == "starting"
    caller = asyncio.create_task(manager.start_new("gives up"))
    await asyncio.sleep(0.05)
    assert manager._spare is None  # the caller has claimed it and waits for its start
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert manager._spare is spare  # given back, its start not cancelled
    assert not spare.cancelled()
    starter.hold.set()
    ready = await spare_kernel(manager)
    info = await manager.start_new("takes it after all")
    assert info["kernel_id"] == ready
    assert starter.started[0] == ready
    assert starter.discarded == []
    assert [s.session_id for s in manager.list()] == [info["session_id"]]


async def test_aclose_discards_the_spare(tmp_path: Path, starter: FakeStarter) -> None:
    settings = settings_for(tmp_path, spare_kernel="true")
    manager = SessionManager(settings, FakeBackend(), starter=starter)
    manager.prepare_spare()
    ready = await spare_kernel(manager)
    await manager.aclose()
    assert starter.discarded == [ready]
    manager.prepare_spare()  # closed: no new spare
    assert manager._spare is None
