"""A notebook dir that fills up or turns read-only mid-session (fault 8 of issue 6).

Real kernels on a real gateway; the notebook dir is a tiny tmpfs mounted for the test, so the
errors are the kernel's own ENOSPC and EROFS, not a fake. Mounting needs root (CI runs as
root); elsewhere these tests skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nbformat
import pytest

from jlabgw.cluster.backends import LocalBackend
from jlabgw.errors import NotebookError
from jlabgw.notebook.text import outputs_to_text
from jlabgw.sessions.manager import SessionManager
from tests.helpers import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

FS_BYTES = 512 * 1024


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs of our own, unmounted afterwards."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = _mount("-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0755", "tmpfs", str(mount_point))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


@pytest.fixture
async def manager(
    tmp_path: Path, small_fs: Path, shared_backend: LocalBackend
) -> AsyncIterator[SessionManager]:
    m = SessionManager(make_settings(tmp_path, notebook_dir=str(small_fs)), shared_backend)
    yield m
    await m.aclose()


def fill(directory: Path) -> Path:
    """Take every free byte of ``directory``'s file system."""
    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(FS_BYTES // 512 + 1):  # bounded: the file system holds fewer blocks
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


async def until_written(manager: SessionManager, sid: str, timeout: float = 20) -> None:
    """Wait (bounded) for the writer's retry to put the notebook on disk."""
    doc = manager.get(sid).doc
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while doc.write_error is not None or doc.written_version < doc.version:
        assert loop.time() < deadline, f"not written within {timeout} s: {doc.write_error}"
        await asyncio.sleep(0.1)


async def test_disk_full_keeps_the_kernel_and_the_old_file_then_catches_up(
    manager: SessionManager, small_fs: Path
) -> None:
    info = await manager.start_new("disk full")
    sid, path = info["session_id"], Path(info["notebook_path"])
    await manager.execute(sid, "x = 41")
    manager.writer.flush()
    before = path.read_bytes()
    filler = fill(small_fs)

    big = await manager.execute(sid, "print('y' * 300_000)")
    assert big.status == "ok"  # the cell itself is fine: only the notebook cannot be written
    with pytest.raises(NotebookError, match="No space left on device"):
        manager.writer.flush()
    described = manager.get(sid).describe().notebook_write_error
    assert "(disk full)" in described
    assert "The kernel and its state are fine" in described

    after = await manager.execute(sid, "x + 1")
    assert outputs_to_text(after.outputs) == "42\n"  # kernel state kept, nothing re-run
    assert any("No space left on device" in w for w in after.warnings), after.warnings
    assert path.read_bytes() == before  # the old file, whole: no partial write
    assert json.loads(before)  # still valid JSON
    assert temp_files(small_fs) == []

    filler.unlink()  # space again: the retry writes everything without another change
    await until_written(manager, sid)
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert [c.source for c in nb.cells] == ["x = 41", "print('y' * 300_000)", "x + 1"]
    assert [c.execution_count for c in nb.cells] == [1, 2, 3]
    assert nb.cells[1].outputs[0].text == "y" * 300_000 + "\n"
    assert temp_files(small_fs) == []


async def test_read_only_notebook_dir_then_writable_again(
    manager: SessionManager, small_fs: Path
) -> None:
    info = await manager.start_new("read only")
    sid, path = info["session_id"], Path(info["notebook_path"])
    await manager.execute(sid, "x = 1")
    manager.writer.flush()
    assert _mount("-o", "remount,ro", str(small_fs)).returncode == 0
    try:
        await manager.execute(sid, "x += 1")
        with pytest.raises(NotebookError, match="Read-only file system"):
            manager.writer.flush()
        result = await manager.execute(sid, "x")
        assert outputs_to_text(result.outputs) == "2\n"
        assert any("Read-only file system" in w for w in result.warnings)
        # a new session cannot create its notebook: a clear error, and no kernel left behind
        kernels_before = len(await (await manager.gateway()).list_kernels())
        with pytest.raises(NotebookError, match="Read-only file system"):
            await manager.start_new("cannot create")
        assert len(await (await manager.gateway()).list_kernels()) <= kernels_before
        # shutting down now would lose the cells that only this server holds: refused
        with pytest.raises(NotebookError, match=r"not shutting down session .* kernel is kept"):
            await manager.shutdown(sid)
        kept = await manager.execute(sid, "x")
        assert outputs_to_text(kept.outputs) == "2\n"
    finally:
        assert _mount("-o", "remount,rw", str(small_fs)).returncode == 0
    await until_written(manager, sid)
    nb = nbformat.read(path, as_version=4)
    assert [c.source for c in nb.cells] == ["x = 1", "x += 1", "x", "x"]
    assert "shut down" in await manager.shutdown(sid)
    assert temp_files(small_fs) == []
