"""Logging to stderr only (stdout is the MCP stdio channel), with secrets redacted.

Tokens are never logged on purpose; :func:`register_secret` adds a filter-level guarantee so a
token that slips into a message, an exception's traceback (``exc_text``) or a stack is replaced
by ``***``: the filter redacts the message and the traceback it formats once on the record, and
the handler's formatter redacts its whole output as a backstop.
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


def _redact(text: str) -> str:
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text


class _RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            message = record.getMessage()
            redacted = _redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
            # Formatter.format caches the traceback in exc_text and reuses it: format it here,
            # redacted, so no handler of this record prints the secret
            if record.exc_info and not record.exc_text:
                record.exc_text = _FORMATTER.formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = _redact(record.exc_text)
            if record.stack_info:
                record.stack_info = _redact(record.stack_info)
        return True


class _RedactingFormatter(logging.Formatter):
    """The whole formatted record, registered secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return _redact(super().format(record))


_FORMATTER = logging.Formatter()


def mask_secrets(text: str) -> str:
    """``text`` with registered secrets and secret-looking assignments replaced by ``***``
    (a ``remote_setup`` may export an API token for the job)."""
    return _SECRET_ASSIGNMENT.sub(r"\1***", _redact(text))


def configure_logging(level: str) -> None:
    """Send jlabgw's (and its libraries') log records to stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("jlabgw").setLevel(level)
    for noisy in ("httpx", "httpcore", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
