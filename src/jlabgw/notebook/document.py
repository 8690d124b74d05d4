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

if TYPE_CHECKING:
    from jlabgw.notebook.writer import NotebookWriter

__all__ = ["NotebookDoc"]

log = logging.getLogger(__name__)

_MAX_NAME_TRIES = 1000


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
        return cls(path, nb, writer)

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
        with self.editing() as nb:
            nb.cells.append(cell)
            return len(nb.cells) - 1

    def cell_index(self, index: int) -> int:
        """Normalise a possibly negative index; raise a helpful error when out of range."""
        with self._lock:
            count = len(self.nb.cells)
        if -count <= index < count:
            return index % count
        if count == 0:
            raise CellIndexError(f"cell index {index} is out of range: the notebook has no cells")
        raise CellIndexError(
            f"cell index {index} is out of range: the notebook has {count} cells "
            f"(valid: 0..{count - 1}, or -1..-{count} from the end)"
        )

    def snapshot(self) -> tuple[int, NotebookNode]:
        """A deep copy of the model and its version (for forking or reading without the lock)."""
        with self._lock:
            return self.version, copy.deepcopy(self.nb)

    def serialize(self) -> tuple[int, list[bytes]]:
        """The file's bytes, in parts; raise ``nbformat.ValidationError`` if invalid.

        Under the lock (tool calls wait for it): ``json.dumps`` of the changed cells and of the
        small top level, and a copy of what was dumped with long strings emptied (the schema
        only needs their type). Outside it, the costlier half: validating that copy, the top
        level and the changed cells together, against the full notebook schema.
        """
        with self._lock:
            version = self.version
            cache: dict[int, tuple[NotebookNode, bytes, bool]] = {}
            parts: list[bytes] = []
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
        return version, _join({k: dumped for k, (dumped, _) in top.items()}, parts)

    def flush(self, timeout: float = 30.0) -> None:
        self._writer.flush(self, timeout)


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
