"""qsub / qstat / qdel of (Son of) Grid Engine through a :class:`~jlabgw.cluster.host.Host`.

The same shape as :class:`~jlabgw.cluster.slurm.client.SlurmClient`, and the same
:class:`~jlabgw.cluster.scheduler.JobStatus`: Grid Engine's state letters are mapped onto
the (SLURM) state names the rest of jlabgw reads (``PENDING``, ``RUNNING``, ``SUSPENDED`` ...),
the letters themselves lead the ``reason`` (``"Eqw: can't stat() ..."``), and a job qstat no
longer lists is ``GONE`` (ended: qacct lags ~15 s behind and is often not readable by users).

Parsers are pure functions tested on outputs captured from a real SGE 8.1.9 (tests/golden/).
``qstat -xml`` comes from the cluster, which is trusted but not our code: a DTD is refused
before parsing (expat would expand internal entities), and any output that is not the expected
XML becomes a :class:`~jlabgw.errors.BackendError`. qstat prints times in the login node's
local time zone, so it is run with ``TZ=UTC`` and the times read as UTC.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from jlabgw.cluster.host import Host
from jlabgw.cluster.scheduler import JobStatus
from jlabgw.errors import BackendError, CommandError

__all__ = [
    "GridEngineClient",
    "QstatJob",
    "hopeless_reason",
    "parse_ge_duration",
    "parse_qstat_job_details",
    "parse_qstat_xml",
    "parse_qsub_output",
    "to_job_status",
]

# qstat with times in UTC (they carry no zone), and the -r columns (h_rt, full name)
QSTAT = ["env", "TZ=UTC", "qstat", "-xml", "-r"]
_MAX_REASON = 300

_DETAILS = {
    "E": "error state",
    "h": "held",
    "s": "suspended",
    "S": "queue suspended",
    "T": "suspended by a queue threshold",
    "d": "being deleted",
    "t": "being transferred to its execution host",
    "R": "restarted",
}


@dataclass(frozen=True)
class QstatJob:
    """One ``<job_list>`` entry of ``qstat -xml -r``."""

    job_id: str
    code: str  # Grid Engine's state letters: qw, hqw, r, t, Eqw, dr, s ...
    name: str = ""
    owner: str = ""
    queue: str = ""  # queue instance, "all.q@node17"; "" while pending
    slots: int | None = None
    start_time: float | None = None  # epoch seconds, while running
    h_rt: int | None = None  # seconds, when the job asked for a run-time limit


def parse_qsub_output(stdout: str) -> str:
    """The job id from ``qsub -terse`` (``7``, or ``7.1-10:1`` for an array job) or from
    plain qsub's ``Your job 7 ("name") has been submitted``."""
    text = stdout.strip()
    first = text.splitlines()[0].strip() if text else ""
    if re.fullmatch(r"\d+(\.\S*)?", first):
        return first.split(".", 1)[0]
    found = re.search(r"Your job(?:-array)? (\d+)", text)
    if found:
        return found.group(1)
    raise BackendError(f"qsub did not print a job id (got {text[:200]!r})")


def parse_ge_duration(text: str) -> int | None:
    """A Grid Engine time value (``3600``, ``1:00:00``, ``0:10:0``) in seconds; None for
    ``INFINITY`` or anything else."""
    parts = text.strip().split(":")
    if not text.strip() or len(parts) > 3 or not all(p.isdigit() for p in parts):
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds


def _xml_root(text: str, what: str) -> ET.Element:
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise BackendError(f"{what} printed XML with a DTD; refusing to parse it")
    try:
        return ET.fromstring(text)  # noqa: S314 - no DTD (checked above); from the cluster
    except ET.ParseError as exc:
        raise BackendError(f"{what} printed something that is not XML: {text[:200]!r}") from exc


