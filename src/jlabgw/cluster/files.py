"""The node a gateway runs on, reached without a kernel: its files over SFTP and commands over
SSH exec, on the connection a batch backend already holds to that node (the tunnel's).

:class:`Node` is the seam the session layer calls (``upload_file`` / ``download_file``,
``check_resources``); :meth:`Backend.node <jlabgw.cluster.backends.base.Backend.node>` hands
one out, or None where there is none (the local backend: the node is this machine). Every
call here blocks; the session layer runs them in worker threads, one at a time per
:class:`NodeFiles` (an SFTP session of its own, so transfers do not queue behind each other
or behind the backend's own SFTP on the login node).

Why the compute node's connection rather than the login node's: it reaches exactly the files
the kernel sees (node-local ``/tmp`` and scratch too, not only the shared filesystem), it is
where ``/proc`` tells the kernel's working directory and where the probe must run, and it
exists whenever a session's kernel does, also when sbatch runs on this machine and there is
no login connection at all.
"""

from __future__ import annotations

import abc
import contextlib
import posixpath
import re
import shlex
import stat as stat_module
import threading
from dataclasses import dataclass

import paramiko

from jlabgw.cluster.ssh.connection import SSHConnection
from jlabgw.errors import CommandError, SSHError

__all__ = ["Node", "NodeFiles", "NodeStat", "SSHNode", "SSHNodeFiles", "is_kernel_id"]

_MAX_DEPTH = 256  # path components walked when resolving (bounded)
_READ_AHEAD = 32768  # bytes per SFTP read request (paramiko's MAX_REQUEST_SIZE)
_KERNEL_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")

# The working directory of the process whose command line holds the kernel id read from
# stdin (never in an argv, where it would match this script's own command line). Plain sh
# and /proc: no Python or site set-up needed.
_CWD_SCRIPT = r"""
IFS= read -r id || exit 2
case "$id" in ''|*[!0-9A-Za-z._-]*) exit 2;; esac
for d in /proc/[0-9]*; do
  [ "${d#/proc/}" = "$$" ] && continue
  c=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
  case "$c" in *"$id"*) readlink "$d/cwd" && exit 0;; esac
done
exit 1
"""


def is_kernel_id(text: str) -> bool:
    """Whether ``text`` looks like a gateway's kernel id (safe to look for in /proc)."""
    return bool(_KERNEL_ID.match(text))


@dataclass(frozen=True)
class NodeStat:
    size: int
    kind: str  # "file", "dir" or "other"


class NodeReader(abc.ABC):
    @abc.abstractmethod
    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""

    @abc.abstractmethod
    def size(self) -> int:
        """The open file's size now."""

    @abc.abstractmethod
    def close(self) -> None: ...


class NodeWriter(abc.ABC):
    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def finish(self) -> int:
        """Wait until every byte written is on the node; the file's size there."""

    @abc.abstractmethod
    def close(self) -> None: ...


class NodeFiles(abc.ABC):
    """File operations on the node, in one session (call them one at a time)."""

    where: str

    @abc.abstractmethod
    def home(self) -> str:
        """The user's home directory on the node (absolute)."""

    @abc.abstractmethod
    def resolve(self, path: str) -> str:
        """``path`` (absolute) with ``..`` and the symbolic links of its existing part
        resolved; the missing rest appended as is."""

    @abc.abstractmethod
    def stat(self, path: str) -> NodeStat | None:
        """What is at ``path`` (links followed), or None if nothing is."""

    @abc.abstractmethod
    def makedirs(self, path: str) -> None:
        """Create ``path`` and its missing parents."""

    @abc.abstractmethod
    def open_read(self, path: str) -> NodeReader: ...

    @abc.abstractmethod
    def create(self, path: str) -> NodeWriter:
        """A new file at ``path``; fails if the name exists."""

    @abc.abstractmethod
    def publish(self, partial: str, target: str, overwrite: bool) -> None:
        """Rename ``partial`` to ``target``: replacing a file there only with ``overwrite``,
        else failing with FileExistsError."""

    @abc.abstractmethod
    def remove(self, path: str) -> None:
        """Remove a file if it is there; never raises."""

    @abc.abstractmethod
    def close(self) -> None: ...


