"""The log filter's guarantee covers tracebacks too: a registered secret in an exception's
message, logged with ``log.exception``, is redacted in the formatted output (issue 13)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from jlabgw.log import configure_logging, register_secret

SECRET = "tok-5b1e0c9a7f3d42e8"


@pytest.fixture
def stderr_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("jlabgw").level
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    configure_logging("INFO")
    yield out
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("jlabgw").setLevel(saved[2])


def test_secret_in_a_traceback_is_redacted(stderr_log: io.StringIO) -> None:
    register_secret(SECRET)
    log = logging.getLogger("jlabgw.test_security_log")

    def connect() -> None:
        raise ConnectionError(f"gateway said no to Authorization: token {SECRET}")

    try:
        connect()
    except ConnectionError:
        log.exception("could not reach the gateway with %s", SECRET)
    try:
        connect()
    except ConnectionError as exc:
        log.warning("failed", exc_info=exc, stack_info=True)
    text = stderr_log.getvalue()
    assert "Traceback (most recent call last)" in text
    assert "ConnectionError: gateway said no to Authorization: token ***" in text
    assert "could not reach the gateway with ***" in text
    assert SECRET not in text, text
