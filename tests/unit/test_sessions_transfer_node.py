"""File transfers to and from a batch job's node (sessions.transfer over cluster.files.Node),
with a fake node at that one boundary: its files are a folder here, its failures injected.
Where a relative remote path goes (the kernel's working directory on the node), the allowed
places, the cap (before and during a copy), no overwrite unless asked, and no file under the
final name, nor a temporary one, after a failure or a cancellation on either side."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jlabgw.cluster.files import Node, NodeFiles, NodeReader, NodeStat, NodeWriter
from jlabgw.errors import KernelError, NotebookError, SessionLostError, SSHError
from jlabgw.progress import no_progress
from jlabgw.sessions import transfer
from jlabgw.sessions.manager import SessionManager
from tests.session_fakes import FakeBackend, FakeGateway, FakeStarter, settings_for

pytestmark = pytest.mark.anyio

CAP = 10_000


class FakeReader(NodeReader):
    def __init__(self, node: FakeNode, path: str) -> None:
        self._node = node
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()

    def read(self, offset: int, size: int) -> bytes:
        self._node.reads += 1
        if self._node.on_read is not None:
            self._node.on_read(self._node.reads)
        self._fh.seek(offset)
        return self._fh.read(size)

    def size(self) -> int:
        return os.fstat(self._fh.fileno()).st_size

    def close(self) -> None:
        self._fh.close()


class FakeWriter(NodeWriter):
    def __init__(self, node: FakeNode, path: str) -> None:
        self._node = node
        self._fh = open(path, "xb")  # noqa: SIM115 - closed by close()

    def write(self, data: bytes) -> None:
        self._node.writes += 1
        if self._node.fail_write == self._node.writes:
            raise SSHError("the connection to node1 dropped")
        self._fh.write(data)

    def finish(self) -> int:
        self._fh.flush()
        return os.fstat(self._fh.fileno()).st_size

    def close(self) -> None:
        self._fh.close()


class FakeFiles(NodeFiles):
    """The node's filesystem is ``root`` here; its paths are this machine's."""

    def __init__(self, node: FakeNode) -> None:
        self.where = node.where
        self._node = node

    def home(self) -> str:
        return str(self._node.home)

    def resolve(self, path: str) -> str:
        return str(Path(path).resolve())

    def stat(self, path: str) -> NodeStat | None:
        p = Path(path)
        if not p.exists():
            return None
        return NodeStat(p.stat().st_size, "file" if p.is_file() else "dir" if p.is_dir() else "x")

    def makedirs(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def open_read(self, path: str) -> NodeReader:
        return FakeReader(self._node, path)

    def create(self, path: str) -> NodeWriter:
        return FakeWriter(self._node, path)

    def publish(self, partial: str, target: str, overwrite: bool) -> None:
        if self._node.on_publish is not None:
            self._node.on_publish(target)
        if overwrite:
            os.replace(partial, target)
        else:
            os.link(partial, target)  # FileExistsError if taken
            os.unlink(partial)

    def remove(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def close(self) -> None:
        self._node.closed += 1


class FakeNode(Node):
    where = "node1"

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.work = root / "work"
        self.scratch = root / "scratch"
        for folder in (self.home, self.work, self.scratch):
            folder.mkdir(parents=True)
        self.transfer_root = str(self.scratch)
        self.cwd: str | None = str(self.work)
        self.writes = 0
        self.reads = 0
        self.fail_write = 0  # the write that fails (0: none)
        self.on_read = None  # called with the read's number, before it
        self.on_publish = None  # called with the target, before the rename
        self.closed = 0
        self.opened = 0

    def files(self) -> NodeFiles:
        self.opened += 1
        return FakeFiles(self)

    def kernel_cwd(self, kernel_id: str) -> str | None:
        return self.cwd

    def run_python(self, code: str, timeout: float) -> str:
        raise SSHError("no Python here")


class NodeBackend(FakeBackend):
    """A batch-like backend whose node is ``node``."""

    name = "slurm"

    def __init__(self, node: Node | None) -> None:
        super().__init__()
        self._node = node

    def node(self) -> Node | None:
        return self._node


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path / "node")


@pytest.fixture
async def manager(
    tmp_path: Path, starter: FakeStarter, node: FakeNode
) -> AsyncIterator[SessionManager]:
    settings = settings_for(tmp_path, transfer_max_bytes=str(CAP))
    m = SessionManager(settings, NodeBackend(node), starter=starter)
    yield m
    await m.aclose()


@pytest.fixture
async def sid(manager: SessionManager) -> str:
    return str((await manager.start_new("files"))["session_id"])


def notebooks(manager: SessionManager) -> Path:
    return manager.settings.notebook_dir


def local_file(manager: SessionManager, name: str, data: bytes) -> Path:
    path = notebooks(manager) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def parts(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".jlabgw-part-" in p.name]


async def test_upload_goes_to_the_kernels_working_directory_and_back(
    manager: SessionManager, sid: str, node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "_CHUNK", 1000)
    data = os.urandom(4500)
    local_file(manager, "in.bin", data)
    seen: list[tuple[float, float | None]] = []

    async def progress(done: float, total: float | None, message: str) -> None:
        seen.append((done, total))

    up = await manager.transfers.upload(manager.get(sid), "in.bin", "sub/in.bin", progress)
    assert up["to"] == str(node.work / "sub" / "in.bin")
    assert (up["bytes"], up["node"]) == (4500, "node1")
    assert (node.work / "sub" / "in.bin").read_bytes() == data
    assert seen == [(1000, 4500), (2000, 4500), (3000, 4500), (4000, 4500), (4500, 4500)]

    down = await manager.transfers.download(
        manager.get(sid), "sub/in.bin", "back/in.bin", no_progress
    )
    assert down["from"] == str(node.work / "sub" / "in.bin")
    assert (notebooks(manager) / "back" / "in.bin").read_bytes() == data
    assert node.reads == 5  # in blocks, never the whole file at once
    assert node.opened == node.closed == 2
    assert parts(node.work) == parts(notebooks(manager)) == []


async def test_no_overwrite_unless_asked(manager: SessionManager, sid: str, node: FakeNode) -> None:
    local_file(manager, "a.txt", b"new")
    (node.work / "a.txt").write_bytes(b"old")
    session = manager.get(sid)
    with pytest.raises(NotebookError, match=r"a\.txt exists on node1; pass overwrite=true"):
        await manager.transfers.upload(session, "a.txt", "a.txt", no_progress)
    assert (node.work / "a.txt").read_bytes() == b"old"
    await manager.transfers.upload(session, "a.txt", "a.txt", no_progress, overwrite=True)
    assert (node.work / "a.txt").read_bytes() == b"new"
    with pytest.raises(NotebookError, match="exists; pass overwrite=true"):
        await manager.transfers.download(session, "a.txt", "a.txt", no_progress)
    (node.work / "d").mkdir()
    with pytest.raises(NotebookError, match="is a directory"):
        await manager.transfers.upload(session, "a.txt", "d", no_progress, overwrite=True)


async def test_a_name_taken_during_the_upload_is_not_overwritten(
    manager: SessionManager, sid: str, node: FakeNode
) -> None:
    local_file(manager, "a.txt", b"mine")
    target = node.work / "a.txt"
    node.on_publish = lambda path: target.write_bytes(b"someone else's")
    with pytest.raises(NotebookError, match="exists on node1; pass overwrite=true"):
        await manager.transfers.upload(manager.get(sid), "a.txt", "a.txt", no_progress)
    assert target.read_bytes() == b"someone else's"
    assert parts(node.work) == []


async def test_the_allowed_places_on_the_node(
    manager: SessionManager, sid: str, node: FakeNode
) -> None:
    local_file(manager, "a.txt", b"x")
    session = manager.get(sid)
    for remote, where in (
        ("~/h/a.txt", node.home / "h" / "a.txt"),
        (str(node.scratch / "s" / "a.txt"), node.scratch / "s" / "a.txt"),
        (str(node.work / "w.txt"), node.work / "w.txt"),
    ):
        await manager.transfers.upload(session, "a.txt", remote, no_progress)
        assert where.read_bytes() == b"x"
    (node.work / "escape").symlink_to("/etc")
    for remote in ("/etc/jlabgw-x", "../../x", "escape/x", ".", "~", "~root/x"):
        with pytest.raises(NotebookError, match="outside the places files may go"):
            await manager.transfers.upload(session, "a.txt", remote, no_progress)
    for remote in ("", "a\x00b"):
        with pytest.raises(NotebookError, match="non-empty path without NUL"):
            await manager.transfers.upload(session, "a.txt", remote, no_progress)
    with pytest.raises(NotebookError, match="outside the notebook directory"):
        await manager.transfers.upload(session, "../x", "a.txt", no_progress)
    with pytest.raises(NotebookError, match="no file at"):
        await manager.transfers.download(session, "missing.txt", "m.txt", no_progress)
    with pytest.raises(NotebookError, match="no file at"):
        await manager.transfers.download(session, str(node.scratch / "s"), "m.txt", no_progress)


async def test_without_the_kernels_directory_only_absolute_paths(
    manager: SessionManager, sid: str, node: FakeNode
) -> None:
    node.cwd = None  # the kernel's /proc entry not found (gone, another user's)
    local_file(manager, "a.txt", b"x")
    session = manager.get(sid)
    with pytest.raises(KernelError, match="cannot find the working directory"):
        await manager.transfers.upload(session, "a.txt", "a.txt", no_progress)
    await manager.transfers.upload(session, "a.txt", "~/a.txt", no_progress)
    assert (node.home / "a.txt").read_bytes() == b"x"


async def test_the_cap_before_and_during_the_copy(
    manager: SessionManager, sid: str, node: FakeNode
) -> None:
    session = manager.get(sid)
    local_file(manager, "big.bin", b"\0" * (CAP + 1))
    with pytest.raises(NotebookError, match="over the transfer cap of 10,000 bytes"):
        await manager.transfers.upload(session, "big.bin", "big.bin", no_progress)
    (node.work / "big.bin").write_bytes(b"\0" * (CAP + 1))
    with pytest.raises(NotebookError, match="over the transfer cap"):
        await manager.transfers.download(session, "big.bin", "big.bin", no_progress)
    assert node.writes == node.reads == 0  # refused before a byte moved

    grows = local_file(manager, "grows.bin", b"\0" * 100)

    async def grow(done: float, total: float | None, message: str) -> None:
        with grows.open("ab") as f:
            f.write(b"\0" * CAP)

    with pytest.raises(NotebookError, match="grew past the transfer cap"):
        await manager.transfers.upload(session, "grows.bin", "grows.bin", grow)
    assert not (node.work / "grows.bin").exists()
    assert parts(node.work) == []


@pytest.mark.parametrize("how", ["node", "cancel"])
async def test_an_upload_stopped_half_way_leaves_nothing_on_the_node(
    manager: SessionManager,
    sid: str,
    node: FakeNode,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    monkeypatch.setattr(transfer, "_CHUNK", 10)
    local_file(manager, "a.bin", b"0123456789" * 10)
    if how == "node":
        node.fail_write = 3
        expected: type[BaseException] = NotebookError
        progress = no_progress
    else:
        expected = asyncio.CancelledError

        async def progress(done: float, total: float | None, message: str) -> None:
            if done >= 30:
                raise asyncio.CancelledError

    with pytest.raises(expected):
        await manager.transfers.upload(manager.get(sid), "a.bin", "out/a.bin", progress)
    assert not (node.work / "out" / "a.bin").exists()
    assert list((node.work / "out").iterdir()) == []
    assert node.opened == node.closed == 1


@pytest.mark.parametrize("how", ["shrinks", "fails", "cancel"])
async def test_a_download_stopped_half_way_leaves_nothing_here(
    manager: SessionManager,
    sid: str,
    node: FakeNode,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    monkeypatch.setattr(transfer, "_CHUNK", 10)
    source = node.work / "r.bin"
    source.write_bytes(b"0123456789" * 10)
    progress = no_progress
    if how == "shrinks":
        node.on_read = lambda n: n == 3 and source.write_bytes(b"short")  # type: ignore[assignment,func-returns-value]
        expected: type[BaseException] = NotebookError
    elif how == "fails":

        def fail(n: int) -> None:
            if n == 3:
                raise SSHError("the connection to node1 dropped")

        node.on_read = fail  # type: ignore[assignment]
        expected = NotebookError
    else:
        expected = asyncio.CancelledError

        async def progress(done: float, total: float | None, message: str) -> None:
            if done >= 30:
                raise asyncio.CancelledError

    with pytest.raises(expected):
        await manager.transfers.download(manager.get(sid), "r.bin", "res/r.bin", progress)
    folder = notebooks(manager) / "res"
    assert list(folder.iterdir()) == []
    assert node.opened == node.closed == 1


async def test_a_session_whose_job_is_gone_is_told_so_and_no_job_started(
    manager: SessionManager, sid: str, node: FakeNode, gateway: FakeGateway
) -> None:
    local_file(manager, "a.txt", b"x")
    gateway.lost_reason = "batch job 7 is no longer running (TIMEOUT)"
    with pytest.raises(SessionLostError, match="batch job 7 is no longer running"):
        await manager.transfers.upload(manager.get(sid), "a.txt", "a.txt", no_progress)
    assert node.opened == 0
