"""The exceptions jlabgw raises.

Every error meant for a user derives from :class:`JlabgwError`; its message says what went
wrong and what to do next, and is shown as written (CLI stderr, MCP error result). Errors of
the libraries underneath (httpx, websockets, paramiko, OS) are translated at the boundary
with ``raise ... from exc`` so the cause stays in the traceback but never in the message.

Tree::

    JlabgwError
    ├── ConfigError                 a setting is malformed or missing
    ├── BackendError                the gateway could not be started or reached
    │   └── GatewayStartError       the gateway process failed to come up
    ├── GatewayError                the gateway answered with an error
    │   ├── GatewayAuthError        401/403: token rejected
    │   ├── GatewayServerError      5xx: the gateway failed (possibly transient)
    │   └── KernelNotFoundError     the kernel is gone from the gateway
    ├── KernelError                 trouble on the kernel side of a session
    │   ├── KernelDiedError         the kernel process died or restarted
    │   └── ConnectionLostError     the kernel WebSocket dropped mid-request
    ├── SessionError                a session-level request cannot be served
    │   ├── UnknownSessionError     no session with that id
    │   ├── SessionBusyError        the notebook is already held by another session
    │   └── CellIndexError          no cell at that index
    └── NotebookError               a notebook cannot be read, written or placed
        └── PathOutsideNotebookDirError
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CellIndexError",
    "ConfigError",
    "ConnectionLostError",
    "GatewayAuthError",
    "GatewayError",
    "GatewayServerError",
    "GatewayStartError",
    "JlabgwError",
    "KernelDiedError",
    "KernelError",
    "KernelNotFoundError",
    "NotebookError",
    "PathOutsideNotebookDirError",
    "SessionBusyError",
    "SessionError",
    "UnknownSessionError",
]


class JlabgwError(Exception):
    """Base of every error jlabgw reports to a user."""


class ConfigError(JlabgwError):
    """A setting is malformed; the message names the key and what it expected."""


class BackendError(JlabgwError):
    """The backend could not provide a gateway."""


class GatewayStartError(BackendError):
    """The Kernel Gateway process did not become ready."""


class GatewayError(JlabgwError):
    """The gateway answered a request with an error."""


class GatewayAuthError(GatewayError):
    """The gateway rejected our token."""


class GatewayServerError(GatewayError):
    """The gateway answered 5xx; some of these (a kernel mid-restart) pass quickly."""


class KernelNotFoundError(GatewayError):
    """The gateway no longer knows the kernel."""


class KernelError(JlabgwError):
    """A problem with the kernel behind a session."""


class KernelDiedError(KernelError):
    """The kernel process died (or was restarted by the gateway) during a request."""


class ConnectionLostError(KernelError):
    """The WebSocket to the kernel dropped before the request finished."""


class SessionError(JlabgwError):
    """A session-level request cannot be served."""


class UnknownSessionError(SessionError):
    """No session has this id."""


class SessionBusyError(SessionError):
    """The notebook is already attached to another live session."""


class CellIndexError(SessionError):
    """The cell index is out of range or points at the wrong kind of cell."""


class NotebookError(JlabgwError):
    """A notebook cannot be read, written or placed."""


class PathOutsideNotebookDirError(NotebookError):
    """A notebook path resolves outside the notebook directory."""
