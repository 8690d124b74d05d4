"""Command line: ``jlabgw [serve|run|status|stop|tunnel|doctor|config]``, the parser and which
module runs each command. Logs and progress go to stderr.

serve          here; the only path that imports the MCP server (:mod:`jlabgw.mcp`)
run            :mod:`jlabgw.cli.run`
status, stop   :mod:`jlabgw.cli.servers`
tunnel         :mod:`jlabgw.cli.tunnel`
doctor         :mod:`jlabgw.cli.doctor` (its checks: ``checks``, ``local_checks``,
               ``cluster_checks``)
config         here
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from jlabgw import __version__
from jlabgw.cli import run, servers, tunnel
from jlabgw.config import ENV_PREFIX, Settings, load_settings
from jlabgw.errors import JlabgwError
from jlabgw.log import configure_logging

__all__ = ["build_parser", "main"]


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("settings (override JLABGW_* and the config file)")
    group.add_argument("--config", metavar="FILE", help="TOML config file (JLABGW_CONFIG)")
    group.add_argument(
        "--profile", metavar="NAME", help="[profiles.NAME] of the config file (JLABGW_PROFILE)"
    )
    group.add_argument(
        "--backend", choices=["local", "slurm", "gridengine"], help="where the gateway runs"
    )
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
        description="Stop a running jlabgw server (SIGTERM) and orphaned gateways; its "
        "kernels stop (a batch job only once no other server of yours uses it), notebooks "
        "are kept. With several servers running (two MCP clients), name one with --pid or "
        "stop them all with --all.",
    )
    which = stop.add_mutually_exclusive_group()
    which.add_argument("--pid", type=int, help="stop only this server")
    which.add_argument("--all", action="store_true", help="stop every running server")
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
        from jlabgw.cli.doctor import doctor_command

        return doctor_command(_flags(args))
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
            code, name = run.read_source(args)
            return asyncio.run(run.run(settings, code, name, args.notebook))
        if command == "status":
            return servers.status(settings, as_json=args.json)
        if command == "stop":
            return servers.stop(settings, args.pid, every=args.all)
        if command == "tunnel":
            return tunnel.tunnel(settings, args.remote)
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
        asyncio.run(serve_stdio(mcp, max_line=settings.max_message))
    return 0


# -- config ---------------------------------------------------------------------------------------


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
