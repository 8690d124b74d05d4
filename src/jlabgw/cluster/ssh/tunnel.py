"""SSH to a compute node (through the login node when there is one) and a local port forwarded
to the gateway on the node's 127.0.0.1.

The connection can be started ahead, while the gateway is still starting (the scheduler names
the node once the job runs; connecting takes ~0.2 s): :meth:`NodeTunnel.open` then takes it if
it reached the node the gateway reported, and makes a new one otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from jlabgw.aio import task_succeeded
from jlabgw.cluster.ssh.config import check_node_name
from jlabgw.cluster.ssh.connection import SSHConnection
from jlabgw.cluster.ssh.forward import Forwarder
from jlabgw.config import Settings
from jlabgw.errors import JlabgwError
from jlabgw.jupyter.endpoint import GatewayEndpoint

__all__ = ["NodeTunnel", "node_connector"]

log = logging.getLogger(__name__)

Connect = Callable[[str], SSHConnection]
"""Make (and open) an SSH connection to a node by name; blocking."""


def node_connector(settings: Settings) -> Connect:
    """Connections to compute nodes: their own SSH port, through the login node if set. A node
    name that is not a host name is refused before any ssh config or connection sees it."""

    def connect(node: str) -> SSHConnection:
        check_node_name(node)
        conn = SSHConnection(
            node, settings, port=settings.compute_ssh_port, jump=settings.ssh_host or None
        )
        conn.transport  # noqa: B018 - connect now: errors belong to this call
        return conn

    return connect


class NodeTunnel:
    """At most one node connection and one forwarder, replaced by the next :meth:`open`."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._ahead: asyncio.Task[SSHConnection] | None = None
        self._conn: SSHConnection | None = None
        self._forwarder: Forwarder | None = None

    def connect_ahead(self, node: str) -> None:
        """Start connecting to ``node`` now, for :meth:`open` to take (call in the loop)."""
        self.abandon_ahead()
        self._ahead = asyncio.create_task(asyncio.to_thread(self._connect, node))

    def abandon_ahead(self) -> None:
        """Not needed after all: close the connection made ahead once it is made."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.add_done_callback(_close_connection)

    async def open(
        self, node: str, port: int, token: str, cert: str | None = None
    ) -> GatewayEndpoint:
        """Forward a local port to ``127.0.0.1:port`` on ``node``; the endpoint through it
        (https, pinned to ``cert``, when the gateway has one)."""
        check_node_name(node)  # before the current tunnel is given up for it
        await asyncio.to_thread(self.close)
        conn = await self._take_ahead(node)
        endpoint = await asyncio.to_thread(self._forward, node, port, token, conn)
        if cert:  # TLS end to end through the tunnel: 127.0.0.1 is in the certificate
            endpoint = GatewayEndpoint(
                endpoint.url.replace("http://", "https://", 1), token, cert=cert
            )
        return endpoint

    async def _take_ahead(self, node: str) -> SSHConnection | None:
        """The connection made ahead, if it is to ``node``, else None."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        try:
            conn = await ahead
        except JlabgwError as exc:
            log.info("SSH to %s ahead of the gateway failed (%s); trying again", node, exc)
            return None
        if conn.spec.alias != node:  # squeue's node name is not the node's hostname
            await asyncio.to_thread(conn.close)
            return None
        return conn

    def _forward(
        self, node: str, port: int, token: str, conn: SSHConnection | None
    ) -> GatewayEndpoint:
        self._conn = conn or self._connect(node)
        self._forwarder = Forwarder(self._conn, "127.0.0.1", port).start()
        return GatewayEndpoint(url=self._forwarder.url, token=token)

    @property
    def connection(self) -> SSHConnection | None:
        """The SSH connection to the node the tunnel forwards through (None: no tunnel), for
        commands and SFTP on that node beside the forwarding."""
        return self._conn

    def close(self) -> None:
        """Stop forwarding and close the node connection (blocking). Idempotent."""
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _close_connection(task: asyncio.Task[SSHConnection]) -> None:
    if task_succeeded(task):
        task.result().close()