class Node(abc.ABC):
    """The node a backend's gateway runs on."""

    where: str
    transfer_root: str  # JLABGW_TRANSFER_ROOT of this backend (empty: none)

    @abc.abstractmethod
    def files(self) -> NodeFiles:
        """A file session on the node (close it after)."""

    @abc.abstractmethod
    def kernel_cwd(self, kernel_id: str) -> str | None:
        """The working directory of the kernel process ``kernel_id``, if it can be found
        (from ``/proc``: where its ``open()`` resolves relative paths right now)."""

    @abc.abstractmethod
    def run_python(self, code: str, timeout: float) -> str:
        """Run ``code`` with the job's Python (after the site set-up) and return its stdout;
        raises :class:`~jlabgw.errors.JlabgwError` if it cannot run or fails."""


# -- over SSH -----------------------------------------------------------------------------------


class SSHNode(Node):
    """The node over an SSH connection to it (the tunnel's)."""

    def __init__(
        self, connection: SSHConnection, *, remote_setup: str = "", transfer_root: str = ""
    ) -> None:
        self._conn = connection
        self._setup = remote_setup
        self.where = connection.spec.label
        self.transfer_root = transfer_root

    def _live(self) -> SSHConnection:
        if not self._conn.connected:  # closed with its tunnel: never re-opened from here
            raise SSHError(f"the SSH connection to {self.where} is closed")
        return self._conn

    def files(self) -> NodeFiles:
        return SSHNodeFiles(self._live(), self.where)

    def kernel_cwd(self, kernel_id: str) -> str | None:
        if not is_kernel_id(kernel_id):
            return None
        try:
            result = self._live().run(
                ["sh", "-c", _CWD_SCRIPT], input=f"{kernel_id}\n".encode(), timeout=30, check=False
            )
        except (SSHError, TimeoutError):
            return None
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines or not lines[0].startswith("/"):
            return None
        return lines[0]

    def run_python(self, code: str, timeout: float) -> str:
        script = f'{self._setup}\nexec "${{JLABGW_PYTHON:-python3}}" -I -c {shlex.quote(code)}\n'
        argv = ["bash", "-c", script]
        try:
            return self._live().run(argv, timeout=timeout, check=True).stdout
        except TimeoutError as exc:
            raise CommandError(["bash", "-c", "..."], -1, "", str(exc), self.where) from exc


class _SFTPReader(NodeReader):
    def __init__(self, handle: paramiko.SFTPFile, lock: threading.RLock, path: str) -> None:
        self._fh = handle
        self._lock = lock
        self._path = path

    def read(self, offset: int, size: int) -> bytes:
        # readv pipelines the block's requests (one round trip per block, not per 32 KiB)
        # and keeps no more than the block in memory, unlike a whole-file prefetch
        try:
            with self._lock:
                # never a request past the end (paramiko waits for such a read's data until
                # the channel's timeout): a file that shrank reads short instead
                size = min(size, (self._fh.stat().st_size or 0) - offset)
                if size <= 0:
                    return b""
                end = offset + size
                chunks = [(o, min(_READ_AHEAD, end - o)) for o in range(offset, end, _READ_AHEAD)]
                return b"".join(self._fh.readv(chunks))
        except EOFError:  # the file shrank under us: the caller sees a short read
            return b""
        except (OSError, paramiko.SSHException) as exc:
            raise SSHError(f"cannot read {self._path}: {exc}") from exc

    def size(self) -> int:
        try:
            with self._lock:
                return self._fh.stat().st_size or 0
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise SSHError(f"cannot stat {self._path}: {exc}") from exc

    def close(self) -> None:
        with self._lock, contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            self._fh.close()


class _SFTPWriter(NodeWriter):
    def __init__(self, handle: paramiko.SFTPFile, lock: threading.RLock, path: str) -> None:
        self._fh = handle
        self._lock = lock
        self._path = path
        self._fh.set_pipelined(True)  # the SSH window bounds what is in flight

    def write(self, data: bytes) -> None:
        try:
            with self._lock:
                self._fh.write(data)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise SSHError(f"cannot write {self._path}: {exc}") from exc

    def finish(self) -> int:
        try:
            with self._lock:
                self._fh.flush()
                return self._fh.stat().st_size or 0  # answered after every write before it
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise SSHError(f"cannot write {self._path}: {exc}") from exc

    def close(self) -> None:
        with self._lock, contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            self._fh.close()


