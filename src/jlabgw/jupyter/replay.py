"""What a reopened kernel WebSocket needs: messages replayed twice are dropped, and requests
that were cut off with the old socket are settled without ever running code twice.

The gateway (``node/gateway_ext.py``) replays what it wrote after the last message we name
(``jlabgw_last``), then jupyter_server replays what it buffered while no socket was open; some
of that may have reached us already. :class:`SeenMessages` drops those repeats by msg_id.
:func:`settle_unheard` decides, for each request nothing was heard of, whether it is safe to
send again.

A message over the size limit is refused unread: websockets closes the connection (1009). The
gateway would replay it to the next socket that names the last message seen, so
:func:`on_refused` forgets that one (the next socket gets only what jupyter_server buffered
after the close), and tells each waiting cell in a note; :func:`settle_refused` fails the
requests whose reply went with the closed connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable

import websockets
from websockets.frames import CloseCode

from jlabgw.errors import ConnectionLostError, JlabgwError
from jlabgw.jupyter.messages import note
from jlabgw.jupyter.pending import Message, PendingRequest

__all__ = [
    "SILENT_EXECUTE",
    "SeenMessages",
    "on_refused",
    "refused_too_big",
    "settle_refused",
    "settle_unheard",
]

log = logging.getLogger(__name__)

SEEN_MAX = 20_000  # msg_ids remembered for dropping replays (the gateway keeps <= 4096)
# After a reopen, how long the probe that tells delivered from lost requests may take
# (it waits behind a running cell; past this, requests are left to complete as they will).
UNDELIVERED_PROBE = 120.0

# The probe: runs nothing, but is answered with the kernel's execution count, after anything
# the kernel received before it (shell requests are handled in order).
SILENT_EXECUTE = {
    "code": "",
    "silent": True,
    "store_history": False,
    "user_expressions": {},
    "allow_stdin": False,
    "stop_on_error": False,
}


class SeenMessages:
    """The msg_ids received on one WebSocket session id, and the newest of them."""

    def __init__(self, session_id: str) -> None:
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._own_prefix = session_id + "_"
        self.last_msg_id: str | None = None  # what a reopened socket asks to resume after
        self.duplicates = 0

    def first_time(self, msg: Message) -> bool:
        """Record ``msg``'s id; False for a replayed message received before.

        Messages the gateway makes itself (status "restarting" ...) carry our session id and
        a counter that starts over on each connection: their ids repeat, they are never
        replayed, and they are always delivered."""
        msg_id = (msg.get("header") or {}).get("msg_id") or msg.get("msg_id")
        if not isinstance(msg_id, str) or msg_id.startswith(self._own_prefix):
            return True
        if msg_id in self._seen:
            if msg.get("jlabgw_replay"):
                self.duplicates += 1
                return False
            return True
        self._seen[msg_id] = None
        if len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        self.last_msg_id = msg_id
        return True


async def settle_unheard(
    suspects: dict[str, PendingRequest],
    known_count: int | None,
    probe: Callable[[], Awaitable[Message]],
    resend: Callable[[str, str], Awaitable[bool]],
    kernel_id: str,
) -> None:
    """After a reopen: settle the requests nothing was heard of (no IOPub, no reply).

    The gateway replays what the kernel said while we were away, but not what it wrote to
    the dead connection before noticing it had died. So a request that is still unheard of
    was either lost in transit (the kernel never got it) or ran entirely unseen. ``probe``
    (a silent execute) tells which: it is answered after anything the kernel got before it,
    with the kernel's execution count, which a run of the lost request would have moved past
    ``known_count``, the last one we saw. A request that provably never arrived is sent again
    with ``resend(msg_id, wire)`` (it then runs once, as asked; False: there is no socket to
    send on); one that ran unseen, or that cannot be told, fails saying so. Nothing runs twice.
    """
    if not suspects:
        return
    try:
        async with asyncio.timeout(UNDELIVERED_PROBE):
            answer = await probe()
    except (TimeoutError, JlabgwError) as exc:
        log.info("kernel %s: cannot tell which requests arrived: %s", kernel_id, exc)
        return
    now = answer.get("content", {}).get("execution_count")
    code_suspects = sum(p.runs_code for p in suspects.values())
    for msg_id, pending in suspects.items():
        if pending.seen or pending.done.done():
            continue
        log.warning("kernel %s: request %s was cut off with the connection", kernel_id, msg_id)
        never_arrived = code_suspects == 1 and known_count is not None and now == known_count
        if not pending.runs_code or never_arrived:
            # never received (or harmless to repeat): sending it now runs it once
            if pending.wire is not None and await resend(msg_id, pending.wire):
                continue
            what = (
                "the kernel never received it: it was NOT executed. The kernel and its "
                "variables are fine; send it again"
            )
        elif code_suspects == 1 and known_count is not None and now == known_count + 1:
            what = (
                f"the kernel ran it (execution_count {now}) but its output was lost with "
                "the connection; it is not re-run"
            )
        else:
            what = (
                "jlabgw cannot tell whether the kernel ran it; check its effects before "
                "running it again"
            )
        log.warning("kernel %s: request %s: %s", kernel_id, msg_id, what)
        pending.fail(
            ConnectionLostError(
                f"the connection to kernel {kernel_id} broke as this was sent: {what}"
            )
        )


def refused_too_big(exc: websockets.ConnectionClosed) -> bool:
    """Whether we closed the connection because a message was over ``max_size``."""
    return exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG


def _limit(size: int) -> str:
    return f"{size / 2**20:g} MiB" if size % 2**20 == 0 else f"{size} bytes"


def on_refused(waiting: dict[str, PendingRequest], seen: SeenMessages, limit: int) -> None:
    """A message over ``limit`` bytes was refused (its connection closed): the gateway must not
    replay it, and each cell waiting says so in a note (whose it was cannot be told unread)."""
    seen.last_msg_id = None
    text = (
        f"the kernel sent a message over {_limit(limit)} (JLABGW_MAX_MESSAGE); it was "
        "refused unread and is not in the notebook"
    )
    log.warning("%s", text)
    for msg_id, pending in waiting.items():
        if pending.on_iopub is not None:  # no msg_id: not a point the gateway can resume after
            pending.on_output(note(msg_id, "", text))


async def settle_refused(
    cut: dict[str, PendingRequest],
    probe: Callable[[], Awaitable[Message]],
    kernel_id: str,
    limit: int,
) -> None:
    """After a refused message closed the connection and it was reopened: the messages that
    followed it on the old one are gone, a reply among them perhaps. ``probe`` (a silent
    execute) is answered after every request the kernel got before it, so a request of ``cut``
    still without its reply then has lost it: it fails saying so. A probe that times out
    waits behind a cell still running, whose reply comes on the new socket."""
    try:
        async with asyncio.timeout(UNDELIVERED_PROBE):
            await probe()
    except (TimeoutError, JlabgwError) as exc:
        log.info("kernel %s: cannot tell whether replies were lost: %s", kernel_id, exc)
        return
    for pending in cut.values():
        if pending.reply is None and not pending.done.done():
            pending.fail(
                ConnectionLostError(
                    f"the kernel sent a message over {_limit(limit)} (JLABGW_MAX_MESSAGE): it "
                    "was refused unread, and the cell's reply went with the connection that "
                    "closed. The cell ran; the kernel and its variables are fine"
                )
            )
