"""Which batch job this user's servers share, and which of them still hold it (leases).

Two servers of one user (Claude Desktop and Claude Code side by side) start with the same
settings, so the same job name: they share that job, and the record here (``slurm-NAME.json``
in the state dir, 0600) says which job it is and who holds it. Every read-modify-write is done
under an exclusive ``flock`` on ``NAME.lock`` beside it, so two servers starting at once submit
one job between them, and a server leaving decides alone whether it was the last.

A holder is a process (:func:`~jlabgw.processes.this_owner`: pid and start time, so a recycled
pid does not pass for it). A holder that was SIGKILLed cannot remove its lease; its lease is
void once its process is gone, so it never keeps the job from being cancelled by the last
live holder. (If every holder was killed, nobody cancels: the job's own idle timeout ends it.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jlabgw.fsutil import ensure_private_dir, locked, write_private_file
from jlabgw.processes import owner_alive, this_owner

__all__ = ["JobLeases", "JobRecord"]

log = logging.getLogger(__name__)


@dataclass
class JobRecord:
    """What the file holds: the job, where its scheduler runs, its live holders."""

    job_id: str | None = None
    where: str | None = None
    holders: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: bytes) -> JobRecord:
        try:
            data = json.loads(raw)
        except ValueError:
            return cls()
        if not isinstance(data, dict) or not data.get("job_id"):
            return cls()
        holders = data.get("holders")
        return cls(
            job_id=str(data["job_id"]),
            where=str(data["where"]) if data.get("where") else None,
            holders=[h for h in holders if isinstance(h, dict)]
            if isinstance(holders, list)
            else [],
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {"job_id": self.job_id, "where": self.where, "holders": self.holders}, indent=1
        ).encode()


class JobLeases:
    """The shared record of one job name on this machine, as seen by one holder (``owner``)."""

    def __init__(self, path: Path, owner: dict[str, str] | None = None) -> None:
        self.path = path
        self.owner = owner or this_owner()

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _read(self) -> JobRecord:
        """The record; none if there is no file. Other read errors propagate: a record that
        cannot be read must not pass for "nobody holds the job"."""
        try:
            return JobRecord.parse(self.path.read_bytes())
        except FileNotFoundError:
            return JobRecord()

    def _write(self, record: JobRecord) -> None:
        ensure_private_dir(self.path.parent)
        write_private_file(self.path, record.to_json())

    def _live(self, record: JobRecord) -> list[dict[str, str]]:
        """The holders other than us whose process still runs."""
        return [h for h in record.holders if h != self.owner and owner_alive(h)]

    def recorded(self) -> JobRecord:
        """The record as it is now (holders not pruned)."""
        with locked(self.lock_path):
            return self._read()

    def acquire(
        self, usable: Callable[[str], bool], submit: Callable[[], str], where: str
    ) -> tuple[str, bool]:
        """The recorded job if ``usable(job_id)`` says it still runs under our name, else
        ``submit()``'s; we hold it either way. Returns (job id, whether it was reused).
        ``usable`` and ``submit`` run under the lock: two servers never submit two jobs."""
        with locked(self.lock_path):
            record = self._read()
            reused = (
                bool(record.job_id)
                and record.where in (None, where)  # the same name on another cluster is not it
                and usable(str(record.job_id))
            )
            if reused:
                holders = self._live(record)
            else:
                record = JobRecord(job_id=submit(), where=where)
                holders = []
            record.holders = [*holders, self.owner]
            assert record.job_id is not None
            try:
                self._write(record)
            except OSError as exc:  # the job is ours all the same: never orphan a submission
                log.warning("cannot record batch job %s in %s: %s", record.job_id, self.path, exc)
            return record.job_id, reused

    def others(self, job_id: str | None) -> list[dict[str, str]]:
        """The other live holders of ``job_id`` (none if the record is of another job). Read
        without the lock (the file is replaced atomically): a status update must not wait
        for another server's sbatch under it."""
        try:
            record = self._read()
        except OSError:
            return []
        return self._live(record) if record.job_id == job_id and job_id else []

    def release(self, job_id: str, last: Callable[[], None] | None = None) -> list[dict[str, str]]:
        """Give up our lease on ``job_id``. If no live holder is left, ``last()`` runs (under
        the lock: nobody can take the job up meanwhile; it cancels the job) and the record
        goes. Returns the live holders left (then ``last`` did not run). If the record cannot
        be read, nobody can tell whether another server holds the job: it is not cancelled
        (its idle timeout ends it), and an unknown holder is returned."""
        try:
            return self._release(job_id, last)
        except OSError as exc:
            log.warning(
                "cannot read or update the lease record %s (%s): batch job %s is left to its "
                "idle timeout",
                self.path,
                exc,
                job_id,
            )
            return [{"host": "?", "process": "unknown (the lease record is unreadable)"}]

    def _release(self, job_id: str, last: Callable[[], None] | None) -> list[dict[str, str]]:
        with locked(self.lock_path):
            record = self._read()
            if record.job_id != job_id:
                if last is not None:  # the record is of another job: ours is ours alone
                    last()
                return []
            others = self._live(record)
            if others:
                record.holders = others
                self._write(record)
                return others
            if last is not None:
                last()
                self.path.unlink(missing_ok=True)
            else:  # leave the job (kept): the record stays for the next server to reuse
                record.holders = []
                self._write(record)
            return []

    def forget(self, job_id: str | None) -> None:
        """The job ended: drop the record (if it is still of that job)."""
        with locked(self.lock_path):
            if job_id is None or self._read().job_id == job_id:
                self.path.unlink(missing_ok=True)


def describe_holders(holders: list[dict[str, Any]]) -> str:
    """``pid 12, pid 34`` for messages."""
    return (
        ", ".join("pid " + str(h.get("process", "?")).partition(":")[0] for h in holders) or "none"
    )
