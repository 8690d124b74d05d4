"""Commands and files "on the cluster": here (no ``JLABGW_SSH_HOST``) or over SSH.

One interface for both, so the SLURM backend does not care where sbatch runs:

* :meth:`Host.run` takes an argv list (never a shell string; each argument is shell-quoted for
  SSH), feeds secrets through stdin rather than the command line, and raises
  :class:`~jlabgw.errors.CommandError` with argv, exit code, stdout and stderr.
* :meth:`Host.read_bytes` / :meth:`Host.write_bytes` / :meth:`Host.stat` use the local
  filesystem or SFTP; writes are atomic (temp file + rename) and take an explicit mode
  (0600 where secrets live), applied before any byte is written.
"""

from __future__ import annotations

import abc
import contextlib
import os
import secrets
import stat as stat_module
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import paramiko

from jlabgw.cluster.ssh.connection import CommandResult, SSHConnection
from jlabgw.config import Settings
from jlabgw.errors import CommandError, SSHError
from jlabgw.fsutil import atomic_write

__all__ = ["FileStat", "Host", "LocalHost", "SSHHost", "expand_home", "host_for"]

_DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class FileStat:
    size: int
    mode: int  # permission bits only
    mtime: float
    uid: int | None = None  # the owner (None: the host did not say)


class Host(abc.ABC):
    """Where cluster commands run and cluster files live."""

    where: str

    @abc.abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = _DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> CommandResult: ...

    @abc.abstractmethod
    def read_bytes(self, path: str) -> bytes: ...

    @abc.abstractmethod
    def write_bytes(self, path: str, data: bytes, mode: int = 0o600) -> None: ...

    @abc.abstractmethod
    def stat(self, path: str) -> FileStat | None:
        """The file's size, mode and mtime, or None if it does not exist."""

    @abc.abstractmethod
    def uid(self) -> int:
        """The numeric user id this host's commands and files run as."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (nothing to do locally)."""


