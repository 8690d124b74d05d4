"""What every scheduler's batch script shares: ``{{name}}`` placeholders, the job's values
(site set-up, connection dir, idle timeouts) and the job's code (the supervisor and the
TCP_NODELAY connection class) embedded verbatim from this package, so the cluster needs Kernel
Gateway and ipykernel but not jlabgw. A scheduler adds its directives under its own
placeholder (``{{sbatch_directives}}``, ``{{ge_directives}}``)."""

from __future__ import annotations

import re
import shlex
from importlib import resources
from pathlib import Path

from jlabgw.config import Settings
from jlabgw.errors import ConfigError

__all__ = ["CONTROL", "connection_dir", "package_source", "quote", "render", "shipped_template"]

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def quote(name: str, value: str) -> str:
    """``value`` shell-quoted; a control character (a newline could inject a line) refused."""
    if CONTROL.search(value):
        raise ConfigError(
            f"{name}={value!r} contains a control character (newline, tab ...); "
            "batch script values must be single-line"
        )
    return shlex.quote(value)


def connection_dir(value: str) -> str:
    """Quoted for bash; a leading ``~/`` becomes ``"$HOME"/...`` so it still expands."""
    if value == "~":
        return '"$HOME"'
    if value.startswith("~/"):
        return '"$HOME"/' + quote("JLABGW_CONNECTION_DIR", value[2:])
    return quote("JLABGW_CONNECTION_DIR", value)


def package_source(module: str) -> str:
    return (resources.files("jlabgw.node") / module).read_text()


def shipped_template(name: str) -> str:
    """A built-in template: shipped in the wheel, or read from the source checkout."""
    shipped = resources.files("jlabgw") / "batch_templates" / name
    if shipped.is_file():
        return shipped.read_text()
    return (Path(__file__).resolve().parents[3] / "batch_templates" / name).read_text()


def render(settings: Settings, template: str, directives: tuple[str, list[str]], what: str) -> str:
    """``template`` with its placeholders filled: ``directives`` is the scheduler's
    (placeholder, lines); ``what`` names the template in errors."""
    values = {
        directives[0]: "\n".join(directives[1]),
        "remote_setup": settings.remote_setup,
        "connection_dir": connection_dir(settings.connection_dir),
        "kernel_idle": str(settings.kernel_idle_timeout),
        "job_idle": str(settings.job_idle_timeout),
        "nodelay_module": package_source("gateway_ext.py"),
        "supervisor": package_source("job_supervisor.py"),
    }
    unknown = sorted({m.group(1) for m in PLACEHOLDER.finditer(template)} - set(values))
    if unknown:
        valid = ", ".join("{{" + p + "}}" for p in values)
        raise ConfigError(
            f"unknown placeholder(s) {', '.join('{{' + u + '}}' for u in unknown)} in the "
            f"{what}; valid: {valid}"
        )
    for name in ("nodelay_module", "supervisor"):
        if re.search(r"^JLABGW_\w+_EOF$", values[name], re.MULTILINE):
            raise AssertionError(f"{name} contains a heredoc terminator")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
