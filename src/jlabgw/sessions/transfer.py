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

On the local backend the kernel's side is this machine: the copy above. On a batch backend
it is the job's node, reached over SFTP on the SSH connection the backend holds to it
(:meth:`~jlabgw.cluster.backends.base.Backend.node`, :mod:`jlabgw.cluster.files`): the
kernel's working directory is read from the node's ``/proc`` (where its ``open()`` looks right
now, without asking the kernel, busy or not), the allowed places are resolved there (the
cluster home, the backend's ``transfer_root``), the file streams in blocks with progress,
and the same rules hold: the cap (before and during the copy), no overwrite unless asked,
and a hidden temporary name in the target directory that is renamed to the final one only
when complete (SFTP's rename refuses a name taken meanwhile; ``overwrite`` uses POSIX
rename), removed on failure or cancellation. If the connection to the node dies mid-copy,
the hidden temporary file there may stay; the final name is never written half.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from jlabgw.cluster.files import Node, NodeFiles, NodeStat, NodeWriter
from jlabgw.config import Settings
from jlabgw.errors import (
    BackendError,
    JlabgwError,
    KernelError,
    NotebookError,
    SessionLostError,
)
from jlabgw.notebook.paths import confine
from jlabgw.progress import Progress
from jlabgw.sessions.lanes import Lanes
from jlabgw.sessions.resources import kernel_cwd
from jlabgw.sessions.session import Session, SessionTable

__all__ = ["Transfers"]

_CHUNK = 8 * 2**20

T = TypeVar("T")


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
        source = confine(self._root, local_path, "local_path")
        node = await self._node(session, "upload_file", progress)
        if node is not None:
            return await _NodeTransfer(node, session, self._cap, progress).upload(
                source, remote_path, overwrite
            )
        target = self._kernel_side(session, remote_path, "remote_path")
        if overwrite and target.suffix == ".ipynb":  # the kernel's side may hold notebooks
            self._sessions.refuse_if_held(target)
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
        target = confine(self._root, local_path, "local_path")
        if overwrite and target.suffix == ".ipynb":
            self._sessions.refuse_if_held(target)  # never under a session's notebook
        node = await self._node(session, "download_file", progress)
        if node is not None:
            return await _NodeTransfer(node, session, self._cap, progress).download(
                remote_path, target, overwrite
            )
        source = self._kernel_side(session, remote_path, "remote_path")
        return await _copy(source, target, self._cap, overwrite, progress)

    async def _node(self, session: Session, tool: str, progress: Progress) -> Node | None:
        """The session's node when the backend reaches it (a batch job), None on the local
        backend (this machine: the copy here)."""
        backend = self._lanes.backend(session.lane)
        if backend.name == "local":
            return None
        why = await session.conn.gateway_lost()  # never a new job for a gone session's files
        if why:
            raise SessionLostError(session.lost_message(why))
        await self._lanes.gateway(progress, session.lane)  # the job (and its tunnel) is up
        node = backend.node()
        if node is None:
            raise BackendError(
                f"{tool}: the {backend.name} backend has no way to the kernel's node for "
                "files. For a small file, execute_code can write or read it in the kernel"
            )
        return node

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
        # "/" is no confinement (a server started from / by its MCP client): left out
        roots = [r for r in (workdir, Path.home().resolve()) if r != Path(r.anchor)]
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
    size = _source_size(source, cap)
    _prepare_target(target, overwrite)
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


class _NodeTransfer:
    """One transfer between the notebook directory and a job's node (see the module's
    docstring). Every node call runs in a worker thread, one at a time."""

    def __init__(self, node: Node, session: Session, cap: int, progress: Progress) -> None:
        self._node = node
        self._session = session
        self._cap = cap
        self._progress = progress

    async def upload(self, source: Path, remote_path: str, overwrite: bool) -> dict[str, Any]:
        size = await asyncio.to_thread(_source_size, source, self._cap)
        async with self._files() as files:
            target = await self._remote_path(files, remote_path)
            await _call(_check_target, files, target, overwrite)
            t0 = time.monotonic()
            done = await self._put(files, source, target, size, overwrite)
        return {**_report(source, target, done, t0), "node": self._node.where}

    async def download(self, remote_path: str, target: Path, overwrite: bool) -> dict[str, Any]:
        async with self._files() as files:
            source = await self._remote_path(files, remote_path)
            found = await _call(files.stat, source)
            if found is None or found.kind != "file":
                raise NotebookError(f"no file at {source} on {self._node.where}")
            if found.size > self._cap:
                raise _over_cap(posixpath.basename(source), found.size, self._cap)
            await asyncio.to_thread(_prepare_target, target, overwrite)
            t0 = time.monotonic()
            done = await self._get(files, source, found, target, overwrite)
        return {**_report(source, target, done, t0), "node": self._node.where}

    @contextlib.asynccontextmanager
    async def _files(self) -> AsyncIterator[NodeFiles]:
        files = await _call(self._node.files)
        try:
            yield files
        finally:
            await asyncio.shield(asyncio.to_thread(files.close))

    async def _remote_path(self, files: NodeFiles, user_path: str) -> str:
        """``user_path`` on the node, absolute and resolved, if it is in an allowed place."""
        if not user_path or "\x00" in user_path:
            raise NotebookError("remote_path must be a non-empty path without NUL bytes")
        cwd = await _call(self._node.kernel_cwd, self._session.kernel_id)
        home = await _call(files.home)
        if user_path.startswith("~") and not (user_path == "~" or user_path.startswith("~/")):
            raise NotebookError(
                f"remote_path {user_path!r}: only your own home (~/...) is allowed, not "
                "another user's (it is outside the places files may go)"
            )
        path = home + user_path[1:] if user_path.startswith("~") else user_path
        if not path.startswith("/"):
            if cwd is None:
                raise KernelError(
                    f"cannot find the working directory of session {self._session.id}'s kernel "
                    f"on {self._node.where} (is it still running? list_sessions shows it); an "
                    f"absolute remote_path under {home} works without it"
                )
            path = posixpath.join(cwd, path)
        roots = [cwd, home]
        if self._node.transfer_root:
            extra = self._node.transfer_root
            roots.append(home + extra[1:] if extra == "~" or extra.startswith("~/") else extra)
        return await _call(_allowed, files, path, [r for r in roots if r], user_path)

    async def _put(
        self, files: NodeFiles, source: Path, target: str, size: int, overwrite: bool
    ) -> int:
        folder, name = posixpath.split(target)
        partial = posixpath.join(folder, f".{name}.jlabgw-part-{uuid.uuid4().hex[:8]}")
        writer: NodeWriter | None = None
        published = False
        try:
            writer = await _call(files.create, partial)
            done = 0
            with source.open("rb") as reader:
                while chunk := await asyncio.to_thread(reader.read, _CHUNK):
                    done += len(chunk)
                    if done > self._cap:  # it grew while being copied
                        raise _grew(source.name, self._cap)
                    await _call(writer.write, chunk)
                    await self._progress(done, max(size, done), f"{_mib(done)} of {_mib(size)}")
            written = await _call(writer.finish)
            if written != done:
                raise NotebookError(
                    f"{target} on {self._node.where} has {written} bytes after {done} were "
                    "sent; nothing was kept"
                )
            await _call(writer.close)
            writer = None
            await _call(_publish_on_node, files, partial, target, overwrite)
            published = True
        except OSError as exc:
            raise NotebookError(f"copying {source.name} to {target} failed: {exc}") from exc
        finally:
            if writer is not None:
                await asyncio.shield(asyncio.to_thread(writer.close))
            if not published:
                await asyncio.shield(asyncio.to_thread(files.remove, partial))
        return done

    async def _get(
        self, files: NodeFiles, source: str, found: NodeStat, target: Path, overwrite: bool
    ) -> int:
        size = found.size
        partial = target.with_name(f".{target.name}.jlabgw-part-{uuid.uuid4().hex[:8]}")
        try:
            reader = await _call(files.open_read, source)
            try:
                done = await self._fetch(reader.read, source, size, partial)
                if await _call(reader.size) != size:
                    raise NotebookError(
                        f"{source} on {self._node.where} changed while being copied; nothing "
                        "was written"
                    )
            finally:
                await asyncio.shield(asyncio.to_thread(reader.close))
            await asyncio.to_thread(_publish, partial, target, overwrite)
        except OSError as exc:
            raise NotebookError(f"copying {source} to {target} failed: {exc}") from exc
        finally:
            _discard(partial)
        return done

    async def _fetch(
        self, read: Callable[[int, int], bytes], source: str, size: int, partial: Path
    ) -> int:
        done = 0
        with partial.open("xb") as writer:
            while done < size:
                chunk = await _call(read, done, min(_CHUNK, size - done))
                if not chunk:
                    raise NotebookError(
                        f"{source} on {self._node.where} shrank while being copied; nothing "
                        "was written"
                    )
                done += len(chunk)
                await asyncio.to_thread(writer.write, chunk)
                await self._progress(done, size, f"{_mib(done)} of {_mib(size)}")
            await asyncio.to_thread(_sync, writer)
        return done


async def _call(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` (a blocking node call) in a worker thread; a node's failure to read or
    write said as the tool's error."""
    try:
        return await asyncio.to_thread(fn, *args)
    except (NotebookError, KernelError, FileExistsError):
        raise
    except JlabgwError as exc:
        raise NotebookError(str(exc)) from exc


def _allowed(files: NodeFiles, path: str, roots: list[str], user_path: str) -> str:
    resolved = files.resolve(path)
    real_roots = [files.resolve(posixpath.normpath(r)) for r in roots]
    for root in real_roots:
        inside = resolved.startswith(root.rstrip("/") + "/")
        if inside and resolved != root:
            return resolved
    raise NotebookError(
        f"remote_path {user_path!r} is outside the places files may go on the kernel's side "
        f"on {files.where} ({', '.join(real_roots)}): a path relative to the kernel's "
        "working directory is simplest (JLABGW_TRANSFER_ROOT adds a scratch directory)"
    )


def _check_target(files: NodeFiles, target: str, overwrite: bool) -> None:
    found = files.stat(target)
    if found is not None and found.kind == "dir":
        raise NotebookError(f"{target} on {files.where} is a directory; name the file to write")
    if found is not None and not overwrite:
        raise NotebookError(f"{target} exists on {files.where}; pass overwrite=true to replace it")
    files.makedirs(posixpath.dirname(target))


def _publish_on_node(files: NodeFiles, partial: str, target: str, overwrite: bool) -> None:
    try:
        files.publish(partial, target, overwrite)
    except FileExistsError:
        raise NotebookError(
            f"{target} exists on {files.where}; pass overwrite=true to replace it"
        ) from None


def _source_size(source: Path, cap: int) -> int:
    if not source.is_file():
        raise NotebookError(f"no file at {source}")
    size = source.stat().st_size
    if size > cap:
        raise _over_cap(source.name, size, cap)
    return size


def _prepare_target(target: Path, overwrite: bool) -> None:
    if target.is_dir():
        raise NotebookError(f"{target} is a directory; name the file to write")
    if target.exists() and not overwrite:
        raise NotebookError(f"{target} exists; pass overwrite=true to replace it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NotebookError(f"cannot create {target.parent}: {exc.strerror}") from exc


def _report(source: object, target: object, done: int, t0: float) -> dict[str, Any]:
    return {
        "from": str(source),
        "to": str(target),
        "bytes": done,
        "seconds": round(time.monotonic() - t0, 3),
    }


def _over_cap(name: str, size: int, cap: int) -> NotebookError:
    return NotebookError(
        f"{name} is {_mib(size)}, over the transfer cap of {_mib(cap)} "
        "(JLABGW_TRANSFER_MAX_BYTES); nothing was copied"
    )


def _grew(name: str, cap: int) -> NotebookError:
    return NotebookError(
        f"{name} grew past the transfer cap of {_mib(cap)} while being copied; nothing was written"
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size:,} bytes"