class LocalHost(Host):
    where = "this machine"

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = _DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> CommandResult:
        try:
            done = subprocess.run(
                list(argv), input=input, capture_output=True, timeout=timeout, check=False
            )
        except FileNotFoundError as exc:
            raise CommandError(
                list(argv), 127, "", f"{argv[0]}: command not found", self.where
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise CommandError(
                list(argv), -1, "", f"no exit within {timeout} s", self.where
            ) from exc
        result = CommandResult(
            list(argv),
            done.returncode,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )
        if check and done.returncode != 0:
            raise CommandError(
                result.argv, done.returncode, result.stdout, result.stderr, self.where
            )
        return result

    def read_bytes(self, path: str) -> bytes:
        return Path(path).expanduser().read_bytes()

    def write_bytes(self, path: str, data: bytes, mode: int = 0o600) -> None:
        atomic_write(Path(path).expanduser(), data, mode=mode)

    def stat(self, path: str) -> FileStat | None:
        try:
            st = Path(path).expanduser().stat()
        except FileNotFoundError:
            return None
        return FileStat(st.st_size, stat_module.S_IMODE(st.st_mode), st.st_mtime, st.st_uid)

    def uid(self) -> int:
        return os.getuid()


class SSHHost(Host):
    """Commands over SSH exec, files over SFTP, on one connection (re-made if it dies)."""

    def __init__(self, connection: SSHConnection) -> None:
        self.connection = connection
        self.where = connection.spec.label
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_transport: paramiko.Transport | None = None
        self._uid: int | None = None
        # One SFTP request at a time: paramiko's SFTPClient is not safe for concurrent
        # requests from several threads (one thread can read another's response, and the
        # other then waits forever); the backend checks files from several worker threads.
        self._sftp_lock = threading.Lock()
        self._sftp_timeout = max(30.0, 2 * connection.settings.ssh_timeout)

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = _DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> CommandResult:
        try:
            return self.connection.run(argv, input=input, timeout=timeout, check=check)
        except TimeoutError as exc:
            raise CommandError(list(argv), -1, "", str(exc), self.where) from exc

    def _client(self) -> paramiko.SFTPClient:
        """The SFTP client (call with ``_sftp_lock`` held)."""
        transport = self.connection.transport  # reconnects if needed
        if self._sftp is None or self._sftp_transport is not transport:
            self._sftp = self.connection.sftp()
            # a request on a connection that went silent fails instead of hanging forever
            channel = self._sftp.get_channel()
            if channel is not None:
                channel.settimeout(self._sftp_timeout)
            self._sftp_transport = transport
        return self._sftp

    def _path(self, path: str) -> str:
        # SFTP paths are relative to the login directory; "~/x" means the same thing there.
        return path[2:] if path.startswith("~/") else path

    def read_bytes(self, path: str) -> bytes:
        try:
            with self._sftp_lock, self._client().open(self._path(path), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            raise
        except (OSError, paramiko.SSHException) as exc:
            raise SSHError(f"cannot read {path} on {self.where}: {exc}") from exc

    def write_bytes(self, path: str, data: bytes, mode: int = 0o600) -> None:
        with self._sftp_lock:
            self._write_bytes(path, data, mode)

    def _write_bytes(self, path: str, data: bytes, mode: int) -> None:
        # SFTP's open takes no mode: the server creates the file with its umask (0644, say),
        # and whoever opens it in that moment can read what is written later. So the file is
        # made in a fresh 0700 directory next to the target, chmod-ed, then renamed into place.
        sftp = self._client()
        target = PurePosixPath(self._path(path))
        private = str(target.with_name(f".{target.name}.{secrets.token_hex(6)}.d"))
        tmp = f"{private}/{target.name}"
        made = False
        try:
            sftp.mkdir(private, 0o700)
            made = True
            sftp.chmod(private, 0o700)  # in case the server ignored mkdir's mode; still empty
            with sftp.open(tmp, "wb") as fh:
                sftp.chmod(tmp, mode)
                fh.write(data)
            sftp.posix_rename(tmp, str(target))
        except (OSError, paramiko.SSHException) as exc:
            with contextlib.suppress(OSError, paramiko.SSHException):
                sftp.remove(tmp)
            raise SSHError(f"cannot write {path} on {self.where}: {exc}") from exc
        finally:
            if made:
                with contextlib.suppress(OSError, paramiko.SSHException):
                    sftp.rmdir(private)

    def stat(self, path: str) -> FileStat | None:
        try:
            with self._sftp_lock:
                st = self._client().stat(self._path(path))
        except FileNotFoundError:
            return None
        except (OSError, paramiko.SSHException) as exc:
            raise SSHError(f"cannot stat {path} on {self.where}: {exc}") from exc
        return FileStat(
            st.st_size or 0, stat_module.S_IMODE(st.st_mode or 0), st.st_mtime or 0, st.st_uid
        )

    def uid(self) -> int:
        if self._uid is None:
            out = self.run(["id", "-u"]).stdout.strip()
            try:
                self._uid = int(out)
            except ValueError as exc:
                raise SSHError(f"`id -u` on {self.where} printed {out[:80]!r}") from exc
        return self._uid

    def close(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(OSError, paramiko.SSHException):
                self._sftp.close()  # not under the lock: it also ends a request stuck on it
        self._sftp = None
        self.connection.close()


def expand_home(host: Host, path: str) -> str:
    """``path`` with a leading ``~`` replaced by the home directory on ``host``."""
    if not path.startswith("~"):
        return path
    home = host.run(["sh", "-c", 'printf %s "$HOME"']).stdout.strip()
    return home + path[1:]


def host_for(settings: Settings) -> Host:
    """The login node over SSH when ``JLABGW_SSH_HOST`` is set, else this machine."""
    if settings.ssh_host:
        return SSHHost(SSHConnection(settings.ssh_host, settings))
    return LocalHost()
