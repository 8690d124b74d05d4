"""Where a Kernel Gateway is reached from this process: the one type the cluster layer hands up."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GatewayEndpoint"]


@dataclass(frozen=True)
class GatewayEndpoint:
    """Where to reach a gateway from this process. ``token`` is never shown in reprs."""

    url: str
    token: str = field(repr=False)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    @property
    def headers(self) -> dict[str, str]:
        """What authenticates a request: the token in a header, never in the URL (``?token=``
        would end up in the gateway's log)."""
        return {"Authorization": f"token {self.token}"}
