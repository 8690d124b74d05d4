"""``jlabgw doctor``: check a set-up step by step and say how to fix what fails.

Each check gives ✓ (fine), ! (worth knowing, not a failure) or ✗ (will not work, with the fix).
A check that needs an earlier one is skipped (–) when that one failed. The exit code is
non-zero when any check failed.

What is checked: the config parses; the notebook dir is writable and the state dir private;
then for ``local``: Kernel Gateway and the kernel spec are installed and a gateway starts; for
``slurm``: SSH to the login node (host key, authentication, agent), sbatch and squeue answer
there, the connection dir is writable with safe modes, the remote set-up gives a Python with
Kernel Gateway, ipykernel and the kernel spec, and the batch script renders and parses.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jlabgw.config import Resolved, Settings, resolve_settings
from jlabgw.errors import JlabgwError

__all__ = ["Check", "doctor", "render_report", "tty_safe"]

Mark = Literal["ok", "warn", "fail", "skip"]
MARKS = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "–"}


@dataclass
class Check:
    name: str
    mark: Mark
    detail: str
    fix: str = ""


class _Failed(Exception):
    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


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
    steps = _LOCAL_STEPS if settings.backend == "local" else _SLURM_STEPS
    context: dict[str, Any] = {}
    failed: set[str] = set()
    try:
        for name, step, needs in _COMMON_STEPS + steps:
            blocked = [n for n in needs if n in failed]
            if blocked:
                failed.add(name)
                yield Check(name, "skip", f"skipped: needs {', '.join(blocked)}")
                continue
            try:
                mark, detail = step(settings, context)
            except _Failed as exc:
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


# -- steps shared by both backends -----------------------------------------------------------------

Step = Callable[[Settings, dict[str, Any]], tuple[Mark, str]]


def _notebook_dir(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    path = settings.notebook_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".jlabgw-doctor-{os.getpid()}"
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as exc:
        raise _Failed(
            f"{path} is not writable: {exc.strerror}",
            f"set JLABGW_NOTEBOOK_DIR to a directory you can write to, or fix the "
            f"permissions of {path}",
        ) from exc
    free = shutil.disk_usage(path).free
    if free < 100 * 2**20:
        return "warn", f"{path} is writable, but only {free // 2**20} MiB are free"
    return "ok", f"{path} is writable ({free // 2**30} GiB free)"


def _state_dir(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jlabgw.fsutil import ensure_private_dir

    path = settings.state_dir
    try:
        ensure_private_dir(path)
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise _Failed(
            f"cannot create {path}: {exc.strerror}",
            "set JLABGW_STATE_DIR to a directory of your own",
        ) from exc
    if mode & 0o077:
        raise _Failed(
            f"{path} has mode {mode:o}: others could read gateway tokens there",
            f"chmod 700 {path}",
        )
    return "ok", f"{path} is private (mode {mode:o})"


_COMMON_STEPS: list[tuple[str, Step, tuple[str, ...]]] = [
    ("notebook dir", _notebook_dir, ()),
    ("state dir", _state_dir, ()),
]

# -- local -----------------------------------------------------------------------------------------


def _local_packages(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    missing = [m for m in ("kernel_gateway", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        raise _Failed(
            f"{', '.join(missing)} not importable by {sys.executable}",
            f"{sys.executable} -m pip install jupyter-kernel-gateway ipykernel",
        )
    versions = ", ".join(
        f"{dist} {importlib.metadata.version(dist)}"
        for dist in ("jupyter-kernel-gateway", "ipykernel")
    )
    return "ok", versions


def _local_kernelspec(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        spec = manager.get_kernel_spec(settings.kernel_name)
    except NoSuchKernel as exc:
        available = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise _Failed(
            f"no kernel spec {settings.kernel_name!r} here (available: {available})",
            "set JLABGW_KERNEL_NAME to one of those, or install it (for Python: "
            f"{sys.executable} -m ipykernel install --user --name {settings.kernel_name})",
        ) from exc
    return "ok", f"{settings.kernel_name}: {spec.display_name} ({spec.argv[0]})"


def _local_gateway(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jlabgw.cluster.backends import LocalBackend
    from jlabgw.jupyter.rest import GatewayClient

    async def start_and_ask() -> tuple[float, int]:
        backend = LocalBackend(settings.model_copy(update={"spare_kernel": False}))
        t0 = time.monotonic()
        try:
            endpoint = await backend.start()
            client = GatewayClient(endpoint)
            try:
                specs = await client.kernelspecs()
            finally:
                await client.aclose()
            return time.monotonic() - t0, len(specs.get("kernelspecs", {}))
        finally:
            await backend.aclose()

    seconds, count = asyncio.run(start_and_ask())
    return "ok", f"a gateway started and answered in {seconds:.1f} s ({count} kernel spec(s))"


_LOCAL_STEPS: list[tuple[str, Step, tuple[str, ...]]] = [
    ("jupyter packages", _local_packages, ()),
    ("kernel spec", _local_kernelspec, ("jupyter packages",)),
    ("gateway start", _local_gateway, ("state dir", "jupyter packages", "kernel spec")),
]

# -- slurm -----------------------------------------------------------------------------------------


def _ssh_login(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jlabgw.cluster.host import LocalHost, SSHHost
    from jlabgw.cluster.ssh.connection import SSHConnection

    if not settings.ssh_host:
        context["host"] = LocalHost()
        return "ok", "JLABGW_SSH_HOST is empty: SLURM commands run on this machine"
    connection = SSHConnection(settings.ssh_host, settings)
    try:
        connection.transport  # noqa: B018 - connect now: this is the check
    except JlabgwError:
        connection.close()
        raise
    context["host"] = SSHHost(connection)
    spec = connection.spec
    hops = f" via {settings.ssh_host!r}'s ProxyJump/ProxyCommand" if _has_proxy(spec) else ""
    return "ok", (f"{spec.label}{hops}: host key matches {settings.known_hosts}, authenticated")


def _has_proxy(spec: Any) -> bool:
    return bool(spec.proxy_jump or spec.proxy_command)


def _ssh_agent(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    if not settings.ssh_host:
        return "ok", "not needed: no SSH to a login node"
    sock = os.environ.get("SSH_AUTH_SOCK")
    if not sock:
        return "warn", (
            "SSH_AUTH_SOCK is not set: fine for a key without a passphrase; a key with one "
            "needs the agent (Claude Desktop does not pass SSH_AUTH_SOCK unless its config's "
            "env sets it)"
        )
    import paramiko

    try:
        keys = paramiko.Agent().get_keys()
    except paramiko.SSHException as exc:
        return "warn", f"SSH_AUTH_SOCK={sock} does not answer: {exc}"
    return "ok", f"ssh-agent at {sock} holds {len(keys)} key(s)"


def _slurm_commands(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    host = context["host"]
    versions = []
    for command in ("sbatch", "squeue", "scancel"):
        result = host.run([command, "--version"], check=False, timeout=60)
        if result.returncode != 0:
            raise _Failed(
                f"`{command} --version` failed on {host.where} (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[:300]}",
                "SLURM's commands must be on the PATH of a non-interactive shell there: "
                "load their module from ~/.bashrc (before its 'not interactive' return), or "
                "ask the site where they are",
            )
        versions.append(result.stdout.strip())
    queue = host.run(["sh", "-c", 'squeue -h -u "$(id -un)" -o %i'], check=False, timeout=60)
    if queue.returncode != 0:
        raise _Failed(
            f"squeue cannot reach the controller from {host.where}: {queue.stderr.strip()[:300]}",
            "check that slurmctld is up and SLURM_CONF (if the site uses one) is set there",
        )
    jobs = len(queue.stdout.split())
    return "ok", f"{versions[0]} on {host.where}; squeue answers ({jobs} job(s) of yours)"


def _connection_dir(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jlabgw.cluster.host import expand_home

    host = context["host"]
    directory = expand_home(host, settings.connection_dir)
    made = host.run(["mkdir", "-p", "-m", "700", directory], check=False, timeout=60)
    if made.returncode != 0:
        raise _Failed(
            f"cannot create {directory} on {host.where}: {made.stderr.strip()[:300]}",
            "set JLABGW_CONNECTION_DIR to a directory on the cluster's shared file system "
            "that you own (the job writes its connection file there)",
        )
    info = host.stat(directory)
    mode = info.mode if info else 0
    if mode & 0o077:
        raise _Failed(
            f"{directory} on {host.where} has mode {mode:o}: others could read tokens there",
            f"chmod 700 {directory} (on {host.where})",
        )
    probe = f"{directory}/.jlabgw-doctor-{os.getpid()}"
    host.write_bytes(probe, b"probe", mode=0o600)
    written = host.stat(probe)
    host.run(["rm", "-f", probe], check=False, timeout=60)
    if written is None or written.mode != 0o600:
        raise _Failed(
            f"a file written to {directory} got mode "
            f"{'missing' if written is None else oct(written.mode)}, not 600",
            "use a local or shared file system that keeps POSIX modes for JLABGW_CONNECTION_DIR",
        )
    return "ok", f"{directory} on {host.where} is writable, mode {mode:o}; files get 600"


_PROBE = (
    "import json, sys\n"
    "out = {'python': sys.executable, 'version': sys.version.split()[0]}\n"
    "for name in ('kernel_gateway', 'ipykernel'):\n"
    "    try:\n"
    "        out[name] = __import__(name).__version__\n"
    "    except Exception as exc:\n"
    "        out[name] = None\n"
    "try:\n"
    "    from jupyter_client.kernelspec import KernelSpecManager\n"
    "    out['kernelspecs'] = sorted(KernelSpecManager().find_kernel_specs())\n"
    "except Exception:\n"
    "    out['kernelspecs'] = []\n"
    "print('JLABGW-PROBE ' + json.dumps(out))\n"
)


def _remote_python(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    import json

    host = context["host"]
    script = (
        f'{settings.remote_setup}\nexec "${{JLABGW_PYTHON:-python3}}" -c {shlex.quote(_PROBE)}\n'
    )
    result = host.run(["bash", "-c", script], check=False, timeout=300)
    line = next((x for x in result.stdout.splitlines() if x.startswith("JLABGW-PROBE ")), None)
    setup_fix = (
        "set JLABGW_REMOTE_SETUP to the shell lines that give a Python with "
        "jupyter-kernel-gateway and ipykernel in the job, e.g. 'module load python/3.11' "
        "and 'source ~/envs/jlabgw/bin/activate' (create it once with: python3 -m venv "
        "~/envs/jlabgw && ~/envs/jlabgw/bin/pip install jupyter-kernel-gateway ipykernel)"
    )
    if line is None:
        raise _Failed(
            f"the set-up and python3 failed on {host.where} (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-300:]}",
            setup_fix,
        )
    found = json.loads(line.removeprefix("JLABGW-PROBE "))
    missing = [n for n in ("kernel_gateway", "ipykernel") if not found.get(n)]
    if missing:
        raise _Failed(
            f"{found['python']} (Python {found['version']}) on {host.where} lacks "
            f"{', '.join(missing)}",
            setup_fix,
        )
    if settings.kernel_name not in found.get("kernelspecs", []):
        raise _Failed(
            f"no kernel spec {settings.kernel_name!r} for {found['python']} (available: "
            f"{', '.join(found.get('kernelspecs', [])) or 'none'})",
            "set JLABGW_KERNEL_NAME to one of those, or install it there "
            f"({found['python']} -m ipykernel install --user --name {settings.kernel_name})",
        )
    context["python"] = found
    return "ok", (
        f"{found['python']} (Python {found['version']}) on {host.where}: Kernel Gateway "
        f"{found['kernel_gateway']}, ipykernel {found['ipykernel']}, kernel spec "
        f"{settings.kernel_name!r}. (Checked on the login node; compute nodes usually share "
        "its software.)"
    )


def _batch_script(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jlabgw.cluster.slurm.batch import render_batch_script, sbatch_directives

    script = render_batch_script(settings)
    bash = shutil.which("bash")
    if bash is not None:
        parsed = subprocess.run(
            [bash, "-n"], input=script, capture_output=True, text=True, timeout=30, check=False
        )
        if parsed.returncode != 0:
            raise _Failed(
                f"the rendered script does not parse: {parsed.stderr.strip()[:300]}",
                "check JLABGW_REMOTE_SETUP and JLABGW_BATCH_TEMPLATE for unbalanced quotes "
                "or if/fi",
            )
    directives = " ".join(line.removeprefix("#SBATCH ") for line in sbatch_directives(settings))
    source = settings.batch_template or "the built-in template"
    return "ok", f"{source} renders ({len(script.splitlines())} lines): {directives}"


_SLURM_STEPS: list[tuple[str, Step, tuple[str, ...]]] = [
    ("batch script", _batch_script, ()),
    ("ssh login", _ssh_login, ()),
    ("ssh agent", _ssh_agent, ()),
    ("slurm commands", _slurm_commands, ("ssh login",)),
    ("connection dir", _connection_dir, ("ssh login",)),
    ("remote python", _remote_python, ("ssh login",)),
]


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
