"""Code that runs inside the Kernel Gateway process, not in jlabgw.

Kept free of other jlabgw imports so it can be shipped to a cluster node as a single file.
Selected with ``KernelGatewayApp.kernel_websocket_connection_class``, the class below changes
two things about the kernel WebSocket:

1. TCP_NODELAY. Tornado never sets it, so every small reply waits for the peer's delayed ACK
   (~40 ms per execution instead of ~7 ms).
2. Nothing lost across a dropped connection. jupyter_server buffers a kernel's messages for a
   WebSocket session id only once it has *noticed* that session's socket close, and replays
   them to the next socket with that id. What it wrote in between (into a TCP connection whose
   far end, an sshd forwarding it, had just died) is gone: a line or two of output, now and
   then, when an SSH connection drops mid-cell. So each message written is also kept, by
   msg_id, in a bounded per-session record; a client reconnecting with ``jlabgw_last=MSG_ID``
   in the URL first gets what was written after that message (marked ``jlabgw_replay``), then
   jupyter_server's own replay. The client drops a replayed message it has seen already (by
   msg_id), so one that did arrive and is sent again does no harm.
"""

from __future__ import annotations

import collections
import re
from typing import Any

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

__all__ = ["NoDelayChannelsConnection"]

RECENT_MESSAGES = 4096  # per WebSocket session id
RECENT_BYTES = 32 * 2**20
_MSG_ID = re.compile(r'"msg_id":\s*"([^"\\]+)"')


class _Recent:
    """The last messages written for one session id: (msg_id, text), oldest first."""

    def __init__(self) -> None:
        self.items: collections.deque[tuple[str, str]] = collections.deque()
        self.size = 0

    def add(self, msg_id: str, text: str) -> None:
        self.items.append((msg_id, text))
        self.size += len(text)
        while len(self.items) > RECENT_MESSAGES or (
            self.size > RECENT_BYTES and len(self.items) > 1
        ):
            self.size -= len(self.items.popleft()[1])

    def after(self, msg_id: str) -> list[str] | None:
        """What was written after ``msg_id``; None if it is no longer (or never was) here."""
        for index in range(len(self.items) - 1, -1, -1):
            if self.items[index][0] == msg_id:
                return [text for _, text in list(self.items)[index + 1 :]]
        return None


_recent: dict[str, _Recent] = {}  # session key ("kernel_id:session_id") -> its record


class NoDelayChannelsConnection(ZMQChannelsWebsocketConnection):
    """ZMQ channels WebSocket connection: TCP_NODELAY, and a replay of what a dropped
    connection may have swallowed."""

    def connect(self) -> Any:
        self.websocket_handler.set_nodelay(True)
        self._prune()
        last = self.websocket_handler.get_argument("jlabgw_last", "")
        recent = _recent.get(self.session_key)
        if last and recent is not None:
            missed = recent.after(last)
            if missed is None:  # older than the record: send it all, the client sorts it out
                self.log.warning(
                    "%s: message %s is older than the last %d kept; replaying them all",
                    self.session_key,
                    last,
                    len(recent.items),
                )
                missed = [text for _, text in recent.items]
            if missed:
                self.log.info("%s: re-sending %d message(s)", self.session_key, len(missed))
            for text in missed:  # marked, so the client knows it may have seen it
                self.websocket_handler.write_message('{"jlabgw_replay": true, ' + text[1:])
        return super().connect()

    @property
    def write_message(self) -> Any:  # a property upstream: the handler's own method
        send = self.websocket_handler.write_message
        key = self.session_key
        # Messages the gateway makes itself (status "restarting" ...) carry the connection's
        # session id with a counter that starts over on every connection: their ids repeat,
        # so they are neither kept nor replayed. The kernel's own messages have unique ids.
        own = key.split(":", 1)[-1] + "_"

        def write(message: Any, binary: bool = False) -> Any:
            if not binary and isinstance(message, str) and key and message.startswith("{"):
                match = _MSG_ID.search(message, 0, 4096)  # the header comes first
                if match is not None and not match.group(1).startswith(own):
                    _recent.setdefault(key, _Recent()).add(match.group(1), message)
            return send(message, binary=binary)

        return write

    def _prune(self) -> None:
        """Forget the records of kernels that no longer exist."""
        try:
            alive = set(self.multi_kernel_manager.list_kernel_ids())
        except Exception:  # never let bookkeeping break a connection
            return
        for key in [k for k in _recent if k.split(":", 1)[0] not in alive]:
            del _recent[key]
