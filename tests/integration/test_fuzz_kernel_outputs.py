"""Kernel output fuzzed (issue 13; issue 6 fuzzed the tools' arguments): kernel output is
untrusted input to the server. Random mime bundles (huge, nested, wrong types, invalid base64
images, bad UTF-8, unknown mime types, missing fields) and malformed messages must never crash
the server, lose the notebook or make it invalid, and the session goes on.

Two peers, each driven by a seeded generator (``JLABGW_FUZZ_SEED=N`` replays a run; the seed is
in every failure):

* a real kernel behind a real gateway and a real ``jlabgw serve`` over MCP stdio, whose cells
  publish the generated messages with ``kernel.session.send`` (what any cell can do);
* for frames no kernel can produce through a gateway (not JSON, binary, invalid UTF-8, not a
  message, over the size limit), a scripted gateway WebSocket on 127.0.0.1 speaking the
  Jupyter kernel protocol to jlabgw's real KernelConnection, session manager, recorder and
  notebook writer, with the results made into MCP tool results as the server does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import nbformat
import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from jlabgw.jupyter.channels import KernelConnection
from jlabgw.jupyter.endpoint import GatewayEndpoint
from jlabgw.mcp.results import execution_result, limits_for
from jlabgw.progress import Progress
from jlabgw.sessions.kernels import Connection, Started
from jlabgw.sessions.manager import SessionManager
from tests.helpers import make_settings
from tests.mcp_client import call, text_of
from tests.mcp_client import serve as serve_mcp
from tests.session_fakes import FakeBackend

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SEED = int(os.environ.get("JLABGW_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
REAL_CELLS = 24  # cells of hostile output through the real kernel
SCRIPTED_CELLS = 60  # requests answered by the scripted peer
LIMIT = 1 << 20  # the scripted peer's connection refuses messages over this


@contextmanager
def reproducible(where: str, log: Path | None = None) -> Iterator[None]:
    """Any failure names the seed that replays it (and shows the end of the server's log)."""
    print(f"{where}: JLABGW_FUZZ_SEED={SEED}")
    try:
        yield
    except BaseException as exc:
        tail = ""
        if log is not None and log.exists():
            lines = log.read_text(errors="replace").splitlines()[-40:]
            tail = "\nthe server's log ends with:\n" + "\n".join(line[:300] for line in lines)
        raise AssertionError(f"{where} failed; JLABGW_FUZZ_SEED={SEED} replays it{tail}") from exc


# -- what a hostile kernel sends ------------------------------------------------------------

PNG_HEADER = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ")  # 1x1, cut short
MIMES = [
    "text/plain",
    "text/html",
    "text/markdown",
    "text/latex",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/svg+xml",
    "application/json",
    "application/vnd.fuzz+json",
    "application/x-unknown",
    "application/pdf",
    "chemical/x-fuzz",
    "not a mime type",
    "",
]


def text(rng: random.Random) -> str:
    choice = rng.randrange(9)
    if choice == 0:
        return "x" * rng.choice([0, 1, 5000, 300_000, 1_000_000])  # huge, sometimes
    if choice == 1:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(50)))
    if choice == 2:
        return "\udcff\udc80 bad utf-8 \udcfe"  # bytes 0xff 0x80 0xfe on the kernel's wire
    if choice == 3:
        return "!!! not base64 @@@"
    if choice == 4:
        return base64.b64encode(PNG_HEADER).decode()
    if choice == 5:
        return base64.b64encode(rng.randbytes(rng.randrange(1, 3000))).decode()
    if choice == 6:
        return "\x00\x1b[31mred\x1b[0m\r\n\t"
    if choice == 7:
        return "<script>alert(1)</script>" * rng.randrange(1, 4)
    return "\ud800 a lone surrogate"


def nested(rng: random.Random, depth: int) -> Any:
    value: Any = rng.choice([1, "leaf", None, 2.5, True])
    for _ in range(depth):
        value = {"k": value} if rng.random() < 0.5 else [value]
    return value


