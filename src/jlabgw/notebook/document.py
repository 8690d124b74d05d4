"""A notebook on disk and its in-memory nbformat 4.5 model, persisted by :mod:`.writer`.

Tool calls change the in-memory :class:`NotebookDoc` under its lock (so concurrent calls never
lose a cell) and bump its version; the :class:`NotebookWriter` thread notices, validates with
``nbformat.validate`` and replaces the file atomically (temp file, fsync, ``os.replace``). Writes
therefore stay off the reply path, coalesce under load, and a crash can only leave the previous
complete file, never a torn one. ``flush()`` waits for everything pending (used on shutdown
and when a caller needs the file on disk now).

The cost of a write must not grow with the notebook: every cell's JSON is cached, and an edit
names the cells it changes (``editing(cell)``), so a write serialises and validates only those
cells, plus the small top level, and joins the cached bytes of the rest. The file is
byte-for-byte what ``json.dumps(nb, sort_keys=True, indent=1)`` gives.

A person may edit the file meanwhile (JupyterLab, VS Code). After each write the file's
``(st_mtime_ns, st_size, st_ino)`` is kept with the cells' JSON as written (the *base*); before
the next write (and before a tool resolves a cell index, :meth:`NotebookDoc.sync`) one
``os.stat`` tells whether anyone else wrote the file. Only then is it read and merged, by cell
id (:mod:`.merge`): the person's version is the base, the agent's changes since the last
write go on top, and the model becomes the merged notebook. A merge that would lose someone's
work (the person deleted a cell the agent changed or is still recording into; the file is
not a valid notebook) leaves the person's file alone: the session's view goes to
``name.jlabgw-conflict.ipynb`` and :attr:`NotebookDoc.conflict` says so.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat
from nbformat import NotebookNode
from nbformat.corpus.words import generate_corpus_id

from jlabgw.errors import CellIndexError, NotebookError
from jlabgw.notebook.merge import MergeConflict, merge_into

if TYPE_CHECKING:
    from jlabgw.notebook.writer import NotebookWriter

__all__ = ["NotebookDoc"]

log = logging.getLogger(__name__)

_MAX_NAME_TRIES = 1000
_SETTLE_NS = 2_000_000_000  # a file unreadable for longer than this after its last change
# is not a save under way but a broken notebook (a conflict)


class NotebookDoc:
    """One notebook file and its in-memory model. Mutate only inside ``with doc.editing():``."""

    def __init__(self, path: Path, nb: NotebookNode, writer: NotebookWriter) -> None:
        self.path = path
        self.nb = nb
        self._writer = writer
        self._lock = threading.RLock()
        self.version = 0
        self.written_version = 0
        self.write_error: str | None = None
        self.retry_delay = 0.0  # seconds until a failed write is tried again (0: none pending)
        # id(cell) -> (cell, its JSON as it sits in the file, validated yet?). The cell is
        # kept so its id cannot be reused by another object while the entry exists.
        self._cache: dict[int, tuple[NotebookNode, bytes, bool]] = {}
        self._stale: set[int] = set()
        self._all_stale = True
        # What the file held when this process last wrote (or merged) it: its stat signature
        # and each cell's JSON by cell id (the base of a merge with a person's edits).
        self.conflict: str | None = None  # why the session's view is in conflict_path
        self._disk_sig: tuple[int, int, int] | None = None  # None: not written by us yet
        self._base: dict[str, bytes] = {}
        self._base_top: dict[str, bytes] = {}
        # what serialize() made: version, cells' and top level's JSON, size, in conflict?,
        # and the file's signature its merge check saw
        self._serialized: (
            tuple[
                int,
                dict[str, bytes],
                dict[str, bytes],
                int,
                bool,
                tuple[int, int, int] | None,
                bool,
            ]
            | None
        ) = None
        self._conflict_sig: tuple[int, int, int] | None = None  # the file a merge failed on
        self._checked_sig: tuple[int, int, int] | None = None  # the file the last sync saw
        self._in_flight = False  # the writer is between serialize(writing=True) and done
        self._conflict_shown = False  # the conflict file was written for the current conflict
        self._unsettled = False  # the file was unreadable and just modified: being saved?
        self._held: set[int] = set()  # id(cell) of cells still recording (running)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        stem: str,
        writer: NotebookWriter,
        cells: list[NotebookNode] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> NotebookDoc:
        """Create ``stem.ipynb`` (or ``stem-2.ipynb`` … if taken) and write it at once."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NotebookError(
                f"cannot create the notebook directory {directory}: {exc.strerror}"
            ) from exc
        nb = nbformat.v4.new_notebook(cells=cells or [], metadata=metadata or {})
        path = _reserve(directory, stem)
        doc = cls(path, nb, writer)
        doc.version = 1
        writer.write_now(doc)
        return doc

    @classmethod
    def open(cls, path: Path, writer: NotebookWriter) -> NotebookDoc:
        """Load an existing notebook, upgrading it to nbformat 4.5 (cell ids) in memory."""
        try:
            sig = _signature(path)
            nb = nbformat.read(path, as_version=4)
        except OSError as exc:
            raise NotebookError(f"cannot read {path}: {exc.strerror}") from exc
        except Exception as exc:  # nbformat raises several types for malformed files
            raise NotebookError(f"{path} is not a valid notebook: {exc}") from exc
        _remove_stale_temp_files(path)
        if nb.nbformat_minor < 5:
            nb.nbformat_minor = 5
        for cell in nb.cells:
            if "id" not in cell:
                cell["id"] = generate_corpus_id()
        try:
            nbformat.validate(nb)
        except nbformat.ValidationError as exc:
            raise NotebookError(f"{path} does not validate as nbformat 4: {exc.message}") from exc
        doc = cls(path, nb, writer)
        doc._adopt_disk(nb, sig)
        return doc

    # -- mutation ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def editing(self, *cells: NotebookNode) -> Iterator[NotebookNode]:
        """Hold the lock while changing ``nb``; a write is scheduled afterwards.

        ``cells``: the only cells this edit changes (a new cell needs no mention). With none
        named, anything may have changed and every cell is serialised again."""
        with self._lock:
            try:
                yield self.nb
            finally:
                self.version += 1
                if cells:
                    self._stale.update(id(cell) for cell in cells)
                else:
                    self._all_stale = True
        self._writer.schedule(self)

    @contextlib.contextmanager
    def reading(self) -> Iterator[NotebookNode]:
        """Hold the lock while reading ``nb`` (a consistent view; no write is scheduled)."""
        with self._lock:
            yield self.nb

    def append_cell(self, cell: NotebookNode) -> int:
        """Append ``cell``; its index in the notebook as it is on disk now (see :meth:`sync`)."""
        with self._lock:
            self._sync_locked()
            with self.editing(cell) as nb:  # the others' cached JSON stays right
                nb.cells.append(cell)
                return len(nb.cells) - 1

    def cell_index(self, index: int) -> int:
        """Normalise a possibly negative index; raise a helpful error when out of range.

        Indexes refer to the notebook as it is on disk now: a person's saved edits are merged
        in first (:meth:`sync`)."""
        with self._lock:
            self.sync()
            count = len(self.nb.cells)
        if -count <= index < count:
            return index % count
        if count == 0:
            raise CellIndexError(f"cell index {index} is out of range: the notebook has no cells")
        raise CellIndexError(
            f"cell index {index} is out of range: the notebook has {count} cells "
            f"(valid: 0..{count - 1}, or -1..-{count} from the end)"
        )

    def index_of(self, cell: NotebookNode) -> int:
        """Where ``cell`` is in the notebook as it is on disk now (see :meth:`sync`)."""
        with self._lock:
            self.sync()
            for index, other in enumerate(self.nb.cells):
                if other is cell:
                    return index
        raise CellIndexError(
            f"cell {cell.get('id')!r} is no longer in {self.path.name}: it was deleted from "
            "the file meanwhile"
        )

    def hold(self, cell: NotebookNode) -> None:
        """``cell`` is recording a run: a person deleting it is a conflict, and its outputs
        are the session's (a person's stale copy of them never replaces them)."""
        with self._lock:
            self._held.add(id(cell))

    def release(self, cell: NotebookNode) -> None:
        with self._lock:
            self._held.discard(id(cell))

    @property
    def conflict_path(self) -> Path:
        """Where the session's view goes while it cannot be merged into the person's file."""
        return self.path.with_name(f"{self.path.stem}.jlabgw-conflict.ipynb")

    # -- a person's edits ----------------------------------------------------------------------

    def sync(self) -> bool:
        """Merge a person's saved edits into the model if the file changed since this process
        last wrote it: one ``os.stat`` when it did not. True if the model changed."""
        with self._lock:
            return self._sync_locked()

    def _sync_locked(self, writing: bool = False) -> bool:
        if self._disk_sig is None:
            return False  # never written by us: nothing to compare with
        if self._in_flight and not writing:
            return False  # the file is changing under our own write: the writer checks it
        try:
            sig: tuple[int, int, int] | None = _signature(self.path)
        except OSError:
            sig = None  # gone (written again whole) or unreadable (the write reports it)
        self._checked_sig = sig
        self._unsettled = False
        # the person deleted the conflict file: their version wins what conflicted
        theirs_win = self._conflict_shown and not self.conflict_path.exists()
        if sig is None or (sig == self._disk_sig and not theirs_win):
            return False
        if sig == self._conflict_sig and not theirs_win:
            return False  # same file as the failed merge: still a conflict
        try:
            theirs = _read_notebook(self.path)
        except OSError:
            return False  # not a file we can read (a directory …): the write reports it
        except Exception as exc:  # a half-saved file, not JSON, not a notebook …
            if time.time_ns() - sig[0] < _SETTLE_NS:
                self._unsettled = True  # an editor saving in place right now: look again soon
                return False
            return self._set_conflict(
                sig, f"{self.path.name} is no longer a valid notebook ({exc})"
            )
        try:
            differ = merge_into(
                self.nb,
                theirs,
                base=self._base,
                base_top=self._base_top,
                current=self._current_bytes,
                held=self._held,
                theirs_win=theirs_win,
            )
        except MergeConflict as exc:
            return self._set_conflict(sig, str(exc))
        log.warning("%s was edited outside jlabgw; merged the edits into the session", self.path)
        self._adopt_disk(theirs, sig)
        # the cells that are now exactly the person's are cached as the file holds them
        self._cache = {
            id(c): (c, self._base[str(c.id)], True)
            for c in self.nb.cells
            if id(c) not in differ and str(c.get("id")) in self._base
        }
        self._stale.clear()
        self._all_stale = False
        changed = bool(differ) or any(
            _dumps(v, depth=1) != self._base_top.get(k) for k, v in self.nb.items() if k != "cells"
        )
        if self.conflict is not None:
            log.warning("%s: the conflict is resolved; writing the file again", self.path)
            self.conflict = None
            self._conflict_sig = None
            self._conflict_shown = False
            changed = True
        if changed or self.version > self.written_version:
            self.version += 1  # the merged notebook differs from the file: write it
            self._writer.schedule(self)
        return True

    def _set_conflict(self, sig: tuple[int, int, int] | None, why: str) -> bool:
        self._conflict_sig = sig
        message = (
            f"{why}. jlabgw does not overwrite {self.path.name}: your file is kept as it is, "
            f"and the session's cells and outputs are written to {self.conflict_path.name} "
            "instead, next to it. To go on: undo the change in your editor and save, and the "
            f"session merges into {self.path.name} again; or copy what you need from "
            f"{self.conflict_path.name} and delete it, and your version of {self.path.name} "
            "wins (the session's changes that conflicted are dropped)"
        )
        if message != self.conflict:
            log.warning("%s", message)
        self.conflict = message
        return False

    def _current_bytes(self, cell: NotebookNode) -> bytes:
        """``cell``'s JSON as the next write would put it in the file."""
        key = id(cell)
        entry = self._cache.get(key)
        if entry is not None and not self._all_stale and key not in self._stale:
            return entry[1]
        return _dumps(cell, depth=2)

    def _adopt_disk(self, nb: NotebookNode, sig: tuple[int, int, int]) -> None:
        """``nb`` (read from the file with signature ``sig``) is what the file holds now."""
        self._base = {}
        for cell in nb.cells:
            if "id" in cell:
                self._base[str(cell.id)] = _dumps(cell, depth=2)
        self._base_top = {k: _dumps(v, depth=1) for k, v in nb.items() if k != "cells"}
        self._disk_sig = sig

    def wrote(self, version: int) -> None:
        """The writer put ``version``, as last serialised, in the file: it is the new base."""
        with self._lock:
            done = self._serialized
            if done is None or done[0] != version:
                self._disk_sig = (0, 0, 0)  # not known what the file holds: compare next time
                return
            self._serialized = None
            size = done[3]
            self._base, self._base_top = done[1], done[2]
            try:
                sig = _signature(self.path)
            except OSError:
                sig = (0, 0, 0)
            # someone wrote between our replace and this stat: never mistake it for ours
            self._disk_sig = sig if sig[1] == size else (0, 0, 0)

    def conflict_written(self) -> None:
        """The writer put the session's view in the conflict file."""
        with self._lock:
            self._conflict_shown = self.conflict is not None

    def write_finished(self) -> None:
        """The writer is done with the file (written or not): others may check it again."""
        with self._lock:
            self._in_flight = False

    def write_target(self, version: int) -> Path | None:
        """Where the writer puts ``version``, just serialised: the notebook, or the conflict
        file while the person's edits cannot be merged. None: serialise again, the file
        changed since (a person saved while the write was being prepared)."""
        with self._lock:
            done = self._serialized
            if done is None or done[0] != version:
                return None
            conflict, seen = done[4], done[5]
            if done[6]:
                return None  # being saved by an editor: try again in a moment
            if conflict:
                return self.conflict_path
            if self._disk_sig is None:
                return self.path
            try:
                sig: tuple[int, int, int] | None = _signature(self.path)
            except OSError:
                sig = None
            return self.path if sig == seen else None

    def snapshot(self) -> tuple[int, NotebookNode]:
        """A deep copy of the model and its version (for forking or reading without the lock)."""
        with self._lock:
            return self.version, copy.deepcopy(self.nb)

    def serialize(self, *, writing: bool = False) -> tuple[int, list[bytes]]:
        """The file's bytes, in parts; raise ``nbformat.ValidationError`` if invalid.

        ``writing``: the writer's call; a person's saved edits are merged in first, and other
        threads leave the file's check to it until :meth:`write_finished`.

        Under the lock (tool calls wait for it): ``json.dumps`` of the changed cells and of the
        small top level, and a copy of what was dumped with long strings emptied (the schema
        only needs their type). Outside it, the costlier half: validating that copy, the top
        level and the changed cells together, against the full notebook schema.
        """
        with self._lock:
            if writing:  # the writer's: merge a person's edits first (see write_finished)
                self._sync_locked(writing=True)
                self._in_flight = True
            conflict, seen = self.conflict is not None, self._checked_sig
            unsettled = self._unsettled
            version = self.version
            cache: dict[int, tuple[NotebookNode, bytes, bool]] = {}
            parts: list[bytes] = []
            by_id: dict[str, bytes] = {}
            unchecked: list[tuple[int, bytes, Any]] = []
            for cell in self.nb.cells:
                key = id(cell)
                entry = self._cache.get(key)
                if entry is None or self._all_stale or key in self._stale:
                    entry = (cell, _dumps(cell, depth=2), False)
                if not entry[2]:
                    unchecked.append((key, entry[1], _skeleton(cell)))
                cache[key] = entry
                parts.append(entry[1])
                if "id" in cell:
                    by_id[str(cell.id)] = entry[1]
            self._cache = cache
            self._stale.clear()
            self._all_stale = False
            top = {
                k: (_dumps(v, depth=1), _skeleton(v)) for k, v in self.nb.items() if k != "cells"
            }
        try:
            partial = {k: skeleton for k, (_, skeleton) in top.items()}
            partial["cells"] = [skeleton for _, _, skeleton in unchecked]
            nbformat.validate(partial)
        except nbformat.ValidationError:
            with self._lock:  # check them again next time: they were never written
                self._stale.update(key for key, _, _ in unchecked)
            raise
        with self._lock:
            for key, data, _ in unchecked:
                entry = self._cache.get(key)
                if entry is not None and entry[1] is data:
                    self._cache[key] = (entry[0], data, True)
        top_bytes = {k: dumped for k, (dumped, _) in top.items()}
        whole = _join(top_bytes, parts)
        with self._lock:
            size = sum(len(p) for p in whole)
            self._serialized = (version, by_id, top_bytes, size, conflict, seen, unsettled)
        return version, whole

    def flush(self, timeout: float = 30.0) -> None:
        self._writer.flush(self, timeout)


