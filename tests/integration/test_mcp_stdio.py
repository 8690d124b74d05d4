"""The MCP server as a subprocess over stdio, driven by the mcp SDK's client.

Claude Desktop and Claude Code connect with the initialize handshake, so every test here uses
``mode="legacy"``; one test also checks the SDK's default (auto-negotiated) mode.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from pathlib import Path

import anyio
import pytest
from mcp.types import ImageContent

from tests.helpers import PNG_CODE, notebook_cells, pids_matching, wait_until
from tests.mcp_client import call, new_session, serve, status, text_of

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TOOLS = {
    "start_new_session",
    "start_session_resume_notebook",
    "start_session_continue_notebook",
    "execute_code",
    "get_execution",
    "edit_cell",
    "add_markdown",
    "shutdown_session",
    "list_kernelspecs",
    "list_sessions",
    "interrupt_kernel",
    "restart_kernel",
    "run_cell",
    "delete_cell",
    "move_cell",
    "start_notebook",
    "read_notebook",
    "list_notebooks",
    "execute_scratch",
    "check_resources",
    "upload_file",
    "download_file",
}


async def test_full_session_over_stdio(tmp_path: Path) -> None:
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log) as client:
            tools = (await client.list_tools()).tools
            assert {t.name for t in tools} == TOOLS
            for tool in tools:
                assert tool.description
                for name, prop in tool.input_schema.get("properties", {}).items():
                    assert prop.get("description"), f"{tool.name}.{name} has no description"

            specs = await client.call_tool("list_kernelspecs", {})
            assert not specs.is_error
            default = specs.structured_content["result"][0]
            assert (default["name"], default["default"]) == ("python3", True)

            started = await client.call_tool("start_new_session", {"experiment_name": "demo"})
            assert not started.is_error
            info = started.structured_content
            assert set(info) >= {"session_id", "notebook_path", "kernel_id", "backend"}
            sid = info["session_id"]

            out = await call(client, "execute_code", session_id=sid, code="print('hi'); 40 + 2")
            assert not out.is_error
            assert text_of(out) == "hi\n42\n"

            err = await call(
                client,
                "execute_code",
                session_id=sid,
                code="def f():\n    raise ValueError('boom')\nf()",
            )
            assert err.is_error
            assert "ValueError: boom" in text_of(err)
            assert "Traceback" in text_of(err) or "line 2" in text_of(err)
            assert "\x1b[" not in text_of(err)

            img = await client.call_tool("execute_code", {"session_id": sid, "code": PNG_CODE})
            images = [b for b in img.content if isinstance(b, ImageContent)]
            assert len(images) == 1
            assert images[0].mime_type == "image/png"
            assert base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n")

            md = await client.call_tool("add_markdown", {"session_id": sid, "markdown": "## note"})
            assert md.structured_content["cell_index"] == 3
            edit = await call(
                client, "edit_cell", session_id=sid, cell_index=0, code="print('edited')"
            )
            assert text_of(edit) == "edited\n"

            listed = await client.call_tool("list_sessions", {})
            assert [s["session_id"] for s in listed.structured_content["result"]] == [sid]
            state = await status(client)
            keys = "server_pid backend gateway notebook_dir spare_kernel sessions jobs"
            assert set(state) >= set(keys.split())
            assert state["backend"] == "local"
            assert state["gateway"]["state"] == "running"
            assert state["sessions"][0]["cells"] == 4

            cells = notebook_cells(info["notebook_path"], 4)
            assert cells[0].source == "print('edited')"
            assert cells[2].outputs[0].data["image/png"]
            assert cells[3].cell_type == "markdown"
            gateway_pid = state["gateway"]["pid"]
            kernel_id = info["kernel_id"]
        # client gone (stdin closed): the server stops its gateway and kernels
        assert wait_until(lambda: not Path(f"/proc/{gateway_pid}").exists(), timeout=20)
        assert wait_until(lambda: not pids_matching(kernel_id), timeout=20)
    assert len(notebook_cells(info["notebook_path"], 4)) == 4


async def test_errors_are_actionable_and_the_server_stays_up(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.ipynb"
    outside.write_text("{}")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log) as client:
            bad = await client.call_tool("execute_code", {"session_id": "nope", "code": "1"})
            assert bad.is_error
            assert "unknown session_id 'nope'" in text_of(bad)
            assert "start_new_session" in text_of(bad)

            bad = await call(
                client,
                "start_session_resume_notebook",
                experiment_name="x",
                notebook_path=str(outside),
            )
            assert bad.is_error
            assert "outside the notebook directory" in text_of(bad)

            bad = await call(
                client,
                "start_session_resume_notebook",
                experiment_name="x",
                notebook_path="missing.ipynb",
            )
            assert bad.is_error
            assert "no notebook at 'missing.ipynb'" in text_of(bad)

            sid = await new_session(client, "e")
            bad = await call(client, "edit_cell", session_id=sid, cell_index=5, code="1")
            assert bad.is_error
            assert "out of range" in text_of(bad)

            bad = await client.call_tool("execute_code", {"session_id": sid})
            assert bad.is_error  # missing argument: refused, server still fine

            ok = await client.call_tool("execute_code", {"session_id": sid, "code": "'still up'"})
            assert text_of(ok) == "'still up'\n"


STEP_CODE = "import time\nprint('step 1', flush=True)\ntime.sleep(1.5)\n'end'"


async def test_progress_notifications_reach_the_client(tmp_path: Path) -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, JLABGW_PROGRESS_INTERVAL="0.3") as client:
            sid = await new_session(client, "p")
            updates.clear()
            result = await client.call_tool(
                "execute_code",
                {"session_id": sid, "code": STEP_CODE},
                progress_callback=on_progress,
            )
    assert text_of(result) == "step 1\n'end'\n"
    assert updates, "no progress notification arrived"
    assert any(m and "step 1" in m for _, _, m in updates)
    values = [p for p, _, _ in updates]
    assert values == sorted(values)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signals_stop_gateway_and_kernels(tmp_path: Path, signum: int) -> None:
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log) as client:
            sid = await new_session(client, "s")
            await client.call_tool("execute_code", {"session_id": sid, "code": "1"})
            await client.call_tool("add_markdown", {"session_id": sid, "markdown": "last words"})
            state = await status(client)
            server_pid, gateway_pid = state["server_pid"], state["gateway"]["pid"]
            kernel_id = state["sessions"][0]["kernel_id"]
            notebook = state["sessions"][0]["notebook_path"]
            os.kill(server_pid, signum)
            assert wait_until(lambda: not Path(f"/proc/{server_pid}").exists(), timeout=30)
    assert not Path(f"/proc/{gateway_pid}").exists()
    assert wait_until(lambda: not pids_matching(kernel_id), timeout=20)
    cells = notebook_cells(notebook, 2)  # flushed on the way out
    assert cells[1].source == "last words"
    assert not list((tmp_path / "state" / "servers").glob("*.json"))


async def test_secrets_stay_out_of_logs_results_and_files(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        async with serve(tmp_path, log, JLABGW_LOG_LEVEL="DEBUG") as client:
            sid = await new_session(client, "sec")
            configs = list((tmp_path / "state" / "run").glob("gw-*/kernel_gateway_config.json"))
            token = json.loads(configs[0].read_text())["KernelGatewayApp"]["auth_token"]
            results = [
                await call(
                    client, "execute_code", session_id=sid, code="import os; dict(os.environ)"
                ),
                await client.call_tool("list_sessions", {}),
            ]
            state_text = json.dumps(await status(client))
            state_files = [p.read_text() for p in (tmp_path / "state" / "servers").glob("*.json")]
    for result in results:
        assert token not in text_of(result)
    assert token not in state_text
    assert all(token not in text for text in state_files)
    assert token not in log_path.read_text()
    for gateway_log in (tmp_path / "state" / "logs").glob("*.log"):
        assert token not in gateway_log.read_text()


async def test_default_client_mode_works_too(tmp_path: Path) -> None:
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, mode="auto") as client:
            sid = await new_session(client, "auto")
            first = await client.call_tool("execute_code", {"session_id": sid, "code": "z = 5"})
            assert not first.is_error
            second = await client.call_tool("execute_code", {"session_id": sid, "code": "z * 2"})
            assert text_of(second) == "10\n"  # state lives in the server, not the connection


async def test_concurrent_add_markdown_over_mcp_loses_nothing(tmp_path: Path) -> None:
    """jlab-mcp loses 55 of 80 cells here (4 concurrent writers x 20 add_markdown calls)."""
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log) as client:
            sid = await new_session(client, "race")

            async def writer(t: int) -> None:
                for i in range(20):
                    res = await call(client, "add_markdown", session_id=sid, markdown=f"{t}-{i}")
                    assert not res.is_error

            async with anyio.create_task_group() as tg:
                for t in range(4):
                    tg.start_soon(writer, t)
            state = await status(client)
            path = state["sessions"][0]["notebook_path"]
    cells = notebook_cells(path, 80)
    assert {c.source for c in cells} == {f"{t}-{i}" for t in range(4) for i in range(20)}
    assert len(cells) == 80
