"""The WebSocket reopen schedule against a fake opener (the one faked boundary: one attempt
to open the socket) and a fake backend answer to "is the gateway gone?"."""

from __future__ import annotations

from typing import Any

import pytest

from jlabgw.errors import (
    ConnectionLostError,
    GatewayAuthError,
    GatewayServerError,
    KernelNotFoundError,
)
from jlabgw.jupyter import websocket as websocket_module
from jlabgw.jupyter.websocket import reopen_websocket

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(websocket_module, "REOPEN_DELAYS", (0.0, 0.0, 0.0, 0.0))


OPENED: Any = object()  # what a successful attempt returns


class Opener:
    """Fails with ``errors`` in turn, then opens."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.attempts = 0

    async def __call__(self) -> Any:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return OPENED


async def gone_never() -> str | None:
    return None


async def test_no_answer_and_server_errors_are_retried_until_it_opens() -> None:
    opener = Opener(ConnectionLostError("refused"), GatewayServerError("HTTP 503"))
    ws = await reopen_websocket(
        opener, kernel_id="k", gateway_lost=gone_never, closed=lambda: False
    )
    assert ws is OPENED
    assert opener.attempts == 3


@pytest.mark.parametrize("error", [GatewayAuthError("401"), KernelNotFoundError("404")])
async def test_what_a_retry_cannot_fix_ends_at_once(error: Exception) -> None:
    opener = Opener(error)
    with pytest.raises(type(error)):
        await reopen_websocket(opener, kernel_id="k", gateway_lost=gone_never, closed=lambda: False)
    assert opener.attempts == 1


async def test_a_gateway_the_backend_calls_gone_ends_the_schedule_with_its_reason() -> None:
    async def job_ended() -> str | None:
        return "batch job 7 is no longer running (TIMEOUT)"

    opener = Opener(*[ConnectionLostError("refused")] * 4)
    with pytest.raises(ConnectionLostError, match=r"batch job 7 is no longer running"):
        await reopen_websocket(opener, kernel_id="k", gateway_lost=job_ended, closed=lambda: False)
    assert opener.attempts == 1


async def test_the_schedule_is_bounded_and_ends_with_the_last_error() -> None:
    opener = Opener(*[ConnectionLostError(f"refused {i}") for i in range(10)])
    with pytest.raises(ConnectionLostError, match="refused 3"):
        await reopen_websocket(opener, kernel_id="k", gateway_lost=gone_never, closed=lambda: False)
    assert opener.attempts == 4


async def test_a_closed_connection_stops_reopening() -> None:
    opener = Opener()
    with pytest.raises(ConnectionLostError, match="closed"):
        await reopen_websocket(opener, kernel_id="k", gateway_lost=gone_never, closed=lambda: True)
    assert opener.attempts == 0
