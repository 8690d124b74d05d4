"""Which notebooks the sessions of this user's servers hold, so that two servers never record
into one notebook.

A session records every cell into its notebook; a second session on the same file, in another
server of the same user (Claude Desktop and Claude Code side by side), would interleave two
kernels' cells in one file. Within one server the session table refuses that; across servers
this file does (``notebooks.json`` in the state dir, 0600, every change a read-modify-write
under an exclusive ``flock``). An entry whose server is gone (SIGKILLed: it could not remove
it) is void, so a crash on this host never locks a notebook for good. A server on another host
(a state dir on a home shared between machines) cannot be checked from here and counts as
alive: its entry has to be removed from the file by hand if that host crashed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from jlabgw.errors import SessionBusyError
from jlabgw.fsutil import locked, write_private_file
from jlabgw.processes import describe_owner, owner_alive, this_owner

__all__ = ["NotebookHolds"]

log = logging.getLogger(__name__)

Entry = dict[str, Any]


class NotebookHolds:
    """The shared record of held notebooks, as seen by one server (``owner``)."""

    def __init__(self, path: Path, owner: dict[str, str] | None = None) -> None:
        self.path = path
        self.owner = owner or this_owner()

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _read(self) -> dict[str, Entry]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable notebook holds file %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            k: v
            for k, v in data.items()
            if isinstance(v, dict) and owner_alive(v.get("owner"))  # a dead server's are void
        }

    def _write(self, entries: dict[str, Entry]) -> None:
        if entries:
            write_private_file(self.path, json.dumps(entries, indent=1).encode())
        else:
            self.path.unlink(missing_ok=True)

    def holder(self, notebook: Path) -> Entry | None:
        """Another live server's hold on ``notebook``, if any."""
        with locked(self.lock_path):
            entry = self._read().get(str(notebook))
        return entry if entry and entry.get("owner") != self.owner else None

    def refuse_if_held(self, notebook: Path) -> None:
        entry = self.holder(notebook)
        if entry is not None:
            raise SessionBusyError(_held_message(notebook, entry))

    def take(self, notebook: Path, session_id: str) -> None:
        """Hold ``notebook`` for ``session_id``; raises if another live server holds it."""
        with locked(self.lock_path):
            entries = self._read()
            entry = entries.get(str(notebook))
            if entry and entry.get("owner") != self.owner:
                raise SessionBusyError(_held_message(notebook, entry))
            entries[str(notebook)] = {
                "owner": self.owner,
                "session_id": session_id,
                "since": time.time(),
            }
            self._write(entries)

    def release(self, notebook: Path) -> None:
        """Let go of ``notebook`` (if this server holds it)."""
        with locked(self.lock_path):
            entries = self._read()
            entry = entries.get(str(notebook))
            if entry and entry.get("owner") == self.owner:
                del entries[str(notebook)]
                self._write(entries)

    def release_all(self) -> None:
        """Let go of every notebook this server holds (at exit)."""
        with locked(self.lock_path):
            entries = self._read()
            kept = {k: v for k, v in entries.items() if v.get("owner") != self.owner}
            if kept != entries:
                self._write(kept)


def _held_message(notebook: Path, entry: Entry) -> str:
    since = entry.get("since")
    when = (
        time.strftime(" since %H:%M", time.localtime(since))
        if isinstance(since, (int, float))
        else ""
    )
    return (
        f"{notebook.name} is in use by session {entry.get('session_id', '?')} of another "
        f"{describe_owner(entry.get('owner'))}{when} (`jlabgw status` lists it). Use that "
        "session from the client that started it, shut it down there, or fork a copy here "
        "with start_session_continue_notebook"
    )
