"""The sbatch script: a pure function of the settings and a template.

Templates use ``{{name}}`` placeholders (bash's own ``${...}`` stays untouched); an unknown
placeholder is an error that lists the valid ones. ``#SBATCH`` directives are generated from the
``slurm_*`` settings in a fixed order, each value shell-quoted; values with control characters
are refused (a newline could inject another directive or a shell line). The job's code (the
supervisor and the TCP_NODELAY connection class) is embedded verbatim from this package, so the
cluster needs Kernel Gateway and ipykernel but not jlabgw.
"""

from __future__ import annotations

import re

from jlabgw.cluster.batch_script import quote, render, shipped_template
from jlabgw.config import Settings
from jlabgw.errors import ConfigError

__all__ = ["PLACEHOLDERS", "render_batch_script", "sbatch_directives"]

PLACEHOLDERS = (
    "sbatch_directives",
    "remote_setup",
    "connection_dir",
    "kernel_idle",
    "job_idle",
    "nodelay_module",
    "supervisor",
)
_EXTRA_LINE = re.compile(r"^#SBATCH\s+-{1,2}[A-Za-z]")

# (sbatch option, settings field) in the order they are written
_DIRECTIVES = (
    ("job-name", "job_name"),
    ("partition", "slurm_partition"),
    ("time", "slurm_time"),
    ("nodes", None),
    ("ntasks", None),
    ("cpus-per-task", "slurm_cpus"),
    ("mem", "slurm_mem"),
    ("gres", "slurm_gres"),
    ("account", "slurm_account"),
    ("qos", "slurm_qos"),
    ("constraint", "slurm_constraint"),
)


def sbatch_directives(settings: Settings) -> list[str]:
    """``#SBATCH`` lines in a fixed order; empty settings are left out."""
    lines = []
    for option, field in _DIRECTIVES:
        value = "1" if field is None else str(getattr(settings, field))
        if value == "":
            continue
        env_name = f"JLABGW_{(field or option).upper()}"
        lines.append(f"#SBATCH --{option}={quote(env_name, value)}")
    for raw in settings.slurm_extra.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not _EXTRA_LINE.match(line) or "\x00" in line:
            raise ConfigError(f"JLABGW_SLURM_EXTRA line {line!r} is not an '#SBATCH --option' line")
        lines.append(line)
    return lines


def default_template() -> str:
    """The built-in template: shipped in the wheel, or read from the source checkout."""
    return shipped_template("slurm.sbatch")


def render_batch_script(settings: Settings, template: str | None = None) -> str:
    """The sbatch script for ``settings`` (``template`` overrides the configured one)."""
    if template is None:
        if settings.batch_template is not None:
            try:
                template = settings.batch_template.read_text()
            except OSError as exc:
                raise ConfigError(
                    f"JLABGW_BATCH_TEMPLATE {settings.batch_template}: {exc.strerror}"
                ) from exc
        else:
            template = default_template()
    directives = ("sbatch_directives", sbatch_directives(settings))
    return render(settings, template, directives, "batch template")
