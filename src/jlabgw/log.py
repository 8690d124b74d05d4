"""Logging to stderr only (stdout is the MCP stdio channel), with secrets redacted.

Tokens are never logged on purpose; :func:`register_secret` adds a filter-level guarantee so a
token that slips into a message or an exception text is replaced by ``***``.
"""

from __future__ import annotations

import logging
import re
import sys

__all__ = ["configure_logging", "mask_secrets", "register_secret"]

# NAME=value / --name=value / name: value where the name says it is a secret
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(\b[\w.-]*(?:token|secret|passw(?:or)?d|api[_-]?key|access[_-]?key|credential)"
    r"[\w.-]*\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s;&|]+)"
)

_SECRETS: set[str] = set()


def register_secret(secret: str) -> None:
    if len(secret) >= 8:
        _SECRETS.add(secret)


class _RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            message = record.getMessage()
            redacted = message
            for secret in _SECRETS:
                redacted = redacted.replace(secret, "***")
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


def mask_secrets(text: str) -> str:
    """``text`` with registered secrets and secret-looking assignments replaced by ``***``
    (a ``remote_setup`` may export an API token for the job)."""
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return _SECRET_ASSIGNMENT.sub(r"\1***", text)


def configure_logging(level: str) -> None:
    """Send jlabgw's (and its libraries') log records to stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("jlabgw").setLevel(level)
    for noisy in ("httpx", "httpcore", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
