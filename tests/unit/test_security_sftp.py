"""Files written over SFTP (the batch script, files that may hold secrets) are never readable by
others at any point: the SFTP server creates files with its umask (here 022, so 0644), so the
file must be made where others cannot reach it (issue 13). A fake SFTP server keeps a tree
with modes and checks, after every request, that no file of ours is reachable by others."""

from __future__ import annotations

import contextlib
import io
import posixpath
import stat
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from jlabgw.cluster.host import SSHHost

UMASK = 0o022


class FakeSFTP:
    def __init__(self) -> None:
        self.modes: dict[str, int] = {"conn": stat.S_IFDIR | 0o755}  # a shared-looking dir
        self.data: dict[str, bytes] = {}
        self.log: list[str] = []

    def _check(self, op: str) -> None:
        self.log.append(op)
        for path, mode in self.modes.items():
            if stat.S_ISDIR(mode):
                continue
            parent = posixpath.dirname(path)
            reachable = self.modes[parent] & 0o005 == 0o005  # others may enter the parent
            assert not (reachable and mode & 0o044), f"after {op}: {path} is {oct(mode)}"

    def get_channel(self) -> None:
        return None

    @contextlib.contextmanager
    def open(self, path: str, mode: str = "r") -> Iterator[Any]:
        assert posixpath.dirname(path) in self.modes, path
        self.modes[path] = stat.S_IFREG | (0o666 & ~UMASK)
        self.data[path] = b""
        self._check(f"open {path}")
        buf = io.BytesIO()
        yield buf
        self.data[path] = buf.getvalue()
        self._check(f"close {path}")

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        self.modes[path] = stat.S_IFDIR | (mode & ~UMASK)
        self._check(f"mkdir {path}")

    def chmod(self, path: str, mode: int) -> None:
        self.modes[path] = stat.S_IFMT(self.modes[path]) | mode
        self._check(f"chmod {path} {oct(mode)}")

    def posix_rename(self, old: str, new: str) -> None:
        self.modes[new] = self.modes.pop(old)
        self.data[new] = self.data.pop(old)
        self._check(f"rename {old} {new}")

    def remove(self, path: str) -> None:
        del self.modes[path]
        self.data.pop(path, None)

    def rmdir(self, path: str) -> None:
        assert not any(p.startswith(path + "/") for p in self.modes), path
        del self.modes[path]
        self._check(f"rmdir {path}")


@pytest.fixture
def host_and_sftp() -> tuple[SSHHost, FakeSFTP]:
    sftp = FakeSFTP()
    connection = SimpleNamespace(
        spec=SimpleNamespace(label="login"),
        settings=SimpleNamespace(ssh_timeout=15.0),
        transport=object(),
        sftp=lambda: sftp,
    )
    return SSHHost(connection), sftp  # type: ignore[arg-type]


def test_a_written_file_is_never_readable_by_others(
    host_and_sftp: tuple[SSHHost, FakeSFTP],
) -> None:
    host, sftp = host_and_sftp
    host.write_bytes("conn/job.json", b'{"token": "secret"}', mode=0o600)
    print("\n".join(sftp.log))
    assert sftp.data == {"conn/job.json": b'{"token": "secret"}'}
    assert stat.S_IMODE(sftp.modes["conn/job.json"]) == 0o600
    assert set(sftp.modes) == {"conn", "conn/job.json"}  # nothing left behind
