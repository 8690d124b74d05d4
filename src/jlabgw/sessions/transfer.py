"""Moving files between the notebook directory and a session kernel's side
(``upload_file`` / ``download_file``).

The local side is confined to the notebook directory, as notebook paths are. The kernel's
side resolves a relative path where the kernel's ``open()`` does (its working directory);
an absolute one (or one with ``..``) must end up in that directory, the home directory or
the configured ``transfer_root``. A file over ``transfer_max_bytes`` is refused before
anything is copied, and an existing one is replaced only with ``overwrite``. Nothing is half
written: the copy goes to a hidden temporary file next to the target, is fsynced, and only
then takes the final name (a hard link, which fails if the name was taken meanwhile, or a
rename with ``overwrite``); a failed or cancelled copy removes it.

Only the local backend for now (the kernel's side is this machine); a cluster's needs SFTP
on the SSH connection, which the cluster layer does not offer yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from jlabgw.config import Settings
from jlabgw.errors import BackendError, KernelError, NotebookError
from jlabgw.notebook.paths import confine
from jlabgw.progress import Progress
from jlabgw.sessions.lanes import Lanes
from jlabgw.sessions.resources import kernel_cwd
from jlabgw.sessions.session import Session, SessionTable

__all__ = ["Transfers"]

_CHUNK = 8 * 2**20


class Transfers:
    """File transfers for :class:`~.manager.SessionManager`."""

    def __init__(self, settings: Settings, lanes: Lanes, sessions: SessionTable) -> None:
        self._root = settings.notebook_dir
        self._cap = settings.transfer_max_bytes
        extra = settings.transfer_root
        self._extra_root = Path(extra).expanduser().resolve() if extra else None
        self._lanes = lanes
        self._sessions = sessions

    async def upload(
        self,
        session: Session,
        local_path: str,
        remote_path: str,
        progress: Progress,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Copy ``local_path`` (notebook directory) to ``remote_path`` (the kernel's side)."""
        self._local_backend_only(session, "upload_file")
        source = confine(self._root, local_path, "local_path")
        target = self._kernel_side(session, remote_path, "remote_path")
        return await _copy(source, target, self._cap, overwrite, progress)

    async def download(
        self,
        session: Session,
        remote_path: str,
        local_path: str,
        progress: Progress,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Copy ``remote_path`` (the kernel's side) to ``local_path`` (notebook directory)."""
        self._local_backend_only(session, "download_file")
        source = self._kernel_side(session, remote_path, "remote_path")
        target = confine(self._root, local_path, "local_path")
        if overwrite and target.suffix == ".ipynb":
            self._sessions.refuse_if_held(target)  # never under a session's notebook
        return await _copy(source, target, self._cap, overwrite, progress)

    def _local_backend_only(self, session: Session, tool: str) -> None:
        backend = self._lanes.backend(session.lane).name
        if backend != "local":
            raise BackendError(
                f"{tool} works on the local backend only for now (this session runs on "
                f"{backend}; the SFTP transfer is not built yet). For a small file, "
                "execute_code can write or read it in the kernel"
            )

    def _kernel_side(self, session: Session, user_path: str, what: str) -> Path:
        if not user_path or "\x00" in user_path:
            raise NotebookError(f"{what} must be a non-empty path without NUL bytes")
        cwd = kernel_cwd(session.kernel_id)
        if cwd is None:
            raise KernelError(
                f"cannot find the working directory of session {session.id}'s kernel (is it "
                "still running? list_sessions shows it)"
            )
        workdir = Path(cwd).resolve()
        candidate = Path(user_path).expanduser()
        resolved = (candidate if candidate.is_absolute() else workdir / candidate).resolve()
        roots = [workdir, Path.home().resolve()]
        if self._extra_root is not None:
            roots.append(self._extra_root)
        if not any(resolved.is_relative_to(root) and resolved != root for root in roots):
            allowed = ", ".join(str(r) for r in roots)
            raise NotebookError(
                f"{what} {user_path!r} is outside the places files may go on the kernel's "
                f"side ({allowed}): a path relative to the kernel's working directory is "
                "simplest (JLABGW_TRANSFER_ROOT adds a scratch directory)"
            )
        return resolved


async def _copy(
    source: Path, target: Path, cap: int, overwrite: bool, progress: Progress
) -> dict[str, Any]:
    size = await asyncio.to_thread(_prepare, source, target, cap, overwrite)
    partial = target.with_name(f".{target.name}.jlabgw-part-{uuid.uuid4().hex[:8]}")
    t0 = time.monotonic()
    try:
        done = await _write_partial(source, partial, size, cap, progress)
        await asyncio.to_thread(_publish, partial, target, overwrite)
    except OSError as exc:
        raise NotebookError(f"copying {source.name} to {target} failed: {exc}") from exc
    finally:
        _discard(partial)
    return {
        "from": str(source),
        "to": str(target),
        "bytes": done,
        "seconds": round(time.monotonic() - t0, 3),
    }


def _prepare(source: Path, target: Path, cap: int, overwrite: bool) -> int:
    """The checks before a copy (and the target's folder made); the source's size."""
    if not source.is_file():
        raise NotebookError(f"no file at {source}")
    size = source.stat().st_size
    if size > cap:
        raise NotebookError(
            f"{source.name} is {_mib(size)}, over the transfer cap of {_mib(cap)} "
            "(JLABGW_TRANSFER_MAX_BYTES); nothing was copied"
        )
    if target.is_dir():
        raise NotebookError(f"{target} is a directory; name the file to write")
    if target.exists() and not overwrite:
        raise NotebookError(f"{target} exists; pass overwrite=true to replace it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NotebookError(f"cannot create {target.parent}: {exc.strerror}") from exc
    return size


def _discard(partial: Path) -> None:
    with contextlib.suppress(OSError):
        partial.unlink(missing_ok=True)


async def _write_partial(
    source: Path, partial: Path, size: int, cap: int, progress: Progress
) -> int:
    done = 0
    with source.open("rb") as reader, partial.open("xb") as writer:
        while True:
            chunk = await asyncio.to_thread(reader.read, _CHUNK)
            if not chunk:
                break
            done += len(chunk)
            if done > cap:  # it grew while being copied
                raise NotebookError(
                    f"{source.name} grew past the transfer cap of {_mib(cap)} while being "
                    "copied; nothing was written"
                )
            await asyncio.to_thread(writer.write, chunk)
            await progress(done, max(size, done), f"{_mib(done)} of {_mib(size)}")
        await asyncio.to_thread(_sync, writer)
    return done


def _sync(writer: BinaryIO) -> None:
    writer.flush()
    os.fsync(writer.fileno())


def _publish(partial: Path, target: Path, overwrite: bool) -> None:
    """The complete copy takes the final name (never over an existing file unless
    ``overwrite``)."""
    if overwrite:
        os.replace(partial, target)
        return
    try:
        os.link(partial, target)  # fails if the name was taken meanwhile
    except FileExistsError as exc:
        raise NotebookError(f"{target} exists; pass overwrite=true to replace it") from exc
    except OSError:  # a filesystem without hard links: check, then rename
        if target.exists():
            raise NotebookError(f"{target} exists; pass overwrite=true to replace it") from None
        os.replace(partial, target)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size:,} bytes"
