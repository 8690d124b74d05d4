from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlabgw.fsutil import atomic_write, ensure_private_dir, write_private_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_new_file_respects_umask(tmp_path: Path) -> None:
    target = tmp_path / "nb.ipynb"
    atomic_write(target, b"one")
    assert target.read_bytes() == b"one"
    assert mode(target) == 0o644


def test_new_file_under_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "x", b"1")
    finally:
        os.umask(old)
    assert mode(tmp_path / "x") == 0o600


@pytest.mark.usefixtures("umask_022")
def test_replacing_keeps_existing_mode(tmp_path: Path) -> None:
    target = tmp_path / "nb.ipynb"
    target.write_text("old")
    target.chmod(0o664)
    atomic_write(target, b"new")
    assert target.read_text() == "new"
    assert mode(target) == 0o664


@pytest.mark.usefixtures("umask_022")
def test_private_file_is_0600_even_when_replacing_a_public_one(tmp_path: Path) -> None:
    target = tmp_path / "token.json"
    target.write_text("{}")
    target.chmod(0o644)
    write_private_file(target, b'{"token": "x"}')
    assert mode(target) == 0o600


def test_no_temp_file_left_when_the_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()  # os.replace of a file over a directory fails
    with pytest.raises(OSError, match="directory"):
        atomic_write(target, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_private_dir_is_tightened(tmp_path: Path) -> None:
    loose = tmp_path / "state"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    ensure_private_dir(loose)
    assert mode(loose) == 0o700
    nested = ensure_private_dir(tmp_path / "a" / "b")
    assert mode(nested) == 0o700


def test_pid_alive_treats_zombies_as_dead() -> None:
    import subprocess
    import sys
    import time

    from jlabgw.sessions.state import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert pid_alive(os.getpid())
    for _ in range(200):  # until it has exited (a zombie: not reaped yet)
        if not pid_alive(child.pid):
            break
        time.sleep(0.02)
    assert not pid_alive(child.pid)
    assert Path(f"/proc/{child.pid}").exists()  # still a zombie, yet reported dead
    child.wait()
