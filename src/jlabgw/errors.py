"""The exceptions jlabgw raises.

Every error meant for a user derives from :class:`JlabgwError`; its message says what went
wrong and what to do next, and is shown as written (CLI stderr, MCP error result). Errors of
the libraries underneath (httpx, websockets, paramiko, OS) are translated at the boundary
with ``raise ... from exc`` so the cause stays in the traceback but never in the message.

Tree (catch the category that matches what you will do about it)::

    JlabgwError
    ├── ConfigError                 a setting is malformed or missing
    ├── UsageError                  a command-line argument cannot be used as given
    ├── BackendError                the gateway could not be started or reached
    │   └── GatewayStartError       the gateway process failed to come up
    ├── GatewayError                talking to the gateway failed
    │   ├── ConnectionLostError     no answer: a REST request's transport failed or timed out,
    │   │                           or the kernel WebSocket dropped mid-request (the one
    │   │                           category REST and WebSocket share: "is the gateway gone?")
    │   ├── GatewayAuthError        401/403: token rejected
    │   ├── GatewayServerError      5xx: the gateway failed (possibly transient)
    │   ├── GatewayImpostorError    what answers is not our gateway (TLS certificate)
    │   └── KernelNotFoundError     the kernel is gone from the gateway
    ├── SSHError                    an SSH connection could not be made or used
    │   ├── HostKeyError            the host key is unknown or does not match known_hosts
    │   ├── SSHAuthError            no key was accepted
    │   └── SSHConnectError         the host (or a jump host) cannot be reached
    ├── CommandError                a command failed (argv, exit code, stdout, stderr)
    ├── KernelError                 trouble on the kernel side of a session
    │   ├── KernelDiedError         the kernel process died or restarted
    │   ├── KernelSpecError         the requested kernel is not installed on the gateway
    │   └── KernelStartError        a started kernel never answered
    ├── SessionError                a session-level request cannot be served
    │   ├── UnknownSessionError     no session with that id
    │   ├── UnknownExecutionError   no execution with that id in the session
    │   ├── SessionBusyError        the session or notebook is held by another run/session
    │   ├── SessionLostError        the gateway (batch job) behind the session is gone
    │   ├── CodeTooLargeError       the code is over the gateway's message limit
    │   └── CellIndexError          no cell at that index
    └── NotebookError               a notebook cannot be read, written or placed
        └── PathOutsideNotebookDirError
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CellIndexError",
    "CodeTooLargeError",
    "CommandError",
    "ConfigError",
    "ConnectionLostError",
    "GatewayAuthError",
    "GatewayError",
    "GatewayImpostorError",
    "GatewayServerError",
    "GatewayStartError",
    "HostKeyError",
    "JlabgwError",
    "KernelDiedError",
    "KernelError",
    "KernelNotFoundError",
    "KernelSpecError",
    "KernelStartError",
    "NotebookError",
    "PathOutsideNotebookDirError",
    "SSHAuthError",
    "SSHConnectError",
    "SSHError",
    "SessionBusyError",
    "SessionError",
    "SessionLostError",
    "UnknownExecutionError",
    "UnknownSessionError",
    "UsageError",
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
    """Talking to the gateway failed (it answered with an error, or did not answer)."""


class ConnectionLostError(GatewayError):
    """The gateway could not be reached: a REST request got no answer, or the kernel
    WebSocket dropped before the request finished. Whether the gateway (or its job) is gone
    for good is the backend's to say (``Backend.lost``)."""


class GatewayAuthError(GatewayError):
    """The gateway rejected our token."""


class GatewayImpostorError(GatewayError):
    """What answers on the gateway's address is not the gateway our job started: its TLS
    certificate is not the one pinned in the connection file. The token was not sent."""


class GatewayServerError(GatewayError):
    """The gateway answered 5xx; some of these (a kernel mid-restart) pass quickly."""


class KernelNotFoundError(GatewayError):
    """The gateway no longer knows the kernel."""


class SSHError(JlabgwError):
    """An SSH connection could not be made or used."""


class HostKeyError(SSHError):
    """The server's host key is not in known_hosts, or differs from the recorded one.

    ``problem`` says which, ``fix`` how to put it right (the commands to run); the message is
    both. ``jlabgw doctor`` shows them apart."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(f"{problem}. {fix}" if fix else problem)
        self.problem = problem
        self.fix = fix


class SSHAuthError(SSHError):
    """The server accepted none of our keys."""


class SSHConnectError(SSHError):
    """The host, or a jump host on the way, cannot be reached."""


class CommandError(JlabgwError):
    """A command exited with a non-zero status. Carries everything needed to diagnose it."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str, where: str):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.where = where
        detail = (stderr.strip() or stdout.strip() or "no output")[-2000:]
        super().__init__(
            f"`{' '.join(argv)}` failed on {where} with exit code {returncode}: {detail}"
        )


class UsageError(JlabgwError):
    """A command-line argument cannot be used as given."""


class KernelError(JlabgwError):
    """A problem with the kernel behind a session."""


class KernelDiedError(KernelError):
    """The kernel process died (or was restarted by the gateway) during a request."""


class KernelSpecError(KernelError):
    """The requested kernel spec is not installed where the gateway runs."""


class KernelStartError(KernelError):
    """A kernel was started but did not answer in time."""


class SessionError(JlabgwError):
    """A session-level request cannot be served."""


class UnknownSessionError(SessionError):
    """No session has this id."""


class UnknownExecutionError(SessionError):
    """No recent execution of this session has this id."""


class SessionBusyError(SessionError):
    """The session (or the notebook) is in use: a cell is running, or another session has it."""


class SessionLostError(SessionError):
    """The gateway or batch job behind a session ended: its kernel state is gone."""


class CodeTooLargeError(SessionError):
    """The code is over the gateway's WebSocket message limit."""


class CellIndexError(SessionError):
    """The cell index is out of range or points at the wrong kind of cell."""


class NotebookError(JlabgwError):
    """A notebook cannot be read, written or placed."""


class PathOutsideNotebookDirError(NotebookError):
    """A notebook path resolves outside the notebook directory."""
