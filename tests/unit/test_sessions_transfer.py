"""File transfers (sessions.transfer): a copy that fails or is cancelled half-way leaves
neither a partial file under the final name nor its temporary file; the file taken
meanwhile is not overwritten; a backend with no way to its node says so (a batch job's node:
test_sessions_transfer_node.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from jlabgw.errors import BackendError, NotebookError
from jlabgw.progress import no_progress
from jlabgw.sessions import transfer
from jlabgw.sessions.manager import SessionManager

pytestmark = pytest.mark.anyio


def source(tmp_path: Path) -> Path:
    path = tmp_path / "src.bin"
    path.write_bytes(b"0123456789" * 10)
    return path


@pytest.mark.parametrize("failure", [OSError("disk gone"), asyncio.CancelledError()])
async def test_a_copy_stopped_half_way_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    monkeypatch.setattr(transfer, "_CHUNK", 10)
    target = tmp_path / "out" / "dst.bin"
    calls = 0

    async def progress(done: float, total: float | None, message: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise failure

    expected = NotebookError if isinstance(failure, OSError) else asyncio.CancelledError
    with pytest.raises(expected):
        await transfer._copy(source(tmp_path), target, 1000, False, progress)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


async def test_a_name_taken_during_the_copy_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "dst.bin"

    async def progress(done: float, total: float | None, message: str) -> None:
        target.write_text("someone else's")

    with pytest.raises(NotebookError, match="exists; pass overwrite=true"):
        await transfer._copy(source(tmp_path), target, 1000, False, progress)
    assert target.read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]


async def test_a_backend_without_a_way_to_the_node_is_refused(manager: SessionManager) -> None:
    sid = (await manager.start_new("files"))["session_id"]
    with pytest.raises(BackendError, match="no way to the kernel's node for files"):
        await manager.transfers.upload(manager.get(sid), "a", "b", no_progress)


async def test_a_kernel_working_in_the_root_dir_confines_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An MCP client that starts the server (so the local kernels) in / must not make every
    absolute path fair game: / is no root files may go under."""
    from tests.session_fakes import FakeBackend, FakeGateway, FakeStarter, settings_for

    class HereBackend(FakeBackend):
        name = "local"  # the copy path of this machine

    settings = settings_for(tmp_path)
    manager = SessionManager(settings, HereBackend(), starter=FakeStarter(FakeGateway()))
    monkeypatch.setattr(transfer, "kernel_cwd", lambda kernel_id: "/")
    settings.notebook_dir.mkdir(parents=True, exist_ok=True)
    (settings.notebook_dir / "data.csv").write_text("1,2\n")
    try:
        sid = (await manager.start_new("files"))["session_id"]
        for remote in ("/etc/jlabgw-test-never", "jlabgw-test-never"):
            with pytest.raises(NotebookError, match="outside the places files may go"):
                await manager.transfers.upload(manager.get(sid), "data.csv", remote, no_progress)
        assert not Path("/etc/jlabgw-test-never").exists()
    finally:
        await manager.aclose()
