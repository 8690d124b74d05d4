"""``jlabgw doctor`` for the batch backends (SLURM, Grid Engine): the batch script renders and
parses; SSH to the login node works (host key, authentication, agent); the scheduler's
commands answer there (:meth:`~jlabgw.cluster.scheduler.Scheduler.probe`); the
connection dir is writable with safe modes; the remote set-up gives a Python with Kernel
Gateway, ipykernel and the kernel spec; and, while a job of the user runs, SSH to its compute
node works the way the tunnel makes it (through the login node: host key, authentication)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from typing import Any

from jlabgw.cli.checks import Failed, Mark, Steps
from jlabgw.config import Settings
from jlabgw.errors import JlabgwError

__all__ = ["CLUSTER_STEPS"]


def _ssh_login(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jlabgw.cluster.host import LocalHost, SSHHost
    from jlabgw.cluster.ssh.connection import SSHConnection

    if not settings.ssh_host:
        context["host"] = LocalHost()
        return "ok", "JLABGW_SSH_HOST is empty: the scheduler's commands run on this machine"
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


def _scheduler(settings: Settings, host: Any) -> Any:
    from jlabgw.cluster.backends import scheduler_for

    scheduler = scheduler_for(settings, host)
    assert scheduler is not None, "cluster checks run for batch backends only"
    return scheduler


def _scheduler_commands(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jlabgw.cluster.scheduler import ProbeFailed

    scheduler = _scheduler(settings, context["host"])
    try:
        return "ok", scheduler.probe()
    except ProbeFailed as exc:
        raise Failed(exc.problem, exc.fix) from exc


def _connection_dir(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jlabgw.cluster.host import expand_home

    host = context["host"]
    directory = expand_home(host, settings.connection_dir)
    made = host.run(["mkdir", "-p", "-m", "700", directory], check=False, timeout=60)
    if made.returncode != 0:
        raise Failed(
            f"cannot create {directory} on {host.where}: {made.stderr.strip()[:300]}",
            "set JLABGW_CONNECTION_DIR to a directory on the cluster's shared file system "
            "that you own (the job writes its connection file there)",
        )
    info = host.stat(directory)
    mode = info.mode if info else 0
    if mode & 0o077:
        raise Failed(
            f"{directory} on {host.where} has mode {mode:o}: others could read tokens there",
            f"chmod 700 {directory} (on {host.where})",
        )
    probe = f"{directory}/.jlabgw-doctor-{os.getpid()}"
    host.write_bytes(probe, b"probe", mode=0o600)
    written = host.stat(probe)
    host.run(["rm", "-f", probe], check=False, timeout=60)
    if written is None or written.mode != 0o600:
        raise Failed(
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
        raise Failed(
            f"the set-up and python3 failed on {host.where} (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-300:]}",
            setup_fix,
        )
    found = json.loads(line.removeprefix("JLABGW-PROBE "))
    missing = [n for n in ("kernel_gateway", "ipykernel") if not found.get(n)]
    if missing:
        raise Failed(
            f"{found['python']} (Python {found['version']}) on {host.where} lacks "
            f"{', '.join(missing)}",
            setup_fix,
        )
    if settings.kernel_name not in found.get("kernelspecs", []):
        raise Failed(
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
    from jlabgw.cluster.host import LocalHost

    scheduler = _scheduler(settings, LocalHost())  # rendering runs no command
    script = scheduler.render(settings)
    bash = shutil.which("bash")
    if bash is not None:
        parsed = subprocess.run(
            [bash, "-n"], input=script, capture_output=True, text=True, timeout=30, check=False
        )
        if parsed.returncode != 0:
            raise Failed(
                f"the rendered script does not parse: {parsed.stderr.strip()[:300]}",
                "check JLABGW_REMOTE_SETUP and JLABGW_BATCH_TEMPLATE for unbalanced quotes "
                "or if/fi",
            )
    directives = " ".join(scheduler.directives(settings))
    source = settings.batch_template or "the built-in template"
    return "ok", f"{source} renders ({len(script.splitlines())} lines): {directives}"


_MAX_NODES = 3  # compute nodes the check connects to: one per running job, this config's first


def _compute_node(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jlabgw.cluster.ssh.tunnel import node_connector
    from jlabgw.errors import HostKeyError, SSHError

    host = context["host"]
    path = f"through {settings.ssh_host}" if settings.ssh_host else "from here"
    scheduler = _scheduler(settings, host)
    jobs = scheduler.running()
    name = settings.job_name
    ours = [j for j in jobs if j.name == name or j.name.startswith(f"{name}-")]
    nodes: dict[str, str] = {}  # node -> the job running there
    for job in ours + [j for j in jobs if j not in ours]:
        node = scheduler.first_node(job.node)
        if node and node not in nodes and len(nodes) < _MAX_NODES:
            nodes[node] = job.job_id
    if not nodes:
        return "skip", (
            "skipped: no running job of yours, so no compute node to connect to; run doctor "
            "again while one runs (a jlabgw session's, or a `sleep 300` job) to "
            f"check its node's host key and login {path}"
        )
    connect = node_connector(settings)
    reached: list[str] = []
    problems: list[str] = []
    fixes: list[str] = []
    for node, job_id in nodes.items():
        try:
            connection = connect(node)
        except HostKeyError as exc:
            problems.append(f"{node} (job {job_id}'s node, {path}): {exc.problem}")
            fixes.append(exc.fix)
            continue
        except SSHError as exc:
            problems.append(f"{node} (job {job_id}'s node) cannot be reached {path}: {exc}")
            fixes.append(
                f"jlabgw reaches a job's gateway by SSH to its node {path}, port "
                f"{settings.compute_ssh_port} (JLABGW_COMPUTE_SSH_PORT), with the key it uses "
                "for the login node: the node must let you in while your job runs there "
                "(most sites do; ask yours if not)"
            )
            continue
        reached.append(f"{connection.spec.label} (job {job_id})")
        connection.close()
    if problems:
        raise Failed("; ".join(problems), " ".join(dict.fromkeys(fixes)))
    return "ok", (
        f"{', '.join(reached)} {path}: host key matches {settings.known_hosts}, authenticated"
    )


CLUSTER_STEPS: Steps = [
    ("batch script", _batch_script, ()),
    ("ssh login", _ssh_login, ()),
    ("ssh agent", _ssh_agent, ()),
    ("scheduler", _scheduler_commands, ("ssh login",)),
    ("connection dir", _connection_dir, ("ssh login",)),
    ("remote python", _remote_python, ("ssh login",)),
    ("compute node", _compute_node, ("ssh login", "scheduler")),
]
