"""Command line: ``jlabgw [serve|run|status|stop]``. Logs and progress go to stderr."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from jlabgw import __version__
from jlabgw.cluster.backends.status import GatewayStatus
from jlabgw.config import ENV_PREFIX, Settings, load_settings
from jlabgw.errors import JlabgwError, UsageError
from jlabgw.log import configure_logging
from jlabgw.sessions.state import ServerState, pid_alive, read_server_states

__all__ = ["main"]

_STOP_WAIT = 15.0


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("settings (override JLABGW_* and the config file)")
    group.add_argument("--config", metavar="FILE", help="TOML config file (JLABGW_CONFIG)")
    group.add_argument(
        "--profile", metavar="NAME", help="[profiles.NAME] of the config file (JLABGW_PROFILE)"
    )
    group.add_argument("--backend", choices=["local", "slurm"], help="where the gateway runs")
    group.add_argument("--notebook-dir", metavar="DIR", help="notebook directory")
    group.add_argument("--state-dir", metavar="DIR", help="private state directory")
    group.add_argument("--kernel-name", metavar="NAME", help="kernel spec for new sessions")
    group.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="jlabgw",
        description=(
            "MCP server for notebook-recorded Jupyter sessions through Kernel Gateway. "
            "Without a command, serves MCP over stdio."
        ),
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"jlabgw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "serve",
        parents=[common],
        help="serve MCP over stdio (the default)",
        description="Serve MCP over stdio for Claude Desktop, Claude Code or any client.",
    )
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run code in a new session and print its outputs",
        description="Run a file or a code string through the same path as the MCP server "
        "(gateway, kernel, notebook) and print the outputs.",
    )
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", help="Python file to run ('-' for stdin)")
    source.add_argument("-c", dest="code", metavar="CODE", help="code to run")
    run.add_argument(
        "--notebook",
        metavar="PATH",
        help="notebook to record into, relative to the notebook dir (appended to if it "
        "exists); default: a new notebook named after the file",
    )
    status = sub.add_parser(
        "status",
        parents=[common],
        help="show running jlabgw servers",
        description="Show running jlabgw servers, gateways and sessions.",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    stop = sub.add_parser(
        "stop",
        parents=[common],
        help="stop running jlabgw servers",
        description="Stop running jlabgw servers (SIGTERM) and orphaned "
        "gateways; their kernels stop, notebooks are kept.",
    )
    stop.add_argument("--pid", type=int, help="stop only this server")
    tunnel = sub.add_parser(
        "tunnel",
        parents=[common],
        help="open the gateway (or an SSH tunnel to one) for debugging",
        description="Attach to the running server's gateway (or start one) and print its URL, "
        "where the token is, and a curl line. With --remote, forward a local port through "
        "JLABGW_SSH_HOST to HOST:PORT as seen from there. Runs until Ctrl-C.",
    )
    tunnel.add_argument("--remote", metavar="HOST:PORT", help="forward to this address via SSH")
    sub.add_parser(
        "doctor",
        parents=[common],
        help="check the set-up and say how to fix what fails",
        description="Check the config, directories, SSH to the login node, SLURM, the "
        "cluster's Python and the batch script (or, for the local backend, that a gateway "
        "starts). Exit code 1 if any check fails.",
    )
    config = sub.add_parser(
        "config",
        parents=[common],
        help="show the effective settings and where each comes from",
        description="Print every setting, its value and its source (command line, "
        "environment, config file or profile, default). Secrets are masked.",
    )
    config.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    config = getattr(args, "config", None)
    if config:
        os.environ[ENV_PREFIX + "CONFIG"] = config
    return {
        key: getattr(args, key, None)
        for key in ("profile", "backend", "notebook_dir", "state_dir", "kernel_name", "log_level")
    }


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(_flags(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "doctor":  # a config that does not load is one of its findings
        return _doctor(_flags(args))
    try:
        settings = _settings(args)
    except JlabgwError as exc:
        print(f"jlabgw: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    command = args.command or "serve"
    try:
        if command == "serve":
            return _serve(settings)
        if command == "run":
            code, name = _run_source(args)
            return asyncio.run(_run(settings, code, name, args.notebook))
        if command == "status":
            return _status(settings, as_json=args.json)
        if command == "stop":
            return _stop(settings, args.pid)
        if command == "tunnel":
            return _tunnel(settings, args.remote)
        if command == "config":
            return _config(_flags(args), as_json=args.json)
    except JlabgwError as exc:
        print(f"jlabgw: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    raise AssertionError(command)


# -- serve ---------------------------------------------------------------------------------------


def _serve(settings: Settings) -> int:
    backend = None
    if settings.eager_start:
        from jlabgw.cluster.backends import create_backend

        backend = create_backend(settings)
        backend.begin()  # a batch job queues while the server's imports below load
    from jlabgw.mcp.server import build_server  # fastmcp import is slow; only the server needs it
    from jlabgw.mcp.stdio import serve_stdio

    mcp = build_server(settings, backend)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_stdio(mcp))
    return 0


# -- run -----------------------------------------------------------------------------------------


class _Spinner:
    """Progress on stderr: an updating line on a terminal, plain lines otherwise."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.message = ""
        self.t0 = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def update(self, done: float, total: float | None, message: str) -> None:
        if message != self.message and not self.tty:
            print(f"jlabgw: {message}", file=sys.stderr)
        self.message = message

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_Spinner]:
        if self.tty:
            self._task = asyncio.create_task(self._spin())
        try:
            yield self
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                print("\r\x1b[K", end="", file=sys.stderr, flush=True)

    async def _spin(self) -> None:
        for i in range(10**9):
            elapsed = time.monotonic() - self.t0
            frame = self.FRAMES[i % len(self.FRAMES)]
            line = f"\r\x1b[K{frame} {self.message} ({elapsed:.1f} s)"
            print(line, end="", file=sys.stderr, flush=True)
            await asyncio.sleep(0.1)


