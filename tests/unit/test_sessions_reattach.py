"""Reattach (sessions.reattach): the registry one manager leaves on a kept job is taken back
by the next, over a fake KernelStarter on the same fake gateway."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import nbformat
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


# -- a registry is a file: what it names is checked before it is followed (issue 13) ----------


class CountingStarter(FakeStarter):
    """A FakeStarter that remembers which kernels it was asked to reach."""

    def __init__(self, gateway: FakeGateway) -> None:
        super().__init__(gateway)
        self.connected: list[str] = []

    async def connect(self, kernel_id: str, ws_session_id: str, lane: str = "") -> Any:
        self.connected.append(kernel_id)
        return await super().connect(kernel_id, ws_session_id, lane)


def tamper(settings: Settings, sid: str, **changes: Any) -> None:
    """Edit one record of the registry file, as someone with access to it could."""
    path = settings.state_dir / "sessions" / REGISTRY
    data = json.loads(path.read_text())
    for record in data["sessions"]:
        if record["session_id"] == sid:
            record.update(changes)
    path.write_text(json.dumps(data))


async def take_back_tampered(
    settings: Settings, gateway: FakeGateway, ids: dict[str, str], caplog: Any
) -> tuple[SessionManager, CountingStarter]:
    starter = CountingStarter(gateway)
    manager = SessionManager(
        settings, FakeBackend(registry=REGISTRY, identity="job-1"), starter=starter
    )
    with caplog.at_level(logging.WARNING, logger="jlabgw.sessions.reattach"):
        await manager.ready()
    # the untouched record is taken back as before
    assert [s.session_id for s in manager.list()] == [ids["a"]]
    return manager, starter


def skipped_warning(caplog: Any, settings: Settings, why: str) -> None:
    registry_file = str(settings.state_dir / "sessions" / REGISTRY)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(registry_file in m and re.search(why, m) for m in messages), messages


@pytest.mark.parametrize("where", ["outside", "symlink"])
async def test_a_notebook_path_outside_the_notebook_dir_is_never_opened(
    tmp_path: Path, caplog: Any, where: str
) -> None:
    settings, gateway = settings_for(tmp_path), FakeGateway()
    ids = await first_server(settings, gateway)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "victim.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), victim)
    before = victim.read_bytes()
    path = str(victim)
    if where == "symlink":
        link = settings.notebook_dir / "link.ipynb"
        link.symlink_to(victim)
        path = str(link)
    tamper(settings, ids["b"], notebook_path=path)
    manager, starter = await take_back_tampered(settings, gateway, ids, caplog)
    try:
        skipped_warning(caplog, settings, "outside the notebook directory")
        assert starter.connected == [ids["ka"]]  # b's kernel was not even asked for
        with pytest.raises(SessionLostError, match="its record in the session registry"):
            manager.get(ids["b"])
        await manager.execute(ids["a"], "= 3")
    finally:
        await manager.aclose()
    assert victim.read_bytes() == before
    # the bad record leaves the registry with this server's write
    assert [s["session_id"] for s in registry(settings)["sessions"]] == [ids["a"]]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"kernel_id": "../../api/kernels"}, "kernel_id .* is not a kernel id"),
        ({"kernel_id": 7}, "kernel_id .* is not a kernel id"),
        ({"ws_session_id": "x&jlabgw_last=y"}, "ws_session_id .* is not a WebSocket session id"),
        ({"notebook_path": "b.txt"}, "not a .ipynb file"),
        ({"notebook_path": ["b.ipynb"]}, "notebook_path is not a string"),
        ({"executions": "many"}, "executions .* is not a count"),
        ({"running": {"msg_id": "m_1", "cell_index": -1}}, "running.cell_index"),
        ({"running": {"msg_id": "a b", "cell_index": 0}}, "msg_id .* is not a message id"),
        ({"running": "yes"}, "running is not an object"),
    ],
)
async def test_a_record_with_a_field_jlabgw_never_writes_is_skipped(
    tmp_path: Path, caplog: Any, changes: dict[str, Any], why: str
) -> None:
    settings, gateway = settings_for(tmp_path), FakeGateway()
    ids = await first_server(settings, gateway)
    tamper(settings, ids["b"], **changes)
    manager, starter = await take_back_tampered(settings, gateway, ids, caplog)
    try:
        skipped_warning(caplog, settings, why)
        assert starter.connected == [ids["ka"]]
    finally:
        await manager.aclose()


async def test_a_session_id_of_another_shape_is_skipped_and_not_remembered(
    tmp_path: Path, caplog: Any
) -> None:
    settings, gateway = settings_for(tmp_path), FakeGateway()
    ids = await first_server(settings, gateway)
    tamper(settings, ids["b"], session_id="../../" + ids["b"])
    manager, starter = await take_back_tampered(settings, gateway, ids, caplog)
    try:
        skipped_warning(caplog, settings, "session_id .* is not a jlabgw session id")
        assert starter.connected == [ids["ka"]]
        with pytest.raises(UnknownSessionError):
            manager.get("../../" + ids["b"])
    finally:
        await manager.aclose()


def test_check_record_resolves_the_notebook_inside_the_dir(tmp_path: Path) -> None:
    from jlabgw.sessions.reattach import BadRecordError, check_record

    record = {
        "session_id": "0123456789ab",
        "kernel_id": "12345678-1234-1234-1234-123456789abc",
        "ws_session_id": "0123456789abcdef0123456789abcdef",
        "notebook_path": str(tmp_path / "sub" / ".." / "x.ipynb"),
        "running": {"execution_id": "abcd1234", "msg_id": "s_1_2", "cell_index": 0},
    }
    assert check_record(record, tmp_path) == tmp_path.resolve() / "x.ipynb"
    with pytest.raises(BadRecordError, match="not a JSON object"):
        check_record([record], tmp_path)
    with pytest.raises(BadRecordError, match="kernel id"):
        check_record({**record, "kernel_id": record["kernel_id"].upper()}, tmp_path)
