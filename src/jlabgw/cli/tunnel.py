"""``jlabgw tunnel``: a gateway to look at by hand. Attaches to a running server's gateway, or
starts the configured backend's (a local process, or a batch job and its SSH tunnel); with
``--remote HOST:PORT``, forwards a local port through JLABGW_SSH_HOST. Runs until Ctrl-C."""

from __future__ import annotations

import asyncio
import shlex
import signal
import threading
from collections.abc import Callable

from jlabgw.cli.spinner import Spinner
from jlabgw.cluster.backends.status import GatewayStatus
from jlabgw.config import Settings
from jlabgw.errors import UsageError
from jlabgw.sessions.state import read_server_states

__all__ = ["tunnel"]

_READ_CONFIG_CMD = (
    "python3 -c 'import json,sys; "
    'print(json.load(open(sys.argv[1]))["KernelGatewayApp"]["auth_token"])\' '
)
# the header line on stdout, for ``curl -H @-`` to read from stdin: the token is in no argv
_HEADER_CMD = (
    'python3 -c \'import json,sys; print("Authorization: token " + '
    'json.load(open(sys.argv[1]))["KernelGatewayApp"]["auth_token"])\' '
)
# for a token pasted by hand: read (no echo) and printf are shell builtins, so no argv has it
_PASTE_CMD = "read -rs TOKEN && printf 'Authorization: token %s\\n' \"$TOKEN\" | "


def tunnel(settings: Settings, remote: str | None) -> int:
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


def _print_access(url: str, gateway: GatewayStatus | None) -> None:
    print(f"gateway: {url}", flush=True)
    cert = gateway.cert_file if gateway else None
    curl = f"curl -sS --cacert {shlex.quote(cert)}" if cert else "curl -sS"
    if cert:
        print(f"cert:    {cert} (the gateway's own TLS certificate: trust only it)")
    token_file = gateway.token_file if gateway else None
    if gateway and gateway.token_host:  # a batch job's connection file, on the cluster
        print(
            f"token:   the 'token' field of {gateway.token_location()} (mode 0600); paste it "
            "after this curl line (it stays out of ps and of your shell history)"
        )
        print(f"try:     {_PASTE_CMD}{curl} -H @- {url}/api/kernelspecs")
    elif token_file:
        path = shlex.quote(str(token_file))
        print(f"token:   in {token_file} (mode 0600); print it with: {_READ_CONFIG_CMD}{path}")
        # curl reads the header from stdin (-H @-): the token is in no process's argv (ps)
        print(f"try:     {_HEADER_CMD}{path} | {curl} -H @- {url}/api/kernelspecs")
    else:
        print(
            "token:   the auth token of the gateway you forward to (send it as the "
            "'Authorization: token ...' header); paste it after this curl line (it stays out "
            "of ps and of your shell history)"
        )
        print(f"try:     {_PASTE_CMD}curl -sS -H @- {url}/api/kernelspecs")
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


async def _tunnel_local(settings: Settings) -> int:
    """No server running: start the configured backend's gateway (a local process, or a batch
    job and its tunnel), showing progress (the queue's pending reason) while it comes up."""
    from jlabgw.cluster.backends import create_backend

    backend = create_backend(settings)
    spinner = Spinner()
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