def _utc_epoch(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def parse_qstat_xml(text: str) -> list[QstatJob]:
    """The jobs of ``qstat -xml [-r]`` (run with TZ=UTC), running ones first."""
    root = _xml_root(text, "qstat -xml")
    if root.tag != "job_info":
        raise BackendError(f"qstat -xml printed <{root.tag}>, not <job_info>")
    jobs = []
    for entry in root.iter("job_list"):
        job_id = (entry.findtext("JB_job_number") or "").strip()
        code = (entry.findtext("state") or "").strip()
        if not job_id.isdigit() or not code:
            raise BackendError(f"qstat -xml listed a job without number or state: {job_id!r}")
        h_rt = None
        for request in entry.iter("hard_request"):
            if request.get("name") == "h_rt":
                h_rt = parse_ge_duration(request.text or "")
        start = entry.findtext("JAT_start_time")
        jobs.append(
            QstatJob(
                job_id=job_id,
                code=code,
                name=(entry.findtext("full_job_name") or entry.findtext("JB_name") or "").strip(),
                owner=(entry.findtext("JB_owner") or "").strip(),
                queue=(entry.findtext("queue_name") or "").strip(),
                slots=_int(entry.findtext("slots")),
                start_time=_utc_epoch(start) if start else None,
                h_rt=h_rt,
            )
        )
    return jobs


def _clean_error(message: str) -> str:
    """``12/02/2026 17:01:28 [1001:825]: can't stat() ... KRB5CCNAME=none uid=...`` ->
    ``can't stat() ...``."""
    message = re.sub(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d \[\d+:\d+\]: ", "", message.strip())
    return message.split(" KRB5CCNAME=", 1)[0].strip()


def parse_qstat_job_details(text: str, job_id: str) -> list[str]:
    """Why job ``job_id`` waits, from ``qstat -j ID -xml``: its error messages (Eqw), then the
    scheduler's messages about it (only where the site keeps ``schedd_job_info true``).
    Empty for a job qstat does not know."""
    root = _xml_root(text, "qstat -j -xml")
    if root.tag == "unknown_jobs":
        return []
    if root.tag != "detailed_job_info":
        raise BackendError(f"qstat -j -xml printed <{root.tag}>, not <detailed_job_info>")
    found = []
    for task in root.iter("JAT_message_list"):
        for message in task.iter("QIM_message"):
            if message.text and message.text.strip():
                found.append(_clean_error(message.text))
    for listing in root.iter("SME_message_list"):
        for element in listing.findall("element"):
            numbers = {(v.text or "").strip() for v in element.iter("ULNG_value")}
            text_ = (element.findtext("MES_message") or "").strip()
            if job_id in numbers and text_:
                found.append(text_)
    return list(dict.fromkeys(found))  # once each, in order


def _slurm_state(code: str) -> str:
    """Grid Engine's letters as the SLURM state jlabgw's backends understand."""
    if "d" in code:
        return "COMPLETING"  # qdel'd, not yet gone: still holds its node
    if "E" in code:
        return "PENDING"  # will not run until someone clears the error (qmod -cj)
    if any(c in code for c in "sST"):
        return "SUSPENDED"
    if "t" in code:
        return "CONFIGURING"  # dispatched, being started on the node
    if "r" in code:
        return "RUNNING"
    return "PENDING"  # qw, hqw, Rq and letters this code does not know: qstat still has it


def _clock(seconds: int) -> str:
    """Seconds as SLURM's ``[D-]HH:MM:SS`` (what JobStatus.seconds_left reads)."""
    days, rest = divmod(max(seconds, 0), 86400)
    hours, rest = divmod(rest, 3600)
    clock = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock


def to_job_status(
    job: QstatJob, messages: list[str] | None = None, now: float | None = None
) -> JobStatus:
    """``job`` as a JobStatus; ``messages`` from :func:`parse_qstat_job_details`."""
    state = _slurm_state(job.code)
    reason = ""
    if state != "RUNNING" or job.code not in ("r", "Rr"):
        details = [_DETAILS[c] for c in job.code if c in _DETAILS]
        why = "; ".join(messages or details)
        reason = (f"{job.code}: {why}" if why else job.code)[:_MAX_REASON]
    time_left = ""
    if job.start_time is not None and job.h_rt is not None:
        now = time.time() if now is None else now
        time_left = _clock(int(job.start_time + job.h_rt - now))
    node = job.queue.rpartition("@")[2] if "@" in job.queue else ""
    return JobStatus(job.job_id, state, reason, node, time_left, job.name)


def hopeless_reason(status: JobStatus) -> str | None:
    """An explanation if the job will not start unless someone changes it: Grid Engine's
    error state (Eqw; ``qmod -cj`` clears it once the cause is fixed)."""
    code = status.reason.split(":", 1)[0]
    if status.pending and "E" in code:
        detail = status.reason.partition(": ")[2]
        return f"Grid Engine put the job in error state ({detail or 'no reason given'})"
    return None


class GridEngineClient:
    """The Grid Engine commands jlabgw needs, run on ``host``."""

    def __init__(self, host: Host, clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self._clock = clock
        self._me: str | None = None  # `id -un` on the host, asked once

    def submit(self, script: str, *, extra_args: list[str] | None = None) -> str:
        """``qsub -terse [extra] SCRIPT``; returns the job id."""
        result = self.host.run(["qsub", "-terse", *(extra_args or []), script])
        return parse_qsub_output(result.stdout)

    def _user(self) -> str:
        if self._me is None:
            self._me = self.host.run(["id", "-un"]).stdout.strip()
        return self._me

    def _jobs(self, user: str | None = None) -> list[QstatJob]:
        # -u and -s on the command line: a user's ~/.sge_qstat or the site's sge_qstat (the
        # man page's own example is "-s r") would otherwise hide pending jobs (read as GONE)
        # or list the whole cluster on every poll
        argv = [*QSTAT, "-u", user or self._user(), "-s", "prs"]
        return parse_qstat_xml(self.host.run(argv).stdout)

    def status(self, job_id: str) -> JobStatus:
        """The job's state; ``GONE`` once qstat no longer lists it. A job that waits (or is
        in error) costs a second command, ``qstat -j``, for the reason."""
        job = next((j for j in self._jobs() if j.job_id == job_id), None)
        if job is None:
            return JobStatus(job_id, "GONE")
        messages: list[str] = []
        if _slurm_state(job.code) == "PENDING":
            result = self.host.run(["qstat", "-j", job_id, "-xml"], check=False)
            if result.returncode == 0:
                messages = parse_qstat_job_details(result.stdout, job_id)
        return to_job_status(job, messages, self._clock())

    def find(self, name: str, user: str | None = None) -> list[JobStatus]:
        """Active jobs called ``name`` (of ``user``, default: whoever runs the command)."""
        now = self._clock()
        return [to_job_status(j, now=now) for j in self._jobs(user) if j.name == name]

    def running(self, user: str | None = None) -> list[JobStatus]:
        """Every running job of ``user`` (default: whoever runs the command)."""
        now = self._clock()
        jobs = [to_job_status(j, now=now) for j in self._jobs(user)]
        return [job for job in jobs if job.running]

    def cancel(self, job_id: str) -> None:
        """``qdel JOB``; a job Grid Engine no longer knows is already gone, which is fine."""
        result = self.host.run(["qdel", job_id], check=False)
        if result.returncode != 0 and "does not exist" not in result.stdout + result.stderr:
            raise CommandError(
                result.argv, result.returncode, result.stdout, result.stderr, self.host.where
            )
