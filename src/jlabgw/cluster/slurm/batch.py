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
import shlex
from importlib import resources
from pathlib import Path

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
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
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


def _quote(name: str, value: str) -> str:
    if _CONTROL.search(value):
        raise ConfigError(
            f"{name}={value!r} contains a control character (newline, tab ...); "
            "batch script values must be single-line"
        )
    return shlex.quote(value)


def sbatch_directives(settings: Settings) -> list[str]:
    """``#SBATCH`` lines in a fixed order; empty settings are left out."""
    lines = []
    for option, field in _DIRECTIVES:
        value = "1" if field is None else str(getattr(settings, field))
        if value == "":
            continue
        env_name = f"JLABGW_{(field or option).upper()}"
        lines.append(f"#SBATCH --{option}={_quote(env_name, value)}")
    for raw in settings.slurm_extra.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not _EXTRA_LINE.match(line) or "\x00" in line:
            raise ConfigError(f"JLABGW_SLURM_EXTRA line {line!r} is not an '#SBATCH --option' line")
        lines.append(line)
    return lines


def _connection_dir(value: str) -> str:
    """Quoted for bash; a leading ``~/`` becomes ``"$HOME"/...`` so it still expands."""
    if value == "~":
        return '"$HOME"'
    if value.startswith("~/"):
        return '"$HOME"/' + _quote("JLABGW_CONNECTION_DIR", value[2:])
    return _quote("JLABGW_CONNECTION_DIR", value)


def _package_source(module: str) -> str:
    return (resources.files("jlabgw.node") / module).read_text()


def default_template() -> str:
    """The built-in template: shipped in the wheel, or read from the source checkout."""
    shipped = resources.files("jlabgw") / "batch_templates" / "slurm.sbatch"
    if shipped.is_file():
        return shipped.read_text()
    return (Path(__file__).resolve().parents[4] / "batch_templates" / "slurm.sbatch").read_text()


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
    values = {
        "sbatch_directives": "\n".join(sbatch_directives(settings)),
        "remote_setup": settings.remote_setup,
        "connection_dir": _connection_dir(settings.connection_dir),
        "kernel_idle": str(settings.kernel_idle_timeout),
        "job_idle": str(settings.job_idle_timeout),
        "nodelay_module": _package_source("gateway_ext.py"),
        "supervisor": _package_source("job_supervisor.py"),
    }
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(values))
    if unknown:
        raise ConfigError(
            f"unknown placeholder(s) {', '.join('{{' + u + '}}' for u in unknown)} in the "
            f"batch template; valid: {', '.join('{{' + p + '}}' for p in PLACEHOLDERS)}"
        )
    for name in ("nodelay_module", "supervisor"):
        if re.search(r"^JLABGW_\w+_EOF$", values[name], re.MULTILINE):
            raise AssertionError(f"{name} contains a heredoc terminator")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
