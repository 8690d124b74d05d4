"""What the notebook file held when this process last wrote it, and a person's edits since.

After each write the file's ``(st_mtime_ns, st_size, st_ino)`` is kept with the cells' JSON as
written (the *base*); before the next write (and before a tool resolves a cell index) one
``os.stat`` tells whether anyone else wrote the file. Only then is it read and merged, by cell
id (:mod:`.merge`). A merge that would lose someone's work leaves the person's file alone: the
session's view goes to ``name.jlabgw-conflict.ipynb`` and :attr:`DiskSync.conflict` says so.

:class:`DiskSync` is owned by a :class:`~.document.NotebookDoc` and works under its lock.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from nbformat import NotebookNode

from jlabgw.notebook import files
from jlabgw.notebook.merge import MergeConflict, merge_into

if TYPE_CHECKING:
    from jlabgw.notebook.document import NotebookDoc

__all__ = ["DiskSync", "Serialized"]

log = logging.getLogger(__name__)

_SETTLE_NS = 2_000_000_000  # a file unreadable for longer than this after its last change
# is not a save under way but a broken notebook (a conflict)

Signature = tuple[int, int, int]
# what serialize() made: version, cells' and top level's JSON, size, in conflict?, the file's
# signature its merge check saw, and whether the file was being saved by an editor
Serialized = tuple[int, dict[str, bytes], dict[str, bytes], int, bool, Signature | None, bool]


class DiskSync:
    """The file's side of one :class:`NotebookDoc`: base, signatures, conflict state."""

    def __init__(self, doc: NotebookDoc) -> None:
        self._doc = doc
        # What the file held when this process last wrote (or merged) it: its stat signature
        # and each cell's JSON by cell id (the base of a merge with a person's edits).
        self.conflict: str | None = None  # why the session's view is in conflict_path
        self._disk_sig: Signature | None = None  # None: not written by us yet
        self._base: dict[str, bytes] = {}
        self._base_top: dict[str, bytes] = {}
        self.serialized: Serialized | None = None
        self._conflict_sig: Signature | None = None  # the file a merge failed on
        self.checked_sig: Signature | None = None  # the file the last sync saw
        self.in_flight = False  # the writer is between serialize(writing=True) and done
        self._conflict_shown = False  # the conflict file was written for the current conflict
        self.unsettled = False  # the file was unreadable and just modified: being saved?
        self.held: set[int] = set()  # id(cell) of cells still recording (running)

    @property
    def path(self) -> Path:
        return self._doc.path

    @property
    def conflict_path(self) -> Path:
        """Where the session's view goes while it cannot be merged into the person's file."""
        return self.path.with_name(f"{self.path.stem}.jlabgw-conflict.ipynb")

    def sync_locked(self, writing: bool = False) -> bool:
        """:meth:`NotebookDoc.sync`, with the document's lock held."""
        doc = self._doc
        if self._disk_sig is None:
            return False  # never written by us: nothing to compare with
        if self.in_flight and not writing:
            return False  # the file is changing under our own write: the writer checks it
        try:
            sig: Signature | None = files.signature(self.path)
        except OSError:
            sig = None  # gone (written again whole) or unreadable (the write reports it)
        self.checked_sig = sig
        self.unsettled = False
        # the person deleted the conflict file: their version wins what conflicted
        theirs_win = self._conflict_shown and not self.conflict_path.exists()
        if sig is None or (sig == self._disk_sig and not theirs_win):
            return False
        if sig == self._conflict_sig and not theirs_win:
            return False  # same file as the failed merge: still a conflict
        try:
            theirs = files.read_notebook(self.path)
        except OSError:
            return False  # not a file we can read (a directory …): the write reports it
        except Exception as exc:  # a half-saved file, not JSON, not a notebook …
            if time.time_ns() - sig[0] < _SETTLE_NS:
                self.unsettled = True  # an editor saving in place right now: look again soon
                return False
            return self._set_conflict(
                sig, f"{self.path.name} is no longer a valid notebook ({exc})"
            )
        try:
            differ = merge_into(
                doc.nb,
                theirs,
                base=self._base,
                base_top=self._base_top,
                current=doc.current_bytes,
                held=self.held,
                theirs_win=theirs_win,
            )
        except MergeConflict as exc:
            return self._set_conflict(sig, str(exc))
        log.warning("%s was edited outside jlabgw; merged the edits into the session", self.path)
        self.adopt(theirs, sig)
        # the cells that are now exactly the person's are cached as the file holds them
        doc.recache(
            {
                id(c): (c, self._base[str(c.id)], True)
                for c in doc.nb.cells
                if id(c) not in differ and str(c.get("id")) in self._base
            }
        )
        changed = bool(differ) or any(
            files.dumps(v, depth=1) != self._base_top.get(k)
            for k, v in doc.nb.items()
            if k != "cells"
        )
        if self.conflict is not None:
            log.warning("%s: the conflict is resolved; writing the file again", self.path)
            self.conflict = None
            self._conflict_sig = None
            self._conflict_shown = False
            changed = True
        if changed or doc.version > doc.written_version:
            doc.version += 1  # the merged notebook differs from the file: write it
            doc._writer.schedule(doc)
        return True

    def _set_conflict(self, sig: Signature | None, why: str) -> bool:
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

    def adopt(self, nb: NotebookNode, sig: Signature) -> None:
        """``nb`` (read from the file with signature ``sig``) is what the file holds now."""
        self._base = {}
        for cell in nb.cells:
            if "id" in cell:
                self._base[str(cell.id)] = files.dumps(cell, depth=2)
        self._base_top = {k: files.dumps(v, depth=1) for k, v in nb.items() if k != "cells"}
        self._disk_sig = sig

    def wrote(self, version: int) -> None:
        """:meth:`NotebookDoc.wrote`, with the document's lock held."""
        done = self.serialized
        if done is None or done[0] != version:
            self._disk_sig = (0, 0, 0)  # not known what the file holds: compare next time
            return
        self.serialized = None
        size = done[3]
        self._base, self._base_top = done[1], done[2]
        try:
            sig = files.signature(self.path)
        except OSError:
            sig = (0, 0, 0)
        # someone wrote between our replace and this stat: never mistake it for ours
        self._disk_sig = sig if sig[1] == size else (0, 0, 0)

    def conflict_written(self) -> None:
        """:meth:`NotebookDoc.conflict_written`, with the document's lock held."""
        self._conflict_shown = self.conflict is not None

    def write_target(self, version: int) -> Path | None:
        """:meth:`NotebookDoc.write_target`, with the document's lock held."""
        done = self.serialized
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
            sig: Signature | None = files.signature(self.path)
        except OSError:
            sig = None
        return self.path if sig == seen else None
