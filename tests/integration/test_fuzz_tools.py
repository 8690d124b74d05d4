"""Tool arguments fuzzed with hypothesis through the MCP interface (fastmcp's client, in memory
and over stdio to a ``python -m jlabgw`` subprocess, with a real gateway behind it): wrong
types, odd strings, out-of-range indexes, unknown ids. Every call ends in a result or a clear
error; no traceback leaks; the server stays up and its notebook stays valid.

The server lives on an event loop in a thread of its own for the whole test, so hypothesis's
(synchronous) examples can reuse it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import nbformat
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from fastmcp.exceptions import ToolError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jlabgw.mcp.server import TOOLS, build_server
from tests.helpers import PYTHON, make_settings, server_env, wait_until

pytestmark = pytest.mark.integration

T = TypeVar("T")


class ServerThread:
    """An MCP client connected to a jlabgw server (in memory, or a subprocess over stdio), on
    a loop in another thread."""

    def __init__(self, root: Path, transport: str = "memory") -> None:
        self.root = root
        self.transport = transport
        self.loop = asyncio.new_event_loop()
        self.client: Client[Any] | None = None
        self._stop: asyncio.Event | None = None
        self._ready: Future[None] = Future()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),))

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        target: Any
        log = None
        if self.transport == "stdio":
            log = (self.root / "server.log").open("w")
            target = StdioTransport(
                PYTHON,
                ["-m", "jlabgw"],
                env=server_env(self.root, JLABGW_EXEC_WAIT="5", JLABGW_OUTPUT_LIMIT="2000"),
                log_file=log,
            )
        else:
            target = build_server(make_settings(self.root, exec_wait="5", output_limit="2000"))
        try:
            async with Client(target) as client:
                self.client = client
                self._ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise
        finally:
            if isinstance(target, StdioTransport):
                await target.close()  # on this loop, not in __del__ once it is closed
                assert log is not None
                log.close()

    def __enter__(self) -> ServerThread:
        self.thread.start()
        self._ready.result(timeout=120)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=60)
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@pytest.fixture(scope="module", params=["memory", "stdio"])
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerThread]:
    with ServerThread(tmp_path_factory.mktemp("fuzz"), request.param) as running:
        yield running


TOOL_NAMES = [fn.__name__ for fn in TOOLS if fn.__name__ not in ("shutdown_session",)]
PARAMS = [
    "session_id",
    "code",
    "cell_index",
    "markdown",
    "experiment_name",
    "notebook_path",
    "execution_id",
    "wait",
    "timeout",
    "queue",
]
ODD_TEXT = st.sampled_from(
    [
        "",
        "..",
        "../../etc/passwd",
        "/etc/passwd",
        "a/b",
        "$(id)",
        "'\"",
        "\n",
        "é" * 300,
        "x" * 5000,
    ]
)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    ODD_TEXT,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.just("VALID_SESSION"),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    tool=st.sampled_from(TOOL_NAMES),
    args=st.dictionaries(st.sampled_from(PARAMS), VALUES, max_size=5),
)
def test_any_arguments_give_a_result_or_a_clear_error(
    server: ServerThread, tool: str, args: dict[str, Any]
) -> None:
    client = server.client
    assert client is not None
    session = getattr(server, "session", None)
    if session is None:
        started = server.run(client.call_tool("start_new_session", {"experiment_name": "fuzz"}))
        session = server.session = started.data["session_id"]  # type: ignore[attr-defined]
    args = {k: (session if v == "VALID_SESSION" else v) for k, v in args.items()}
    if tool == "execute_code" and isinstance(args.get("code"), str):
        args["timeout"] = 5  # random code must not run for long
    try:
        result = server.run(client.call_tool(tool, args))
    except ToolError as exc:
        message = str(exc)
        assert message.strip(), (tool, args)
        assert "Traceback (most recent call last)" not in message, message
    else:
        assert result is not None
    # still up, and its notebook still valid
    listed = server.run(client.call_tool("list_sessions", {}))
    assert listed is not None


def test_code_over_the_gateway_frame_limit_is_refused_clearly(server: ServerThread) -> None:
    client = server.client
    assert client is not None
    started = server.run(client.call_tool("start_new_session", {"experiment_name": "big code"}))
    sid = started.data["session_id"]
    huge = "x = '" + "a" * (11 * 2**20) + "'"
    with pytest.raises(ToolError, match=r"11\.0 MiB.*10 MiB"):
        server.run(client.call_tool("execute_code", {"session_id": sid, "code": huge}))
    after = server.run(client.call_tool("execute_code", {"session_id": sid, "code": "'alive'"}))
    assert after.content[0].text == "'alive'\n"  # the connection was not dropped
    path = started.data["notebook_path"]

    def written() -> bool:
        return len(nbformat.read(path, as_version=4).cells) > 0

    assert wait_until(written, timeout=10)
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert [c.source for c in nb.cells] == ["'alive'"]  # nothing recorded for the refused code
