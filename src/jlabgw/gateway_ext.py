"""Code that runs inside the Kernel Gateway process, not in jlabgw.

Kept free of other jlabgw imports so it can be shipped to a cluster node as a single file.

Tornado never sets TCP_NODELAY on the kernel WebSocket, so every small reply waits for the
peer's delayed ACK (~40 ms per execution instead of ~7 ms). Selecting this class with
``KernelGatewayApp.kernel_websocket_connection_class`` turns Nagle off per connection.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

__all__ = ["NoDelayChannelsConnection"]


class NoDelayChannelsConnection(ZMQChannelsWebsocketConnection):
    """ZMQ channels WebSocket connection with TCP_NODELAY set on the socket."""

    def connect(self) -> Any:
        self.websocket_handler.set_nodelay(True)
        return super().connect()