def value(rng: random.Random) -> Any:
    """What a mime bundle holds under a key: usually text, sometimes anything."""
    choice = rng.randrange(10)
    if choice < 5:
        return text(rng)
    return [
        lambda: rng.randrange(-(2**70), 2**70),
        lambda: None,
        lambda: [text(rng), rng.random()],
        lambda: nested(rng, rng.choice([1, 5, 70, 300])),
        lambda: {"a": [1, 2, {"b": text(rng)}]},
    ][choice - 5]()


def bundle(rng: random.Random) -> Any:
    if rng.random() < 0.08:
        return rng.choice(["a string", 7, None, ["text/plain"]])  # not a bundle at all
    return {rng.choice(MIMES): value(rng) for _ in range(rng.randrange(0, 4))}


def maybe(rng: random.Random, good: Any, bad: list[Any]) -> Any:
    return good if rng.random() < 0.75 else rng.choice(bad)


def output(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One IOPub output message (type, content), valid or not, fields sometimes missing."""
    msg_type = rng.choice(
        [
            "display_data",
            "display_data",
            "execute_result",
            "update_display_data",
            "stream",
            "error",
            "clear_output",
            "fuzz_unknown_type",
            "execute_reply",  # a shell reply's type, on IOPub
        ]
    )
    content: dict[str, Any] = {
        "data": bundle(rng),
        "metadata": maybe(rng, {"isolated": rng.random() < 0.5}, [[], "meta", 3, nested(rng, 80)]),
        "transient": maybe(rng, {"display_id": rng.choice(["d1", "d2"])}, [{"display_id": 5}, []]),
        "execution_count": maybe(rng, rng.randrange(1, 50), ["1", -1, 2.5, True]),
        "name": maybe(rng, rng.choice(["stdout", "stderr"]), [7, None, "stdweird"]),
        "text": maybe(rng, text(rng), [7, ["a", 1], None]),
        "ename": maybe(rng, "FuzzError", [None, 1]),
        "evalue": maybe(rng, text(rng), [[]]),
        "traceback": maybe(rng, ["line 1", "line 2"], ["tb", [1, 2], None]),
        "wait": maybe(rng, rng.random() < 0.5, ["yes", 0]),
    }
    for key in list(content):
        if rng.random() < 0.25:
            del content[key]  # missing fields
    return msg_type, content


# -- a real kernel behind a real gateway, over MCP stdio ------------------------------------

CELL = """
import json as _json
_kernel = get_ipython().kernel
_parent = _kernel.get_parent("shell")
for _type, _content in _json.loads({payload!r}):
    try:
        _kernel.session.send(
            _kernel.iopub_socket, _type, _content, parent=_parent, ident=_kernel._topic(_type)
        )
    except Exception as _exc:  # some cannot even be sent (a lone surrogate): that is fine
        print("not sent:", _type, type(_exc).__name__)
print("cell {index} done")
"""


def on_disk_valid(path: str) -> int:
    """The notebook file as it is now (the previous or the next complete version): valid.
    Returns its cell count."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return len(nb.cells)


async def test_hostile_outputs_from_a_real_kernel_over_mcp_stdio(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    log = tmp_path / "server.log"
    with reproducible("real kernel", log), log.open("w") as errlog:
        async with serve_mcp(tmp_path, errlog, JLABGW_SPARE_KERNEL="false") as client:
            started = await call(client, "start_new_session", experiment_name="fuzz outputs")
            sid = started.structured_content["session_id"]
            path = started.structured_content["notebook_path"]
            for index in range(REAL_CELLS):
                messages = [output(rng) for _ in range(rng.randrange(1, 6))]
                while len(json.dumps(messages)) > 4_000_000:  # code over 10 MiB is refused
                    messages.pop()
                code = CELL.format(payload=json.dumps(messages), index=index)
                with anyio.fail_after(120):
                    result = await call(client, "execute_code", session_id=sid, code=code)
                report = text_of(result)
                assert "Traceback (most recent call last)" not in report, report[-2000:]
                # a result (an error output makes it is_error, as a cell's error does) whose
                # text goes on to the cell's own last line
                assert f"cell {index} done" in report[-3000:], (index, report[-2000:])
                assert on_disk_valid(path) <= index + 1
            with anyio.fail_after(60):
                alive = await call(client, "execute_code", session_id=sid, code="print('alive')")
            assert text_of(alive).startswith("alive\n"), text_of(alive)
            await call(client, "shutdown_session", session_id=sid)
        assert on_disk_valid(path) == REAL_CELLS + 1  # flushed at exit: every cell is there
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(nb.cells[:-1]):
            out = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            assert f"cell {index} done" in out, (index, cell.outputs[-3:])


# -- frames no kernel can send through a gateway: a scripted peer ---------------------------


class ScriptedGateway:
    """A kernel's channels WebSocket that answers each execute_request with generated frames,
    then its reply and ``status: idle``. What a closed socket cut off is sent to the next
    socket of the same session, as jupyter_server does; the frames are seeded per request."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.owed: list[tuple[str, Any]] = []  # what a closed socket did not get
        self.count = 0
        self.connections = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        try:
            owed, self.owed = self.owed, []
            if not await self.send_all(ws, owed):  # as jupyter_server replays what it buffered
                return
            async for raw in ws:
                await self.answer(ws, json.loads(raw))
        except websockets.ConnectionClosed:
            pass

    def message(self, parent: dict[str, Any], channel: str, msg_type: str, content: Any) -> str:
        header = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type}
        return json.dumps(
            {
                "channel": channel,
                "msg_type": msg_type,
                "header": header,
                "parent_header": parent,
                "metadata": {},
                "content": content,
            }
        )

    async def answer(self, ws: ServerConnection, request: dict[str, Any]) -> None:
        parent = request["header"]
        msg_type = parent["msg_type"].replace("_request", "_reply")
        frames: list[tuple[str, str | bytes]] = []
        code = request["content"].get("code")
        if msg_type == "execute_reply" and code:
            self.count += 1
            if code != "plain":
                frames = self.hostile(parent, random.Random(f"{self.seed}-{self.count}"))
            end = self.message(parent, "iopub", "stream", {"name": "stdout", "text": "end\n"})
            frames.append(("text", end))
        reply = {"status": "ok", "execution_count": self.count}
        frames.append(("text", self.message(parent, "shell", msg_type, reply)))
        idle = {"execution_state": "idle"}
        frames.append(("text", self.message(parent, "iopub", "status", idle)))
        await self.send_all(ws, frames)

    async def send_all(self, ws: ServerConnection, frames: list[tuple[str, Any]]) -> bool:
        """Send ``frames``; False if one made the client close the socket (what the kernel
        says meanwhile is kept for the next socket of the session, as jupyter_server does)."""
        for at, (kind, frame) in enumerate(frames):
            if kind == "closes" or len(frame) > LIMIT:  # kept first: the next socket may open
                self.owed = frames[at + 1 :]
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.send(frame, text=True)
                with anyio.fail_after(10):
                    await ws.wait_closed()
                return False
            await ws.send(frame, text=kind != "bytes")
        return True

    def hostile(self, parent: dict[str, Any], rng: random.Random) -> list[tuple[str, Any]]:
        frames: list[tuple[str, Any]] = []
        for _ in range(rng.randrange(1, 7)):
            kind = rng.randrange(14)
            msg_type, content = output(rng)
            msg = json.loads(self.message(parent, "iopub", msg_type, content))
            if kind < 6:
                frames.append(("text", json.dumps(msg)))
            elif kind == 6:
                frames.append(("text", rng.choice(["not json", "{", "[1, 2]", "null", "{}"])))
            elif kind == 7:
                frames.append(("bytes", rng.randbytes(rng.randrange(1, 200))))
            elif kind == 8:  # no parent_header, one that is not an object, or someone else's
                msg["parent_header"] = rng.choice([None, "x", [], {"msg_id": "not ours"}, {}])
                if rng.random() < 0.5:
                    del msg["parent_header"]
                frames.append(("text", json.dumps(msg)))
            elif kind == 9:  # the msg_type and the header's disagree, or the channel is odd
                msg["msg_type"] = "stream"
                msg["channel"] = rng.choice(["iopub", "nowhere", 5, ["iopub"], {}])
                if rng.random() < 0.3:
                    msg["header"] = rng.choice([None, "h", {"msg_id": [1]}, {}])
                frames.append(("text", json.dumps(msg)))
            elif kind == 10:  # NaN in it, and a content that is not an object
                frames.append(("text", json.dumps({**msg, "content": "t"})[:-1] + ', "x": NaN}'))
            elif kind == 11:  # invalid UTF-8 in a text frame: the client closes (1007)
                frames.append(("closes", b"\xff\xfe invalid utf-8 \xc3"))
            elif kind == 12:  # over the size limit: the client refuses it unread (1009)
                big = {"name": "stdout", "text": "y" * (LIMIT + 10)}
                frames.append(("closes", self.message(parent, "iopub", "stream", big)))
            else:  # a status that lies, and a reply to nothing
                lie = {"execution_state": "x"}
                frames.append(("text", self.message(parent, "iopub", "status", lie)))
                nothing = self.message({"msg_id": "nothing"}, "shell", "execute_reply", {})
                frames.append(("text", nothing))
        return frames


class ScriptedStarter:
    """Kernels on the scripted gateway: real KernelConnections (a KernelStarter)."""

    def __init__(self, endpoint: GatewayEndpoint) -> None:
        self.endpoint = endpoint

    async def start(
        self, progress: Progress, kernel_name: str | None = None, lane: str = ""
    ) -> Started:
        conn = KernelConnection(self.endpoint, str(uuid.uuid4()), max_message=LIMIT)
        spec = {"name": "python3", "display_name": "Scripted", "language": "python"}
        return Started(conn, {"kernelspec": spec}, {"gateway": 0.0, "kernel": 0.0})

    async def connect(self, kernel_id: str, ws_session_id: str, lane: str = "") -> Connection:
        raise AssertionError("nothing is taken back here")

    async def discard(self, conn: Connection, lane: str = "") -> None:
        await conn.close()

    async def interrupt(self, kernel_id: str, lane: str = "") -> None:
        return None

    async def restart(self, kernel_id: str, lane: str = "") -> None:
        return None

    async def delete(self, kernel_id: str, lane: str = "") -> None:
        return None

    async def execution_state(self, kernel_id: str, lane: str = "") -> str | None:
        return "idle"


@asynccontextmanager
async def scripted_gateway(seed: int) -> AsyncIterator[tuple[ScriptedGateway, GatewayEndpoint]]:
    script = ScriptedGateway(seed)
    async with serve(script.handler, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield script, GatewayEndpoint(url=f"http://127.0.0.1:{port}", token="t")


async def test_malformed_frames_from_a_scripted_kernel_peer(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, spare_kernel="false", eager_start="false")
    with reproducible("scripted peer"):
        async with scripted_gateway(SEED) as (script, endpoint):
            manager = SessionManager(settings, FakeBackend(), starter=ScriptedStarter(endpoint))
            try:
                started = await manager.start_new("scripted fuzz")
                sid, path = started["session_id"], started["notebook_path"]
                for index in range(SCRIPTED_CELLS):
                    with anyio.fail_after(60):
                        result = await manager.execute(sid, f"cell {index}", wait=30)
                    assert result.status == "ok", (index, result.status)
                    tool_result = execution_result(result, limits_for(settings))  # as MCP does
                    assert tool_result.content, index
                    await asyncio.to_thread(manager.get(sid).doc.flush)
                    assert on_disk_valid(path) == index + 1
                alive = await manager.execute(sid, "plain", wait=30)
                assert alive.status == "ok"
                assert "end\n" in "".join(o.get("text", "") for o in alive.outputs)
                assert script.count == SCRIPTED_CELLS + 1
                assert getattr(manager.get(sid).conn, "refused", 0) > 0  # that path ran too
                assert script.connections > 1
            finally:
                await manager.aclose()
        assert on_disk_valid(path) == SCRIPTED_CELLS + 1