def _run_source(args: argparse.Namespace) -> tuple[str, str]:
    """The code to run and the experiment name for it."""
    if args.code is not None:
        return args.code, "run"
    if args.file == "-":
        return sys.stdin.read(), "stdin"
    path = Path(args.file)
    try:
        return path.read_text(), path.stem
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


async def _run(settings: Settings, code: str, name: str, notebook: str | None) -> int:
    # imported here: fastmcp and nbformat take most of a second, and `serve` must reach
    # Backend.begin() before paying for them
    from jlabgw.cluster.backends import create_backend
    from jlabgw.notebook.text import outputs_to_text
    from jlabgw.sessions.manager import SessionManager

    settings = settings.model_copy(update={"spare_kernel": False})  # one session, then exit
    backend = create_backend(settings)
    manager = SessionManager(settings, backend)
    spinner = _Spinner()
    try:
        async with spinner.running():
            info = await manager.start_new(name, spinner.update, notebook_path=notebook)
            await spinner.update(0, None, "running")
            result = await manager.execute(info["session_id"], code, spinner.update)
        text = outputs_to_text(result.outputs)
        sys.stdout.write(text)
        sys.stdout.flush()
        for warning in result.warnings:
            print(f"jlabgw: warning: {warning}", file=sys.stderr)
        print(
            f"jlabgw: recorded in {result.notebook_path} (cell {result.cell_index})",
            file=sys.stderr,
        )
        return 1 if result.is_error else 0
    finally:
        try:
            await manager.aclose()
        finally:
            await backend.aclose()


# -- doctor / config -----------------------------------------------------------------------------


def _doctor(flags: dict[str, Any]) -> int:
    from jlabgw.cli.doctor import doctor, render_report, tty_safe

    configure_logging("ERROR")  # the report says it all; library warnings would interleave

    def write(line: str) -> None:
        print(tty_safe(line), flush=True)

    print("jlabgw doctor", flush=True)
    return render_report(doctor(flags), write)


def _config(flags: dict[str, Any], as_json: bool) -> int:
    from jlabgw.config import resolve_settings
    from jlabgw.log import mask_secrets

    resolved = resolve_settings(flags)
    dumped = resolved.settings.model_dump(mode="json")
    rows = [
        (key, mask_secrets("" if value is None else str(value)), resolved.origins[key])
        for key, value in dumped.items()
    ]
    if as_json:
        print(json.dumps({k: {"value": v, "source": o} for k, v, o in rows}, indent=1))
        return 0
    print(
        f"config file: {resolved.config_path}"
        + ("" if resolved.config_path.exists() else " (none)")
    )
    if resolved.profiles:
        print(f"profiles:    {', '.join(resolved.profiles)}")
    width = max(len(ENV_PREFIX) + len(k) for k in dumped)
    for key, value, origin in rows:
        shown = value.replace("\n", "\\n") if value else "''"
        print(f"{ENV_PREFIX + key.upper():<{width}}  {shown}  [{origin}]")
    return 0


# -- status / stop -------------------------------------------------------------------------------


def _status(settings: Settings, as_json: bool) -> int:
    states = read_server_states(settings.state_dir)
    if as_json:
        print(json.dumps([state.to_dict() for state in states], indent=1))
        return 0
    if not states:
        print(f"no jlabgw server running (state dir {settings.state_dir})")
        return 0
    for state in states:
        _print_state(state)
    return 0


def _print_state(state: ServerState) -> None:
    status = state.status
    gw = status.backend.gateway
    if state.stale:
        print(
            f"server pid {state.pid}: gone, but its gateway pid "
            f"{state.orphan_gateway_pid} is still running (`jlabgw stop` ends it)"
        )
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.started_at))
    print(f"server pid {state.pid} (since {started}), backend {status.backend.backend}")
    print(f"  gateway: {gw.state} {gw.url or ''} pid {gw.pid}")
    job = status.backend.job
    if job and job.id:
        print(
            f"  job: {job.id} {job.state or '?'} on {job.node or '?'}, "
            f"time left {job.time_left or '?'}"
            + (f" (reason: {job.reason})" if job.reason else "")
            + f" [{job.where}]"
        )
    for extra in status.jobs[1:]:  # jobs of other resource shapes
        print(
            f"  job: {(extra.job.id if extra.job else None) or '-'} "
            f"{(extra.job.state if extra.job else None) or '?'} on "
            f"{(extra.job.node if extra.job else None) or '?'} for {extra.resources}, "
            f"{extra.sessions} session(s)"
        )
    print(f"  notebooks: {status.notebook_dir}")
    print(f"  sessions: {len(status.sessions)}")
    for s in status.sessions:
        print(f"    {s.session_id}  {s.state:<5}  {s.cells:>4} cells  {s.notebook_path}")


