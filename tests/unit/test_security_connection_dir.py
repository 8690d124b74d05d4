"""The connection dir and file on the cluster are checked at run time (issue 13): a file or
dir another user owns was planted and is refused; one others can reach is refused (a file)
or closed (our own dir), with the fix in the message. Real files on this machine through the
real LocalHost; "another user" is the test cluster's account (or any uid, via chown as root)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jlabgw.cluster.connection_file import read_connection_file
from jlabgw.cluster.host import LocalHost
from jlabgw.cluster.job import private_connection_dir
from jlabgw.errors import BackendError

OTHER_UID = 4242  # nobody's files in a temp dir; chown needs root

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def publish(path: Path, mode: int = 0o600) -> None:
    path.write_text(json.dumps({"host": "node1", "port": 5000, "token": "t0k3n"}))
    path.chmod(mode)


def test_our_private_file_is_read(tmp_path: Path) -> None:
    publish(tmp_path / "c.json")
    info = read_connection_file(LocalHost(), str(tmp_path / "c.json"))
    assert info is not None
    assert info.port == 5000


def test_a_file_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    publish(tmp_path / "c.json", 0o644)
    with pytest.raises(BackendError, match=r"mode 644.*chmod 600"):
        read_connection_file(LocalHost(), str(tmp_path / "c.json"))


@needs_root
def test_a_planted_file_of_another_user_is_refused(tmp_path: Path) -> None:
    publish(tmp_path / "c.json")
    os.chown(tmp_path / "c.json", OTHER_UID, OTHER_UID)
    with pytest.raises(BackendError, match=rf"belongs to uid {OTHER_UID}, not to you"):
        read_connection_file(LocalHost(), str(tmp_path / "c.json"))


def test_our_own_open_dir_is_closed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conn_dir = tmp_path / "connections"
    conn_dir.mkdir(mode=0o755)
    conn_dir.chmod(0o755)  # as `mkdir -p -m 700` leaves an existing dir
    private_connection_dir(LocalHost(), str(conn_dir))
    assert conn_dir.stat().st_mode & 0o777 == 0o700
    assert "had mode 755" in caplog.text


@needs_root
def test_a_connection_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    conn_dir = tmp_path / "connections"
    conn_dir.mkdir(mode=0o700)
    os.chown(conn_dir, OTHER_UID, OTHER_UID)
    with pytest.raises(BackendError, match="JLABGW_CONNECTION_DIR"):
        private_connection_dir(LocalHost(), str(conn_dir))
    assert conn_dir.stat().st_mode & 0o777 == 0o700  # not ours to change
