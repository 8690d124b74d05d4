"""The supervisor's checks of its own sockets (issue 13): who listens where 127.0.0.1:PORT
leads (/proc/net/tcp, tcp6 and a pid's fds, against real listeners in other processes), and
the private directory of the kernels' Unix sockets (path length, owner, mode)."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlabgw.node import job_supervisor as sup

LISTENER = """
import socket, sys
family = socket.AF_INET6 if sys.argv[1] == '::' else socket.AF_INET
s = socket.socket(family)
s.bind((sys.argv[1], 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def listener_in_another_process(host: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LISTENER, host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    """(pid, port) of a process listening on ``request.param`` (an address), port 0."""
    proc, port = listener_in_another_process(request.param)
    try:
        yield proc.pid, port
    finally:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_proc_net_addresses_are_in_host_word_order() -> None:
    expected = "0100007F" if sys.byteorder == "little" else "7F000001"
    assert sup.proc_net_address(socket.AF_INET, "127.0.0.1") == expected
    assert sup.proc_net_address(socket.AF_INET6, "::ffff:127.0.0.1").endswith(expected)


@pytest.mark.parametrize("listener", ["127.0.0.1", "0.0.0.0", "::"], indirect=True)
def test_a_listener_of_another_process_is_a_stranger_to_us(listener: tuple[int, int]) -> None:
    pid, port = listener
    if not sup.listeners(port):
        pytest.skip("no /proc/net/tcp6 entry for [::] here (IPv6 off?)")
    held = sup.listeners(port)
    assert len(held) == 1, held
    inode, uid = next(iter(held.items()))
    assert uid == os.getuid()
    assert inode in sup.socket_inodes(pid)
    # its owner is the only listener: nobody else is there
    assert sup.strangers(port, pid) == {}
    # seen from any other process (the supervisor, a gateway that lost the port), a stranger
    assert sup.strangers(port, os.getpid()) == {inode: os.getuid()}


def test_nobody_listening_is_not_a_stranger() -> None:
    with socket.socket() as sock:  # bound but not listening: no 0A entry
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert sup.strangers(port, os.getpid()) is None


def test_a_listener_on_another_loopback_address_does_not_count() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        sock.listen()
        assert sup.listeners(sock.getsockname()[1]) == {}


def test_kernel_sockets_go_to_a_private_dir_in_the_work_dir() -> None:
    work = Path(tempfile.mkdtemp(prefix="jlabgw-test-"))  # as short as a job's under /tmp
    try:
        path, apart = sup.kernel_socket_dir(sup.private_dir(work))
        assert (path, apart) == (work / "k", False)
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        assert len(os.fsencode(path / sup.KERNEL_SOCKET_NAME)) <= sup.SOCKET_PATH_MAX
    finally:
        shutil.rmtree(work)


def test_a_work_dir_too_deep_for_socket_paths_gets_a_short_private_dir(tmp_path: Path) -> None:
    work = tmp_path / ("d" * 60) / "w"
    work.mkdir(mode=0o700, parents=True)
    path, apart = sup.kernel_socket_dir(work)
    try:
        assert apart
        assert not path.is_relative_to(work)
        assert (work / "k").readlink() == path  # where it is, for a clean-up after a SIGKILL
        assert stat.S_IMODE(path.lstat().st_mode) == 0o700
        assert path.lstat().st_uid == os.getuid()
        longest = path / sup.KERNEL_SOCKET_NAME
        assert len(os.fsencode(longest)) <= sup.SOCKET_PATH_MAX
        with socket.socket(socket.AF_UNIX) as sock:  # the kernel's longest socket binds there
            sock.bind(str(longest))
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def test_no_short_dir_left_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / ("d" * 60) / "w"
    work.mkdir(mode=0o700, parents=True)
    monkeypatch.setattr(sup, "SOCKET_PATH_MAX", 20)
    with pytest.raises(SystemExit, match=r"longer than the 20 bytes.*TMPDIR"):
        sup.kernel_socket_dir(work)


def test_a_dir_others_may_enter_or_a_symlink_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o755)
    with pytest.raises(SystemExit, match="mode 755, not 700"):
        sup.private_dir(open_dir)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(private)
    with pytest.raises(SystemExit, match="not a directory of this user"):
        sup.private_dir(link)


def test_gateway_config_puts_kernels_on_ipc_unless_told_tcp() -> None:
    assert sup.gateway_config(1, "t")["KernelManager"] == {"transport": "ipc"}
    assert sup.gateway_config(1, "t", kernel_transport="tcp")["KernelManager"] == {
        "transport": "tcp"
    }


def test_the_gateway_gets_the_socket_dir_as_its_runtime_dir(tmp_path: Path) -> None:
    args = argparse.Namespace(
        connection_file=str(tmp_path / "c.json"),
        work_dir=str(tmp_path / "w"),
        gateway_log=None,
        connection_class=sup.NODELAY_CLASS,
        kernel_idle=0,
        job_idle=0,
        gateway_restarts=0,
        keep_umask=False,
        kernel_transport="ipc",
    )
    supervisor = sup.Supervisor(args)
    supervisor.socket_dir = tmp_path / "w" / "k"
    env = supervisor.gateway_env()
    assert env["JUPYTER_RUNTIME_DIR"] == str(tmp_path / "w" / "k")
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "w")


def test_a_kernel_transport_other_than_ipc_or_tcp_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JLABGW_KERNEL_TRANSPORT", "udp")
    argv = [f"--connection-file={tmp_path / 'c.json'}", f"--work-dir={tmp_path / 'w'}"]
    with pytest.raises(SystemExit):
        sup.main(argv)
    assert "JLABGW_KERNEL_TRANSPORT='udp': use ipc or tcp" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_the_local_backend_removes_a_socket_dir_left_outside_a_killed_supervisors_work_dir(
    tmp_path: Path,
) -> None:
    from jlabgw.cluster.backends.local import _remove_socket_dir

    work = tmp_path / ("d" * 60) / "w"
    work.mkdir(mode=0o700, parents=True)
    path, apart = sup.kernel_socket_dir(work)
    assert apart
    (path / "kernel-x-ipc-1").touch()
    _remove_socket_dir(work)
    assert not path.exists()
    other = tmp_path / "not-ours"  # a link to anything else is left alone
    other.mkdir()
    (work / "k").unlink()
    (work / "k").symlink_to(other)
    _remove_socket_dir(work)
    assert other.exists()