def _stop(settings: Settings, only_pid: int | None) -> int:
    states = read_server_states(settings.state_dir)
    if only_pid is not None:
        states = [s for s in states if s.pid == only_pid]
        if not states:
            raise UsageError(f"no jlabgw server with pid {only_pid} (see `jlabgw status`)")
    if not states:
        print("no jlabgw server running")
        return 0
    failed = 0
    for state in states:
        pid = state.orphan_gateway_pid if state.orphan_gateway_pid else state.pid
        what = "orphaned gateway" if state.stale else "server"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_WAIT
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            print(f"{what} pid {pid} did not stop within {_STOP_WAIT:.0f} s", file=sys.stderr)
            failed += 1
        else:
            print(f"stopped {what} pid {pid}")
            if state.stale:
                state.state_file.unlink(missing_ok=True)
    return 1 if failed else 0


# -- tunnel --------------------------------------------------------------------------------------

_READ_CONFIG_CMD = (
    "python3 -c 'import json,sys; "
    'print(json.load(open(sys.argv[1]))["KernelGatewayApp"]["auth_token"])\' '
)


def _print_access(url: str, gateway: GatewayStatus | None) -> None:
    print(f"gateway: {url}", flush=True)
    token_file = gateway.token_file if gateway else None
    if gateway and gateway.token_host:  # a batch job's connection file, on the cluster
        print(f"token:   the 'token' field of {gateway.token_location()} (mode 0600)")
        print(f"try:     curl -sS -H 'Authorization: token TOKEN' {url}/api/kernelspecs")
    elif token_file:
        token = f"$({_READ_CONFIG_CMD}{token_file})"
        print(
            f"token:   in {token_file} (mode 0600); print it with: {_READ_CONFIG_CMD}{token_file}"
        )
        print(f'try:     curl -sS -H "Authorization: token {token}" {url}/api/kernelspecs')
    else:
        print(
            "token:   the auth token of the gateway you forward to (send it as the "
            "'Authorization: token ...' header)"
        )
        print(f"try:     curl -sS -H 'Authorization: token TOKEN' {url}/api/kernelspecs")
    print("Ctrl-C closes it.", flush=True)


def _wait_for_interrupt(check: Callable[[], str | None] | None = None) -> None:
    """Block until Ctrl-C/SIGTERM; ``check`` may return a line to print (e.g. reconnects)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        line = check() if check else None
        if line:
            print(line, flush=True)


def _tunnel(settings: Settings, remote: str | None) -> int:
    if remote is not None:
        return _tunnel_ssh(settings, remote)
    for state in read_server_states(settings.state_dir):
        gw = state.status.backend.gateway
        if not state.stale and gw.state == "running" and gw.url:
            print(f"attached to jlabgw server pid {state.pid}")
            _print_access(gw.url, gw)
            _wait_for_interrupt()
            return 0
    return asyncio.run(_tunnel_local(settings))


async def _tunnel_local(settings: Settings) -> int:
    """No server running: start the configured backend's gateway (a local process, or a batch
    job and its tunnel), showing progress (the queue's pending reason) while it comes up."""
    from jlabgw.cluster.backends import create_backend

    backend = create_backend(settings)
    spinner = _Spinner()
    try:
        async with spinner.running(), backend.watching(spinner.update):
            await spinner.update(0, None, f"starting the {backend.name} gateway")
            endpoint = await backend.start()
        print(f"started a {backend.name} gateway (no jlabgw server was running)")
        _print_access(endpoint.url, backend.describe().gateway)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await backend.aclose()
    return 0


def _tunnel_ssh(settings: Settings, remote: str) -> int:
    from jlabgw.cluster.ssh.connection import SSHConnection
    from jlabgw.cluster.ssh.forward import Forwarder

    if not settings.ssh_host:
        raise UsageError("--remote needs JLABGW_SSH_HOST (the host to tunnel through)")
    host, _, port = remote.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--remote takes HOST:PORT, not {remote!r}")
    connection = SSHConnection(settings.ssh_host, settings)
    print(f"connecting to {connection.spec.label} ...", flush=True)
    connection.transport  # noqa: B018 - connect now, so errors show before the URL
    seen = 0
    with Forwarder(connection, host, int(port)) as forwarder:
        print(f"forwarding {forwarder.url} -> {host}:{port} via {connection.spec.label}")
        _print_access(forwarder.url, None)

        def reconnects() -> str | None:
            nonlocal seen
            if connection.reconnects != seen:
                seen = connection.reconnects
                return f"reconnected to {connection.spec.label} (#{seen}); same local port"
            return None

        _wait_for_interrupt(reconnects)
    connection.close()
    return 0
