"""The thread that persists changed notebooks: validate, then replace the file atomically.

See :mod:`jlabgw.notebook.document` for the model; a write serialises only changed cells.
Before it, a person's edits saved since the last write are merged in (one ``os.stat`` when
there are none); while they cannot be, the session's view goes to ``name.jlabgw-conflict.ipynb``
and the person's file is left alone.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from functools import partial

import nbformat

from jlabgw.errors import NotebookError
from jlabgw.fsutil import atomic_write
from jlabgw.notebook.document import NotebookDoc

__all__ = ["NotebookWriter"]

log = logging.getLogger(__name__)

_RETRY_FIRST = 2.0  # seconds before a failed write is tried again; doubles up to _RETRY_MAX
_RETRY_MAX = 30.0
_RACES = 3  # a person saving while we serialise: merge again, this many times per write


class NotebookWriter:
    """Background thread that persists changed notebooks, newest version wins.

    After the first change it waits ``delay`` seconds for more (an execution changes its cell
    several times) so that the write happens once, after the reply, instead of competing with
    it for the GIL; a ``flush()`` cuts the wait short.
    """

    def __init__(self, delay: float = 0.25) -> None:
        self.delay = delay
        self._cond = threading.Condition()
        self._dirty: dict[int, NotebookDoc] = {}
        self._failed: dict[int, NotebookDoc] = {}  # last write failed; a retry is pending
        self._busy = 0
        self._urgent = 0
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="jlabgw-notebook-writer", daemon=True
        )
        self._thread.start()

    def schedule(self, doc: NotebookDoc) -> None:
        with self._cond:
            if id(doc) in self._dirty:
                return  # already pending: waking the writer again would only cost a GIL switch
            self._dirty[id(doc)] = doc
            self._cond.notify_all()

    def write_now(self, doc: NotebookDoc) -> None:
        """Write ``doc`` on the calling thread; raise :class:`NotebookError` on failure."""
        self._write(doc)
        if doc.write_error is not None:
            raise NotebookError(doc.write_error)

    def flush(self, doc: NotebookDoc | None = None, timeout: float = 30.0) -> None:
        """Wait until ``doc`` (or every notebook) is on disk at its current version."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._urgent += 1
            self._cond.notify_all()
            try:
                self._wait_written(doc, deadline, timeout)
            finally:
                self._urgent -= 1

    def _wait_written(self, doc: NotebookDoc | None, deadline: float, timeout: float) -> None:
        with self._cond:
            while True:
                pending = (
                    [doc] if doc is not None else [*self._dirty.values(), *self._failed.values()]
                )
                waiting = [d for d in pending if d.written_version < d.version]
                failed = [d for d in waiting if d.write_error and id(d) not in self._dirty]
                if failed:
                    raise NotebookError(failed[0].write_error or "notebook write failed")
                if not waiting and (doc is not None or self._busy == 0):
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NotebookError(
                        f"notebook writes did not finish within {timeout:.0f} s "
                        f"({', '.join(str(d.path) for d in waiting)})"
                    )
                self._cond.wait(remaining)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is pending and stop. A notebook that cannot be written is logged (its
        last good file stays); closing must go on for the others."""
        try:
            self.flush(timeout=timeout)
        except NotebookError:
            with self._cond:
                failed = [d for d in self._failed.values() if d.write_error]
            for doc in failed:
                log.error("unsaved changes lost at exit: %s", doc.write_error)
        finally:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._stopping:
                    self._cond.wait()
                if not self._dirty and self._stopping:
                    return
                coalesce_until = time.monotonic() + self.delay
                while not (self._urgent or self._stopping):
                    remaining = coalesce_until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = list(self._dirty.values())
                self._dirty.clear()
                self._busy += 1
            try:
                for doc in batch:
                    self._write(doc)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _write(self, doc: NotebookDoc) -> None:
        try:
            self._write_once(doc)
        finally:
            doc.write_finished()

    def _write_once(self, doc: NotebookDoc) -> None:
        try:
            for _ in range(_RACES):
                version, data = doc.serialize(writing=True)  # a person's edits merged first
                if version <= doc.written_version:
                    return
                # a conflict leaves the person's file as it is: the session's view goes next
                # to it; a save by a person while we serialised is merged first
                target = doc.write_target(version)
                if target is None:
                    continue
                if target != doc.path:
                    atomic_write(target, data)
                    doc.conflict_written()
                    break
                if not atomic_write(target, data, proceed=partial(_still, doc, version)):
                    continue  # a person saved while our temp file was written: merge it
                doc.wrote(version)
                break
            else:
                self._retry_soon(doc)
                return
        except nbformat.ValidationError as exc:
            doc.write_error = (
                f"not writing {doc.path}: the notebook would not validate ({exc.message}); "
                "the previous file is kept"
            )
            log.error("%s", doc.write_error)
            self._note_failure(doc)
        except OSError as exc:
            hint = " (disk full)" if exc.errno == errno.ENOSPC else ""
            doc.write_error = (
                f"cannot write {doc.path}: {exc.strerror}{hint}. The kernel and its state are "
                "fine; the previous file is kept whole, and the notebook is written again on "
                "the next change and retried every few seconds until it succeeds"
            )
            log.error("%s", doc.write_error)
            self._retry_later(doc)
        except Exception as exc:  # the writer thread must survive anything
            doc.write_error = f"not writing {doc.path}: {type(exc).__name__}: {exc}"
            log.exception("notebook writer: unexpected error for %s", doc.path)
            self._note_failure(doc)
        else:
            doc.written_version = version
            if doc.write_error is not None:
                log.warning("%s written again after an earlier failure", doc.path)
            doc.write_error = None
            doc.retry_delay = 0.0
            with self._cond:
                self._failed.pop(id(doc), None)

    def _retry_soon(self, doc: NotebookDoc) -> None:
        """The file kept changing under us (a person saving again and again): try later."""
        timer = threading.Timer(self.delay or 0.1, self.schedule, args=(doc,))
        timer.daemon = True
        timer.start()

    def _note_failure(self, doc: NotebookDoc) -> None:
        """Remember ``doc`` failed, so that ``flush()`` of all notebooks reports it."""
        with self._cond:
            self._failed[id(doc)] = doc

    def _retry_later(self, doc: NotebookDoc) -> None:
        """Try a failed write again after a growing delay (disk full, read-only for a while):
        the notebook must reach the disk once it can, even if no cell changes meanwhile."""
        self._note_failure(doc)
        with self._cond:
            if self._stopping:
                return
        doc.retry_delay = min(max(doc.retry_delay * 2, _RETRY_FIRST), _RETRY_MAX)
        timer = threading.Timer(doc.retry_delay, self.schedule, args=(doc,))
        timer.daemon = True
        timer.start()


def _still(doc: NotebookDoc, version: int) -> bool:
    """The notebook is still what ``version``'s merge check saw (nobody saved since)."""
    return doc.write_target(version) == doc.path
