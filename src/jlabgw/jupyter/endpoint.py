"""Where a Kernel Gateway is reached from this process: the one type the cluster layer hands up."""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field

__all__ = ["GatewayEndpoint", "impostor_message"]


@dataclass(frozen=True)
class GatewayEndpoint:
    """Where to reach a gateway from this process. ``token`` is never shown in reprs.

    ``cert``: the PEM certificate the gateway's supervisor made and published in the 0600
    connection file. With it, the URL is https and this certificate is the only one trusted:
    a process that took the gateway's port cannot complete the handshake, so it never sees
    the token or any code."""

    url: str
    token: str = field(repr=False)
    cert: str | None = field(default=None, repr=False)

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """Trusts exactly :attr:`cert` (None: plain HTTP)."""
        if not self.cert:
            return None
        return ssl.create_default_context(cadata=self.cert)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    @property
    def headers(self) -> dict[str, str]:
        """What authenticates a request: the token in a header, never in the URL (``?token=``
        would end up in the gateway's log)."""
        return {"Authorization": f"token {self.token}"}


def impostor_message(endpoint: GatewayEndpoint, what: str) -> str:
    """What to tell a user when the pinned certificate does not match."""
    return (
        f"{what}: what answers at {endpoint.url} is not the gateway jlabgw started (its TLS "
        "certificate is not the one in the job's connection file), so nothing was sent to it, "
        "not even the token. Another process holds the gateway's port, or the gateway was "
        "replaced; `jlabgw status` shows the job, and a new session starts a fresh gateway"
    )
