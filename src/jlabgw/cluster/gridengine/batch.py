"""The Grid Engine job script: batch_templates/gridengine.sh with ``#$`` directives.

Rendered like the sbatch script (:mod:`jlabgw.cluster.slurm.batch`, whose quoting, connection
dir and embedding of the job's code it reuses, so the supervisor in the job is byte for byte
the same): ``{{name}}`` placeholders, an unknown one is an error listing the valid ones.

``#$`` lines are read by qsub, not by bash, and qsub does not unquote them the way a shell
would, so directive values are not quoted but checked: letters, digits and the characters Grid
Engine's own names and expressions use (``all.q@node1``, ``gpu.q|long.q``, ``h_vmem=4G,gpu=1``,
``mpi*``); a space, quote, ``$``, ``#``, ``;`` or control character is refused. The directives
come from a small :class:`GridEngineOptions` value (the settings that fill it are the backend's
to define).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jlabgw.cluster.batch_script import render, shipped_template
from jlabgw.config import Settings
from jlabgw.errors import ConfigError

__all__ = [
    "PLACEHOLDERS",
    "GridEngineOptions",
    "default_template",
    "ge_directives",
    "render_batch_script",
]

PLACEHOLDERS = (
    "ge_directives",
    "remote_setup",
    "connection_dir",
    "kernel_idle",
    "job_idle",
    "nodelay_module",
    "supervisor",
)
_VALUE = re.compile(r"[A-Za-z0-9_.@,=:*!|&()/+\[\]-]+")
_H_RT = re.compile(r"\d+(:\d+){0,2}")
_EXTRA_LINE = re.compile(r"^#\$\s+-[A-Za-z]")


@dataclass(frozen=True)
class GridEngineOptions:
    """What the job asks Grid Engine for; empty means "the site's default"."""

    queue: str = ""  # -q, a queue or expression: all.q, gpu.q@node1, "long.q|short.q"
    h_rt: str = ""  # -l h_rt=, seconds or h:m:s; the walltime jlabgw warns about
    pe: str = ""  # -pe NAME SLOTS: a parallel environment (smp, mpi ...)
    slots: str = ""  # slots in ``pe`` (default 1 when a PE is given)
    resources: str = ""  # -l, comma-separated: h_vmem=4G,gpu=1
    project: str = ""  # -P
    extra: str = ""  # more '#$ -option ...' lines, one per line


def _checked(setting: str, value: str) -> str:
    if not _VALUE.fullmatch(value):
        raise ConfigError(
            f"{setting}={value!r}: Grid Engine directive values may hold letters, digits and "
            "_ . @ , = : * ! | & ( ) / + [ ] - only (no spaces, quotes, '$', '#' or control "
            "characters)"
        )
    return value


def ge_directives(settings: Settings, options: GridEngineOptions) -> list[str]:
    """``#$`` lines in a fixed order; empty options are left out. The job's output (``-o``)
    is given to qsub at submission, as sbatch's ``--output`` is."""
    name = _checked("JLABGW_JOB_NAME", settings.job_name)
    if name[0].isdigit():  # qsub: "is not a valid object name (cannot start with a digit)"
        raise ConfigError(
            f"JLABGW_JOB_NAME={name!r}: Grid Engine refuses job names that start with a digit"
        )
    lines = [f"#$ -N {name}", "#$ -S /bin/bash", "#$ -j y"]
    if options.queue:
        lines.append(f"#$ -q {_checked('JLABGW_GE_QUEUE', options.queue)}")
    if options.h_rt:
        if not _H_RT.fullmatch(options.h_rt):
            raise ConfigError(
                f"JLABGW_GE_H_RT={options.h_rt!r} is not a Grid Engine time (seconds, or "
                "hours:minutes:seconds such as 8:00:00)"
            )
        lines.append(f"#$ -l h_rt={options.h_rt}")
    if options.slots and not options.pe:
        raise ConfigError(
            f"JLABGW_GE_SLOTS={options.slots!r} needs a parallel environment "
            "(JLABGW_GE_PE; `qconf -spl` lists them)"
        )
    if options.pe:
        slots = options.slots or "1"
        if not slots.isdigit() or int(slots) < 1:
            raise ConfigError(f"JLABGW_GE_SLOTS={slots!r} is not a whole number >= 1")
        lines.append(f"#$ -pe {_checked('JLABGW_GE_PE', options.pe)} {int(slots)}")
    if options.resources:
        lines.append(f"#$ -l {_checked('JLABGW_GE_RESOURCES', options.resources)}")
    if options.project:
        lines.append(f"#$ -P {_checked('JLABGW_GE_PROJECT', options.project)}")
    for raw in options.extra.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not _EXTRA_LINE.match(line) or re.search(r"[\x00-\x1f\x7f]", line):
            raise ConfigError(f"JLABGW_GE_EXTRA line {line!r} is not a '#$ -option' line")
        lines.append(line)
    return lines


def default_template() -> str:
    """The built-in template: shipped in the wheel, or read from the source checkout."""
    return shipped_template("gridengine.sh")


def render_batch_script(
    settings: Settings, options: GridEngineOptions, template: str | None = None
) -> str:
    """The job script for ``settings`` and ``options`` (``template`` overrides the built-in
    one)."""
    if template is None:
        template = default_template()
    directives = ("ge_directives", ge_directives(settings, options))
    return render(settings, template, directives, "Grid Engine job template")
