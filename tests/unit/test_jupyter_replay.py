"""After a reopen: replayed repeats are dropped, and requests the old socket swallowed are
settled. ``settle_unheard`` runs against a fake kernel (the one faked boundary: the probe it
sends and the resend it asks for); the pending-request table is real."""

from __future__ import annotations

import json

import pytest

from jlabgw.errors import ConnectionLostError, KernelDiedError
from jlabgw.jupyter.pending import Message, PendingRequest, PendingRequests
from jlabgw.jupyter.replay import SeenMessages, settle_unheard

pytestmark = pytest.mark.anyio


class FakeKernel:
    """Answers the probe with ``count`` (or fails it with ``error``); records resends."""

    def __init__(self, count: int, error: Exception | None = None, socket: bool = True) -> None:
        self.count = count
        self.error = error
        self.socket = socket
        self.resent: list[str] = []

    async def probe(self) -> Message:
        if self.error is not None:
            raise self.error
        return {"content": {"status": "ok", "execution_count": self.count}}

    async def resend(self, msg_id: str, wire: str) -> bool:
        if not self.socket:
            return False
        self.resent.append(msg_id)
        return True


def cut_off(table: PendingRequests, msg_id: str, *, runs_code: bool) -> PendingRequest:
    pending = table.expect(msg_id, None, wait_idle=True)
    pending.wire = json.dumps({"header": {"msg_id": msg_id}})
    pending.runs_code = runs_code
    return pending


async def settle(table: PendingRequests, kernel: FakeKernel, known: int | None) -> None:
    await settle_unheard(table.unheard(), known, kernel.probe, kernel.resend, "k1")


async def test_code_that_never_arrived_is_sent_again() -> None:
    table = PendingRequests()
    pending = cut_off(table, "a", runs_code=True)
    kernel = FakeKernel(count=5)
    await settle(table, kernel, known=5)  # the count did not move: it never ran
    assert kernel.resent == ["a"]
    assert not pending.done.done()  # its reply will come


async def test_code_that_ran_unseen_fails_and_is_not_rerun() -> None:
    table = PendingRequests()
    pending = cut_off(table, "a", runs_code=True)
    kernel = FakeKernel(count=6)
    await settle(table, kernel, known=5)
    assert kernel.resent == []
    with pytest.raises(ConnectionLostError, match=r"the kernel ran it \(execution_count 6\)"):
        pending.done.result()


async def test_two_cut_off_cells_cannot_be_told_apart() -> None:
    table = PendingRequests()
    first, second = cut_off(table, "a", runs_code=True), cut_off(table, "b", runs_code=True)
    kernel = FakeKernel(count=6)
    await settle(table, kernel, known=5)
    assert kernel.resent == []
    for pending in (first, second):
        with pytest.raises(ConnectionLostError, match="cannot tell whether the kernel ran it"):
            pending.done.result()


async def test_a_request_that_runs_no_code_is_always_sent_again() -> None:
    table = PendingRequests()
    cut_off(table, "info", runs_code=False)
    kernel = FakeKernel(count=9)
    await settle(table, kernel, known=None)  # nothing known about the count: no matter
    assert kernel.resent == ["info"]


async def test_without_a_socket_a_never_arrived_request_fails_saying_so() -> None:
    table = PendingRequests()
    pending = cut_off(table, "a", runs_code=True)
    await settle(table, FakeKernel(count=5, socket=False), known=5)
    with pytest.raises(ConnectionLostError, match="it was NOT executed"):
        pending.done.result()


async def test_heard_of_requests_are_left_alone_and_a_failed_probe_decides_nothing() -> None:
    table = PendingRequests()
    heard = cut_off(table, "a", runs_code=True)
    heard.seen = True  # its output arrived: it will complete by itself
    unheard = cut_off(table, "b", runs_code=True)
    kernel = FakeKernel(count=5, error=KernelDiedError("the kernel died"))
    await settle(table, kernel, known=5)
    assert kernel.resent == []
    assert not heard.done.done()
    assert not unheard.done.done()  # cannot tell: left to complete (or fail) as it will


def test_a_replayed_repeat_is_dropped_once_and_the_last_id_kept() -> None:
    seen = SeenMessages("sess")
    out = {"header": {"msg_id": "m1"}, "channel": "iopub"}
    assert seen.first_time(out)
    assert not seen.first_time({**out, "jlabgw_replay": True})
    assert seen.first_time(out)  # not marked as a replay: delivered (a gateway-made id)
    assert seen.duplicates == 1
    assert seen.last_msg_id == "m1"
    own = {"header": {"msg_id": "sess_3"}, "jlabgw_replay": True}
    assert seen.first_time(own)
    assert seen.first_time(own)  # our session's ids repeat per connection: always delivered
    assert seen.last_msg_id == "m1"
