"""Where a Kernel Gateway is reached from this process: the one type the cluster layer hands up."""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field

__all__ = ["GatewayEndpoint", "impostor_message", "is_impostor", "pinned_context"]

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: the pinned certificate is the identity, its validity
# dates are not (the laptop's clock may be behind the node's, and a job may outlive them)
_NO_CHECK_TIME = 0x200000


def pinned_context(cert: str) -> ssl.SSLContext:
    """A TLS context that trusts exactly ``cert`` (PEM), whatever the clocks say."""
    context = ssl.create_default_context(cadata=cert)
    context.verify_flags |= _NO_CHECK_TIME
    return context


def is_impostor(exc: BaseException) -> bool:
    """Whether a failed connection met something that is not our gateway: a certificate that
    is not the pinned one, or no TLS at all. A reset or an early EOF (a port that closed: the
    gateway restarting) is an outage, not an impostor."""
    seen: BaseException | None = exc
    for _ in range(10):  # the cause chain is short; bounded anyway
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        text = str(seen)
        if "CERTIFICATE_VERIFY_FAILED" in text or "WRONG_VERSION_NUMBER" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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
        return pinned_context(self.cert)

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
