"""Atomic file writes and private directories.

``atomic_write`` writes a temp file in the target's directory, fsyncs it and ``os.replace``s it
over the target, so a reader (or a crash) only ever sees the old or the new content. Its mode
is either explicit (0600 for secrets) or what a normal ``open()`` would give: the umask applied
to 0666, or the existing file's mode when it is replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = ["atomic_write", "ensure_private_dir", "locked", "write_private_file"]


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make sure only the owner can enter it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o700)
    return path


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created 0600 in a private dir) for the
    block: a read-modify-write of a file several processes of the user share. The kernel drops
    the lock when the process dies, so a SIGKILLed holder never wedges the others."""
    ensure_private_dir(lock_path.parent)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def atomic_write(
    path: Path,
    data: bytes | Iterable[bytes],
    mode: int | None = None,
    proceed: Callable[[], bool] | None = None,
) -> bool:
    """Replace ``path`` with ``data`` (bytes, or parts written one after the other, so a big
    file need not exist in memory twice) atomically. True when replaced.

    ``proceed`` is asked between the temp file's fsync and the ``os.replace``; if it says no,
    the temp file is removed, ``path`` is left as it is, and the result is False (the notebook
    writer uses it not to replace a person's save that landed while a big file was written).

    ``mode=None`` keeps the existing file's permission bits, or lets the umask decide for a new
    file. An explicit ``mode`` (e.g. 0o600) is applied before any byte is written.
    """
    keep_mode: int | None = None
    if mode is None:
        with contextlib.suppress(FileNotFoundError):
            keep_mode = stat.S_IMODE(path.stat().st_mode)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    create_mode = 0o666 if mode is None else mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, create_mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # the umask may have removed bits we asked for
        elif keep_mode is not None:
            os.fchmod(fd, keep_mode)
        for part in [data] if isinstance(data, bytes) else data:
            view = memoryview(part)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        if proceed is not None and not proceed():
            os.unlink(tmp)
            return False
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return True


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically write a file only the owner can read (tokens, state)."""
    atomic_write(path, data, mode=0o600)