def _signature(path: Path) -> tuple[int, int, int]:
    """What tells a file's versions apart without reading it."""
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read_notebook(path: Path) -> NotebookNode:
    """The file as a person's editor saved it: a valid nbformat 4.5 notebook, or an error."""
    nb: NotebookNode = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    if nb.nbformat_minor < 5 or any("id" not in cell for cell in nb.cells):
        raise ValueError("it was saved without cell ids (nbformat older than 4.5)")
    return nb


def _dumps(value: Any, depth: int) -> bytes:
    """``value`` as ``json.dumps(..., indent=1)`` writes it ``depth`` levels deep in a file.

    Plain json.dumps: 5x cheaper than nbformat.v4.writes (no deep copy to split strings into
    line lists); nbformat reads both forms. JSON strings hold no raw newlines, so indenting
    every line is exact."""
    text = json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False)
    if depth:
        text = text.replace("\n", "\n" + " " * depth)
    return text.encode()


def _skeleton(value: Any) -> Any:
    """A plain copy of ``value`` with long strings emptied, for validation: the schema only
    cares that they are strings, and jsonschema's ``oneOf`` error messages ``repr()`` the
    whole of a rejected value (27 ms per 10 MB output)."""
    if isinstance(value, dict):
        return {str(k): _skeleton(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_skeleton(v) for v in value]
    if isinstance(value, str) and len(value) > 4096:
        return ""
    return value


def _join(top: dict[str, bytes], cells: list[bytes]) -> list[bytes]:
    """The whole file, in parts, from the top-level values' and the cells' JSON."""
    parts: list[bytes] = [b"{\n "]
    for n, key in enumerate(sorted([*top, "cells"])):
        if n:
            parts.append(b",\n ")
        parts.append(json.dumps(key).encode() + b": ")
        if key != "cells":
            parts.append(top[key])
        elif not cells:
            parts.append(b"[]")
        else:
            parts.append(b"[\n  ")
            for i, cell in enumerate(cells):
                parts.extend((b",\n  ", cell) if i else (cell,))
            parts.append(b"\n ]")
    parts.append(b"\n}\n")
    return parts


_STALE_TEMP_AGE = 300.0  # seconds; a write takes well under one


def _remove_stale_temp_files(path: Path) -> None:
    """Temp files of writes a killed process never finished (the notebook itself is intact)."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > _STALE_TEMP_AGE:
                tmp.unlink()
                log.info("removed %s, left by an interrupted write", tmp)


def _reserve(directory: Path, stem: str) -> Path:
    for n in range(1, _MAX_NAME_TRIES + 1):
        path = directory / (f"{stem}.ipynb" if n == 1 else f"{stem}-{n}.ipynb")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise NotebookError(f"cannot create {path}: {exc.strerror}") from exc
        os.close(fd)
        return path
    raise NotebookError(f"too many notebooks named {stem}-N.ipynb in {directory}")