class SSHNodeFiles(NodeFiles):
    """One SFTP session on the node; a lock keeps its requests one at a time (paramiko's
    client is not safe for concurrent requests from several threads)."""

    def __init__(self, connection: SSHConnection, where: str) -> None:
        self.where = where
        self._lock = threading.RLock()
        self._sftp = connection.sftp()
        channel = self._sftp.get_channel()
        if channel is not None:  # a request on a connection gone silent fails, not hangs
            channel.settimeout(max(30.0, 2 * connection.settings.ssh_timeout))
        self._home: str | None = None

    def _error(self, what: str, path: str, exc: BaseException) -> SSHError:
        return SSHError(f"cannot {what} {path} on {self.where}: {exc}")

    def home(self) -> str:
        if self._home is None:
            with self._lock:
                self._home = self._sftp.normalize(".")  # SFTP starts in the home directory
        return self._home

    def resolve(self, path: str) -> str:
        path = posixpath.normpath(path)
        if not path.startswith("/"):
            raise ValueError(f"not an absolute path: {path}")
        existing, rest = path, list[str]()
        with self._lock:
            for _ in range(_MAX_DEPTH):
                if existing == "/" or self._exists(existing):
                    break
                existing, name = posixpath.split(existing)
                rest.insert(0, name)
            else:
                raise SSHError(f"{path} is too deep to resolve on {self.where}")
            try:
                real = self._sftp.normalize(existing)
            except (OSError, paramiko.SSHException) as exc:
                raise self._error("resolve", existing, exc) from exc
        return posixpath.join(real, *rest) if rest else real

    def _exists(self, path: str) -> bool:
        try:
            self._sftp.stat(path)
        except FileNotFoundError:
            return False
        except PermissionError:
            return True  # there, but not ours to look into: normalize says where it goes
        return True

    def stat(self, path: str) -> NodeStat | None:
        try:
            with self._lock:
                st = self._sftp.stat(path)
        except FileNotFoundError:
            return None
        except (OSError, paramiko.SSHException) as exc:
            raise self._error("stat", path, exc) from exc
        mode = st.st_mode or 0
        kind = (
            "file" if stat_module.S_ISREG(mode) else "dir" if stat_module.S_ISDIR(mode) else "other"
        )
        return NodeStat(st.st_size or 0, kind)

    def makedirs(self, path: str) -> None:
        missing: list[str] = []
        current = posixpath.normpath(path)
        with self._lock:
            for _ in range(_MAX_DEPTH):
                if current == "/" or self._exists(current):
                    break
                missing.insert(0, current)
                current = posixpath.dirname(current)
            for folder in missing:
                try:
                    self._sftp.mkdir(folder)
                except (OSError, paramiko.SSHException) as exc:
                    if not self._exists(folder):
                        raise self._error("create", folder, exc) from exc

    def open_read(self, path: str) -> NodeReader:
        try:
            with self._lock:
                return _SFTPReader(self._sftp.open(path, "rb"), self._lock, path)
        except (OSError, paramiko.SSHException) as exc:
            raise self._error("read", path, exc) from exc

    def create(self, path: str) -> NodeWriter:
        try:
            with self._lock:
                # O_EXCL: never an old file
                return _SFTPWriter(self._sftp.open(path, "wbx"), self._lock, path)
        except (OSError, paramiko.SSHException) as exc:
            raise self._error("create", path, exc) from exc

    def publish(self, partial: str, target: str, overwrite: bool) -> None:
        with self._lock:
            try:
                if overwrite:
                    self._sftp.posix_rename(partial, target)
                    return
                # SFTP's own RENAME fails when the new name exists (OpenSSH links, then
                # unlinks): a name taken meanwhile is not overwritten
                self._sftp.rename(partial, target)
            except (OSError, paramiko.SSHException) as exc:
                if not overwrite and self._exists(target):
                    raise FileExistsError(target) from exc
                raise self._error("rename to", target, exc) from exc

    def remove(self, path: str) -> None:
        with self._lock, contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            self._sftp.remove(path)

    def close(self) -> None:
        with self._lock, contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            self._sftp.close()
