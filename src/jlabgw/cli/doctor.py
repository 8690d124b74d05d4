"""``jlabgw doctor``: check a set-up step by step and say how to fix what fails.

Each check gives ✓ (fine), ! (worth knowing, not a failure) or ✗ (will not work, with the fix).
A check that needs an earlier one is skipped (–) when that one failed. The exit code is
non-zero when any check failed.

What is checked: the config parses; the notebook dir is writable and the state dir private;
then for ``local``: Kernel Gateway and the kernel spec are installed and a gateway starts; for
``slurm``: SSH to the login node (host key, authentication, agent), sbatch and squeue answer
there, the connection dir is writable with safe modes, the remote set-up gives a Python with
Kernel Gateway, ipykernel and the kernel spec, the batch script renders and parses, and, while
a job of the user runs, its compute node is reached the way the tunnel reaches it (through the
login node: host key, authentication; skipped with no running job).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from jlabgw.cli.checks import COMMON_STEPS, Check, Failed
from jlabgw.cli.cluster_checks import CLUSTER_STEPS
from jlabgw.cli.local_checks import LOCAL_STEPS
from jlabgw.config import Resolved, resolve_settings
from jlabgw.errors import JlabgwError
from jlabgw.log import configure_logging

__all__ = ["Check", "doctor", "doctor_command", "render_report", "tty_safe"]

MARKS = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "–"}


def doctor_command(flags: dict[str, Any]) -> int:
    """``jlabgw doctor``: the report on stdout as each check finishes; 1 if any failed."""
    configure_logging("ERROR")  # the report says it all; library warnings would interleave

    def write(line: str) -> None:
        print(tty_safe(line), flush=True)

    print("jlabgw doctor", flush=True)
    return render_report(doctor(flags), write)


def doctor(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Iterator[Check]:
    """Run the checks one after the other, yielding each result as soon as it is known."""
    try:
        resolved = resolve_settings(flags, environ)
    except JlabgwError as exc:
        yield Check(
            "config",
            "fail",
            str(exc),
            "correct the setting named above (or unset it to get the default); "
            "`jlabgw config` shows every setting and where it comes from",
        )
        return
    yield _config_check(resolved)
    settings = resolved.settings
    steps = LOCAL_STEPS if settings.backend == "local" else CLUSTER_STEPS
    context: dict[str, Any] = {}
    failed: set[str] = set()
    try:
        for name, step, needs in COMMON_STEPS + steps:
            blocked = [n for n in needs if n in failed]
            if blocked:
                failed.add(name)
                yield Check(name, "skip", f"skipped: needs {', '.join(blocked)}")
                continue
            try:
                mark, detail = step(settings, context)
            except Failed as exc:
                failed.add(name)
                yield Check(name, "fail", exc.detail, exc.fix)
            except JlabgwError as exc:
                failed.add(name)
                yield Check(name, "fail", str(exc), _fix_for(name))
            else:
                yield Check(name, mark, detail)
    finally:
        host = context.get("host")
        if host is not None:
            host.close()


def _config_check(resolved: Resolved) -> Check:
    settings = resolved.settings
    where = (
        str(resolved.config_path)
        if resolved.config_path.exists()
        else f"no file at {resolved.config_path} (defaults and JLABGW_* only)"
    )
    profile = f", profile {settings.profile!r}" if settings.profile else ""
    if resolved.profiles and not settings.profile:
        profile = f", no profile chosen (defined: {', '.join(resolved.profiles)})"
    return Check("config", "ok", f"{where}; backend {settings.backend}{profile}")


def _fix_for(name: str) -> str:
    return {
        "ssh login": "follow the advice above; `ssh -v HOST` shows what OpenSSH makes of the "
        "same settings (jlabgw reads the same ~/.ssh/config)",
        "gateway start": "run `jlabgw --log-level DEBUG run -c 1` to see the gateway's own error",
        "batch script": "fix the setting named above",
    }.get(name, "see the message above")


def render_report(checks: Iterator[Check], write: Callable[[str], None]) -> int:
    """Print each check as it comes; return the exit code (1 if any failed)."""
    failed = 0
    for check in checks:
        write(f"{MARKS[check.mark]} {check.name:<16}  {check.detail}")
        if check.fix:
            write(f"  {'':<16}  fix: {check.fix}")
        failed += check.mark == "fail"
    write(
        f"{failed} check(s) failed" if failed else "all checks passed",
    )
    return 1 if failed else 0


def tty_safe(text: str) -> str:
    """The report with ASCII marks when stdout cannot encode the symbols."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        for mark, ascii_mark in (("✓", "ok"), ("✗", "FAIL"), ("–", "-")):
            text = text.replace(mark, ascii_mark)
    return text
