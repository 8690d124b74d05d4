"""The node's files and commands (cluster.files.SSHNode) against a real OpenSSH sshd on
127.0.0.1 as the non-root test user: a file bigger than a block streamed both ways, an
exclusive create, a rename that never overwrites unless asked, symbolic links resolved as
the node sees them, the kernel's directory from the node's /proc, Python run after the site
set-up, and nothing done on a connection once it is closed."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlabgw.cluster.files import SSHNode
from jlabgw.cluster.ssh.connection import SSHConnection
from jlabgw.errors import SSHError
from tests.helpers import make_settings
from tests.sshd import SSHDServer

pytestmark = pytest.mark.integration

BLOCK = 8 * 2**20
PYTHON = "/usr/bin/python3"  # the test user's: the venv here is root's


@pytest.fixture
def node(tmp_path: Path, sshd: SSHDServer) -> Iterator[SSHNode]:
    settings = make_settings(
        tmp_path,
        ssh_key=str(sshd.client_key),
        known_hosts=str(sshd.known_hosts),
        ssh_config=str(tmp_path / "no-ssh-config"),
        ssh_timeout="5",
    )
    conn = SSHConnection(f"{sshd.user}@{sshd.host}:{sshd.port}", settings)
    conn.transport  # noqa: B018 - connect now
    yield SSHNode(conn, remote_setup="export JLABGW_SETUP_RAN=yes")
    conn.close()


@pytest.fixture
def folder(sshd: SSHDServer) -> Iterator[Path]:
    """A folder of the test user's, in its home."""
    account = pwd.getpwnam(sshd.user)
    path = Path(account.pw_dir) / f"jlabgw-node-files-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    os.chown(path, account.pw_uid, account.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_big_file_both_ways_and_no_overwrite(node: SSHNode, folder: Path) -> None:
    data = os.urandom(2 * BLOCK + 12345)
    files = node.files()
    try:
        assert files.home() == str(folder.parent)
        target = str(folder / "big.bin")
        writer = files.create(target + ".part")
        for offset in range(0, len(data), BLOCK):
            writer.write(data[offset : offset + BLOCK])
        assert writer.finish() == len(data)
        writer.close()
        files.publish(target + ".part", target, overwrite=False)
        assert hashlib.sha256((folder / "big.bin").read_bytes()).digest() == (
            hashlib.sha256(data).digest()
        )
        found = files.stat(target)
        assert found is not None
        assert (found.size, found.kind) == (len(data), "file")
        reader = files.open_read(target)
        back = b"".join(reader.read(o, BLOCK) for o in range(0, len(data), BLOCK))
        assert reader.read(len(data), BLOCK) == b""
        assert reader.size() == len(data)
        reader.close()
        assert back == data

        with pytest.raises(SSHError, match="cannot create"):
            files.create(target)  # exclusive: never an existing file
        (folder / "other.part").write_bytes(b"other")
        with pytest.raises(FileExistsError):
            files.publish(str(folder / "other.part"), target, overwrite=False)
        assert (folder / "big.bin").stat().st_size == len(data)
        files.publish(str(folder / "other.part"), target, overwrite=True)
        assert (folder / "big.bin").read_bytes() == b"other"
        files.remove(str(folder / "missing"))  # never raises
        assert files.stat(str(folder / "missing")) is None
        assert files.stat(str(folder)).kind == "dir"  # type: ignore[union-attr]
    finally:
        files.close()


def test_paths_resolve_as_the_node_sees_them(node: SSHNode, folder: Path, sshd: SSHDServer) -> None:
    (folder / "to-etc").symlink_to("/etc")
    (folder / "real").mkdir()
    account = pwd.getpwnam(sshd.user)
    os.chown(folder / "real", account.pw_uid, account.pw_gid)
    (folder / "alias").symlink_to(folder / "real")
    files = node.files()
    try:
        assert files.resolve(str(folder / "to-etc" / "new" / "x")) == "/etc/new/x"
        assert files.resolve(str(folder / "alias" / "a" / "b")) == str(folder / "real" / "a" / "b")
        assert files.resolve(str(folder / "real" / ".." / "x")) == str(folder / "x")
        files.makedirs(str(folder / "alias" / "m" / "n"))
        assert (folder / "real" / "m" / "n").is_dir()
        with pytest.raises(SSHError, match="cannot create"):
            files.makedirs("/etc/jlabgw-not-yours/x")
    finally:
        files.close()


def test_commands_on_the_node(node: SSHNode, tmp_path: Path, sshd: SSHDServer) -> None:
    assert node.run_python("import os; print(os.environ['JLABGW_SETUP_RAN'])", 60) == "yes\n"
    # a process of the node's user standing for a kernel, in a folder of its own
    account = pwd.getpwnam(sshd.user)
    kernel_id = str(uuid.uuid4())
    cwd = Path(account.pw_dir)
    proc = subprocess.Popen(
        [PYTHON, "-c", "import time; time.sleep(60)", f"kernel-{kernel_id}.json"],
        cwd=cwd,
        user=account.pw_uid,
        group=account.pw_gid,
    )
    try:
        assert node.kernel_cwd(kernel_id) == str(cwd)
        assert node.kernel_cwd(str(uuid.uuid4())) is None
        assert node.kernel_cwd("$(id)") is None
    finally:
        proc.kill()
        proc.wait()


def test_nothing_on_a_closed_connection(node: SSHNode) -> None:
    node._conn.close()
    with pytest.raises(SSHError, match="is closed"):
        node.files()
    with pytest.raises(SSHError, match="is closed"):
        node.run_python("print(1)", 10)
    assert node.kernel_cwd(str(uuid.uuid4())) is None
    assert not node._conn.connected  # not re-opened behind the tunnel's back
