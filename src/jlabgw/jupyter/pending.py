"""Requests in flight on a kernel WebSocket, by msg_id, and when each one is complete.

A request is complete when its shell reply *and* its ``status: idle`` on IOPub have both
arrived (jupyter_client's rule), so no trailing output is ever lost; if IOPub goes quiet for
:data:`IDLE_GRACE` seconds after the reply instead (a lost subscription), it completes anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["IDLE_GRACE", "Message", "OnMessage", "PendingRequest", "PendingRequests"]

log = logging.getLogger(__name__)

Message = dict[str, Any]
OnMessage = Callable[[Message], None]

# After the reply, IOPub must end with ``status: idle``. If IOPub goes quiet for this long
# instead (a lost subscription), the request completes rather than waiting forever.
IDLE_GRACE = 10.0


@dataclass
class PendingRequest:
    on_iopub: OnMessage | None
    done: asyncio.Future[Message]
    reply: Message | None = None
    idle: bool = False
    wait_idle: bool = True
    seen: bool = False  # any IOPub message or reply for it: the kernel got the request
    wire: str | None = None  # the request as sent (sent again only if it provably never arrived)
    runs_code: bool = False  # an execute_request: may be sent again only if it never arrived
    grace: asyncio.TimerHandle | None = None

    def on_idle(self) -> None:
        self.idle = True
        self._maybe_finish()

    def on_reply(self, msg: Message) -> None:
        self.reply = msg
        self._maybe_finish()

    def on_output(self, msg: Message) -> None:
        if self.grace is not None:
            self._maybe_finish()  # IOPub is still talking: restart the quiet timer
        if self.on_iopub is not None:
            self.on_iopub(msg)

    def fail(self, error: BaseException) -> None:
        self._cancel_grace()
        if not self.done.done():
            self.done.set_exception(error)

    def abandon(self) -> None:
        """Nobody waits for it any more."""
        self._cancel_grace()
        self.done.cancel()

    def _maybe_finish(self) -> None:
        if self.done.done() or self.reply is None:
            return
        self._cancel_grace()
        if self.idle or not self.wait_idle:
            self.done.set_result(self.reply)
        else:  # replied, IOPub not idle yet: (re)arm the quiet timer
            self.grace = asyncio.get_running_loop().call_later(IDLE_GRACE, self._give_up_idle)

    def _give_up_idle(self) -> None:
        if not self.done.done() and self.reply is not None:
            log.warning(
                "no IOPub idle status %.0f s after the reply to %s; completing without it",
                IDLE_GRACE,
                self.reply.get("parent_header", {}).get("msg_id", "?"),
            )
            self.done.set_result(self.reply)

    def _cancel_grace(self) -> None:
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None


class PendingRequests:
    """The requests of one connection that wait for their reply, by msg_id."""

    def __init__(self) -> None:
        self._by_id: dict[str, PendingRequest] = {}

    def expect(self, msg_id: str, on_iopub: OnMessage | None, wait_idle: bool) -> PendingRequest:
        """Route the reply and IOPub of ``msg_id`` to a new entry (removed with
        :meth:`discard` once its caller is done with it)."""
        pending = PendingRequest(
            on_iopub=on_iopub,
            done=asyncio.get_running_loop().create_future(),
            wait_idle=wait_idle,
        )
        self._by_id[msg_id] = pending
        return pending

    def get(self, msg_id: str | None) -> PendingRequest | None:
        return self._by_id.get(msg_id) if msg_id else None

    def discard(self, msg_id: str) -> None:
        """Its caller is done with it: nothing can complete it any more (a settling check
        that still holds it would fail a future nobody awaits)."""
        pending = self._by_id.pop(msg_id, None)
        if pending is not None:
            pending.abandon()

    def waiting(self) -> dict[str, PendingRequest]:
        """Unfinished requests."""
        return {m: p for m, p in self._by_id.items() if not p.done.done()}

    def unheard(self) -> dict[str, PendingRequest]:
        """Unfinished requests nothing was heard of yet (no IOPub, no reply)."""
        return {m: p for m, p in self._by_id.items() if not p.seen and not p.done.done()}

    def fail_all(self, error: BaseException) -> None:
        for pending in list(self._by_id.values()):
            pending.fail(error)

    def __bool__(self) -> bool:
        return bool(self._by_id)
