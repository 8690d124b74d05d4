"""execute_scratch and check_resources over MCP stdio with real kernels (local backend).

execute_scratch: recorded in no notebook, in a throwaway kernel that is gone from the gateway
(/api/kernels) and the process table afterwards, also after a long run followed with
get_execution; or in a session's kernel, with its variables, the result saying the notebook
no longer reproduces the state. check_resources: this machine asked directly, and (the
cluster path) through a throwaway kernel. One server for the module."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client

from jlabgw.cluster.backends import LocalBackend
from jlabgw.progress import no_progress
from jlabgw.sessions.manager import SessionManager
from tests.helpers import make_settings, notebook_cells, pids_matching, wait_until
from tests.mcp_client import call, new_session, poll_to_the_end, serve, status, text_of

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

KERNEL_ID = "import ipykernel, os\nprint(os.path.basename(ipykernel.get_connection_file()))"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Server:
    client: Client
    root: Path


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    root = tmp_path_factory.mktemp("scratch")
    with (root / "server.log").open("w") as log:
        async with serve(root, log, JLABGW_EXEC_WAIT="2") as client:
            yield Server(client, root)


async def gateway_kernels(server: Server) -> set[str]:
    """Kernel ids the gateway lists (GET /api/kernels with the gateway's token)."""
    url = (await status(server.client))["gateway"]["url"]
    assert url.startswith(("http://127.0.0.1:", "https://127.0.0.1:"))
    config = next((server.root / "state" / "run").glob("gw-*/kernel_gateway_config.json"))
    token = json.loads(config.read_text())["KernelGatewayApp"]["auth_token"]
    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(verify=False) as http:  # its own cert, on loopback
        reply = await http.get(f"{url}/api/kernels", headers=headers, timeout=10)
    reply.raise_for_status()
    return {k["id"] for k in reply.json()}


def kernel_id_in(text: str) -> str:
    found = re.search(r"kernel-([0-9a-f-]{36})\.json", text)
    assert found, text
    return found.group(1)


def settled(path: Path) -> bytes:
    """The file once the writer has left it alone for half a second (bounded)."""
    before = path.read_bytes()
    for _ in range(20):
        time.sleep(0.5)
        now = path.read_bytes()
        if now == before:
            return now
        before = now
    raise AssertionError(f"{path} keeps changing")


async def gone(server: Server, kernel_id: str) -> bool:
    for _ in range(100):
        if kernel_id not in await gateway_kernels(server):
            return True
        await anyio.sleep(0.1)
    return False


async def test_scratch_in_a_throwaway_kernel_leaves_nothing(server: Server) -> None:
    client = server.client
    sid = await new_session(client, "scratch host")
    await call(client, "execute_code", session_id=sid, code="a = 1")
    path = Path((await status(client))["sessions"][0]["notebook_path"])
    notebook_cells(str(path), 1)
    before = settled(path)
    files = sorted(p.name for p in path.parent.iterdir())

    result = await call(client, "execute_scratch", code=KERNEL_ID)
    assert not result.is_error, text_of(result)
    kernel_id = kernel_id_in(text_of(result))
    assert kernel_id != (await status(client))["sessions"][0]["kernel_id"]
    assert "scratch: ran in a throwaway kernel, now shut down" in text_of(result)
    assert result.meta["session_id"].startswith("scratch-")
    assert await gone(server, kernel_id)
    assert wait_until(lambda: not pids_matching(kernel_id), timeout=20)

    other = await call(client, "execute_scratch", code="a")  # not the session's variables
    assert other.is_error
    assert "NameError" in text_of(other)
    assert settled(path) == before  # the notebook is untouched
    assert sorted(p.name for p in path.parent.iterdir()) == files  # and no other file appeared
    listed = await call(client, "list_sessions")
    assert [s["session_id"] for s in listed.structured_content["result"]] == [sid]
    await call(client, "shutdown_session", session_id=sid)


async def test_a_long_scratch_run_is_followed_then_its_kernel_goes(server: Server) -> None:
    client = server.client
    code = KERNEL_ID + "\nimport time\nfor i in range(3):\n    time.sleep(1)\n    print(i)"
    first = await call(client, "execute_scratch", code=code)
    assert first.meta["status"] == "running", text_of(first)
    scratch_id = first.meta["session_id"]
    assert f"get_execution(session_id={scratch_id!r}" in text_of(first)
    kernel_id = kernel_id_in(text_of(first))
    assert kernel_id in await gateway_kernels(server)  # running: kept until it ends
    reports = [first]
    for _ in range(30):
        if reports[-1].meta["status"] != "running":
            break
        reports.append(
            await call(
                client,
                "get_execution",
                session_id=scratch_id,
                execution_id=first.meta["execution_id"],
            )
        )
    assert reports[-1].meta["status"] == "ok"
    assert "".join(text_of(r) for r in reports).count("2\n") == 1
    assert await gone(server, kernel_id)
    assert wait_until(lambda: not pids_matching(kernel_id), timeout=20)

    timed = await call(client, "execute_scratch", code="import time; time.sleep(30)", timeout=1)
    assert timed.meta["status"] in ("running", "error")
    end = await poll_to_the_end(client, timed.meta["session_id"], timed)
    assert "interrupted after its timeout of 1 s" in text_of(end[-1])


async def test_scratch_in_a_session_uses_its_state_and_records_nothing(server: Server) -> None:
    client = server.client
    sid = await new_session(client, "scratch in session")
    await call(client, "execute_code", session_id=sid, code="a = 1")
    state = await status(client)
    path = Path(next(s for s in state["sessions"] if s["session_id"] == sid)["notebook_path"])
    notebook_cells(str(path), 1)
    before = settled(path)

    result = await call(client, "execute_scratch", code="a += 1\nprint(a)", session_id=sid)
    assert not result.is_error, text_of(result)
    assert text_of(result).startswith("2\n")
    assert "not recorded in scratch_in_session.ipynb" in text_of(result)
    assert "the notebook no longer reproduces the kernel's state" in text_of(result)
    value = await call(client, "execute_code", session_id=sid, code="a")
    assert text_of(value) == "2\n"  # the same kernel
    cells = notebook_cells(str(path), 2)
    assert [c.source for c in cells] == ["a = 1", "a"]
    before = settled(path)

    slow = "import time\nfor i in range(3):\n    time.sleep(1)\n    print(i, flush=True)"
    first = await call(client, "execute_scratch", code=slow, session_id=sid)
    assert first.meta["status"] == "running"
    busy = await call(client, "execute_code", session_id=sid, code="1")
    assert busy.is_error  # one run at a time in a kernel, scratch or not
    assert "still running execution" in text_of(busy)
    reports = await poll_to_the_end(client, sid, first)
    assert reports[-1].meta["status"] == "ok"
    assert settled(path) == before
    assert len(notebook_cells(str(path), 2)) == 2

    bad = await call(client, "execute_scratch", code="1", session_id="nope")
    assert bad.is_error
    assert "unknown session_id 'nope'" in text_of(bad)
    bad = await call(client, "get_execution", session_id="scratch-00000000")
    assert bad.is_error
    assert "unknown session_id" in text_of(bad)


async def test_check_resources_asks_this_machine_on_the_local_backend(server: Server) -> None:
    client = server.client
    sid = await new_session(client, "resources")
    kernel_id = next(
        s["kernel_id"] for s in (await status(client))["sessions"] if s["session_id"] == sid
    )
    for _ in range(300):  # the spare kernel new_session started behind it: ready
        if (await status(client))["spare_kernel"] == "ready":
            break
        await anyio.sleep(0.1)
    kernels = await gateway_kernels(server)
    for args in ({}, {"session_id": sid}):
        result = await call(client, "check_resources", **args)
        assert not result.is_error, text_of(result)
        info = result.structured_content
        assert info["backend"] == "local"
        assert info["job"] is None
        assert info["asked"] == "this machine, directly (no kernel)"
        assert info["host"] == socket.gethostname()
        assert info["cpus"]["count"] == os.cpu_count()
        assert info["cpus"]["usable"] == len(os.sched_getaffinity(0))
        assert len(info["cpus"]["load_1_5_15_min"]) == 3
        total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024 / 2**30
        assert info["memory"]["total_gib"] == pytest.approx(total, abs=0.01)
        assert 0 < info["memory"]["available_gib"] <= info["memory"]["total_gib"]
        assert isinstance(info["gpus"], list)
        if shutil.which("nvidia-smi") is None:
            assert info["gpus"] == []
        assert info["disk"]["free_gib"] > 0
        assert Path(info["disk"]["path"]).is_dir()
    # with a session: the disk its kernel works on (the kernel's own cwd)
    probe = await call(client, "execute_code", session_id=sid, code="import os; print(os.getcwd())")
    assert info["disk"]["path"] == text_of(probe).strip()
    assert info["session_id"] == sid
    assert kernel_id in kernels
    assert await gateway_kernels(server) == kernels  # no kernel was started for it
    bad = await call(client, "check_resources", session_id="nope")
    assert bad.is_error
    assert "unknown session_id 'nope'" in text_of(bad)
    await call(client, "shutdown_session", session_id=sid)


async def test_check_resources_through_a_kernel_on_the_node(
    tmp_path: Path, shared_backend: LocalBackend
) -> None:
    """The path a cluster backend takes: the probe runs in a throwaway kernel on the job's
    gateway, and that kernel is gone afterwards."""
    manager = SessionManager(make_settings(tmp_path, spare_kernel="false"), shared_backend)
    try:
        gateway = await manager.gateway()
        before = {k["id"] for k in await gateway.list_kernels()}
        info = await manager.resources.check(None, no_progress, direct=False)
        assert info["asked"] == "a throwaway kernel on the job's node, shut down after"
        assert info["host"] == socket.gethostname()
        assert info["cpus"]["count"] == os.cpu_count()
        assert info["memory"]["total_gib"] > 0
        assert info["disk"]["free_gib"] > 0
        after = {k["id"] for k in await gateway.list_kernels()}
        assert after <= before  # no kernel left behind
    finally:
        await manager.aclose()
