"""SessionManager end to end: real gateway, real kernels, notebooks on disk."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import nbformat
import pytest

from jlabgw.cluster.backends import LocalBackend
from jlabgw.config import Settings
from jlabgw.errors import (
    CellIndexError,
    JlabgwError,
    KernelDiedError,
    KernelNotFoundError,
    PathOutsideNotebookDirError,
    SessionBusyError,
    UnknownExecutionError,
    UnknownSessionError,
)
from jlabgw.jupyter.rest import GatewayClient
from jlabgw.notebook.text import outputs_to_text
from jlabgw.sessions.manager import SessionManager
from tests.helpers import PNG_CODE, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def started(manager: SessionManager, sid: str, marker: str, timeout: float = 30) -> None:
    """Wait (bounded) until the session's last cell has printed ``marker``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        cells = manager.get(sid).doc.nb.cells
        if cells and marker in outputs_to_text(cells[-1].outputs):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the cell did not print {marker!r} within {timeout} s")


@pytest.fixture
async def manager(tmp_path: Path, shared_backend: LocalBackend) -> AsyncIterator[SessionManager]:
    settings = make_settings(tmp_path, progress_interval="0.2")
    m = SessionManager(settings, shared_backend)
    yield m
    await m.aclose()


def on_disk(path: str | Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


async def test_new_session_records_cells(manager: SessionManager) -> None:
    info = await manager.start_new("first run")
    assert info["backend"] == "local"
    path = Path(info["notebook_path"])
    assert path.name == "first_run.ipynb"
    assert path.parent == manager.settings.notebook_dir
    sid = info["session_id"]

    r1 = await manager.execute(sid, "x = 6\nprint('hello')")
    r2 = await manager.execute(sid, "x * 7")
    bad = await manager.execute(sid, "1/0")
    assert (r1.cell_index, r1.execution_count, r1.status) == (0, 1, "ok")
    assert outputs_to_text(r2.outputs) == "42\n"
    assert bad.is_error
    assert bad.status == "error"

    manager.writer.flush()
    nb = on_disk(path)
    assert [c.source for c in nb.cells] == ["x = 6\nprint('hello')", "x * 7", "1/0"]
    assert [c.execution_count for c in nb.cells] == [1, 2, 3]
    assert nb.cells[0].outputs[0].text == "hello\n"
    assert nb.cells[2].outputs[0].ename == "ZeroDivisionError"
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.language_info.name == "python"


async def test_images_and_progress_bars(manager: SessionManager) -> None:
    sid = (await manager.start_new("rich"))["session_id"]
    image = await manager.execute(sid, PNG_CODE)
    data = image.outputs[0].data["image/png"]
    assert base64.b64decode(data).startswith(b"\x89PNG")
    bar = await manager.execute(
        sid,
        "from IPython.display import clear_output\n"
        "for i in range(200):\n    clear_output(wait=True)\n    print(f'{i}/199')",
    )
    assert outputs_to_text(bar.outputs) == "199/199\n"
    update = await manager.execute(sid, "h = display('v1', display_id=True)\nh.update('v2')")
    assert outputs_to_text(update.outputs) == "'v2'\n"


async def test_edit_cell_reexecutes_code_and_edits_markdown(manager: SessionManager) -> None:
    sid = (await manager.start_new("edit"))["session_id"]
    await manager.execute(sid, "a = 1")
    await manager.add_markdown(sid, "# notes")
    await manager.execute(sid, "a + 1")
    edited = await manager.edit_cell(sid, -1, "a + 100")
    assert not isinstance(edited, str)
    assert edited.cell_index == 2
    assert outputs_to_text(edited.outputs) == "101\n"
    assert edited.execution_count == 3
    message = await manager.edit_cell(sid, 1, "# better notes")
    assert message == "cell 1 (markdown) updated; not executed"
    with pytest.raises(CellIndexError, match="has 3 cells"):
        await manager.edit_cell(sid, 3, "x")
    manager.writer.flush()
    nb = on_disk(manager.get(sid).doc.path)
    assert [c.source for c in nb.cells] == ["a = 1", "# better notes", "a + 100"]
    assert len(nb.cells[2].outputs) == 1


async def test_concurrent_calls_lose_no_cell(manager: SessionManager) -> None:
    sid = (await manager.start_new("concurrent"))["session_id"]

    async def writer(t: int) -> None:
        for i in range(20):
            await manager.add_markdown(sid, f"{t}-{i}")

    await asyncio.gather(
        *(writer(t) for t in range(4)),
        *(manager.execute(sid, f"{i}", queue=True) for i in range(5)),
    )
    manager.writer.flush()
    nb = on_disk(manager.get(sid).doc.path)
    markdown = {c.source for c in nb.cells if c.cell_type == "markdown"}
    assert markdown == {f"{t}-{i}" for t in range(4) for i in range(20)}
    codes = sorted(c.execution_count for c in nb.cells if c.cell_type == "code")
    assert codes == [1, 2, 3, 4, 5]  # each cell ran exactly once


async def test_sessions_run_in_parallel(manager: SessionManager) -> None:
    sids = [(await manager.start_new(f"p{i}"))["session_id"] for i in range(8)]
    code = "import time; t0 = time.time(); time.sleep(2); print(t0, time.time())"
    results = await asyncio.gather(*(manager.execute(sid, code) for sid in sids))
    spans = [tuple(map(float, outputs_to_text(r.outputs).split())) for r in results]
    # parallel, not one after another: every cell started before any of them ended
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans


async def test_resume_reruns_in_place_and_reports_failures(manager: SessionManager) -> None:
    info = await manager.start_new("to-resume")
    sid = info["session_id"]
    await manager.execute(sid, "v = 10")
    await manager.add_markdown(sid, "text")
    await manager.execute(sid, "undefined_name")
    await manager.execute(sid, "w = v * 2")
    await manager.shutdown(sid)

    steps: list[str] = []

    async def progress(done: float, total: float | None, message: str) -> None:
        steps.append(message)

    resumed = await manager.resume("again", Path(info["notebook_path"]).name, progress)
    assert resumed["notebook_path"] == info["notebook_path"]
    assert resumed["executed_cells"] == 3
    assert resumed["failed_cells"] == [
        {"cell_index": 2, "ename": "NameError", "evalue": "name 'undefined_name' is not defined"}
    ]
    assert any("re-running cell 3" in s for s in steps)
    check = await manager.execute(resumed["session_id"], "w")
    assert outputs_to_text(check.outputs) == "20\n"
    with pytest.raises(SessionBusyError, match="already open in session"):
        await manager.resume("twice", info["notebook_path"])


async def test_continue_forks_without_running(manager: SessionManager, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    info = await manager.start_new("origin")
    await manager.execute(info["session_id"], f"open({str(marker)!r}, 'a').write('x')")
    marker.unlink()
    original = Path(info["notebook_path"])
    manager.writer.flush()
    before = original.read_bytes()

    forked = await manager.continue_("fork", original.name)
    assert Path(forked["notebook_path"]).name == "origin_continued.ipynb"
    assert forked["original_notebook"] == str(original)
    assert not marker.exists()  # nothing was re-run
    result = await manager.execute(forked["session_id"], "'fresh' in dir()")
    assert outputs_to_text(result.outputs) == "False\n"
    manager.writer.flush()
    assert original.read_bytes() == before
    fork_nb = on_disk(forked["notebook_path"])
    assert len(fork_nb.cells) == 2


async def test_bad_inputs_have_actionable_errors(manager: SessionManager) -> None:
    with pytest.raises(UnknownSessionError, match="start_new_session"):
        await manager.execute("nope", "1")
    with pytest.raises(PathOutsideNotebookDirError):
        await manager.resume("x", "../../etc/hosts.ipynb")
    with pytest.raises(PathOutsideNotebookDirError):
        await manager.continue_("x", "/tmp/../etc/x.ipynb")


async def test_shutdown_restart_interrupt(manager: SessionManager) -> None:
    sid = (await manager.start_new("control"))["session_id"]
    kernel_id = manager.get(sid).kernel_id
    await manager.execute(sid, "keep = 1")

    running = asyncio.create_task(
        manager.execute(sid, "import time; print('asleep', flush=True); time.sleep(60)")
    )
    await started(manager, sid, "asleep")  # an interrupt before the cell starts is a no-op
    await manager.interrupt(sid)
    interrupted = await asyncio.wait_for(running, timeout=20)
    assert "KeyboardInterrupt" in outputs_to_text(interrupted.outputs)
    still = await manager.execute(sid, "keep")
    assert outputs_to_text(still.outputs) == "1\n"

    assert "restarted" in await manager.restart(sid)
    gone = await manager.execute(sid, "keep")
    assert "NameError" in outputs_to_text(gone.outputs)

    message = await manager.shutdown(sid)
    assert "notebook saved" in message
    with pytest.raises(UnknownSessionError):
        manager.get(sid)
    gateway = await manager.gateway()
    with pytest.raises(KernelNotFoundError):
        await gateway.get_kernel(kernel_id)


async def test_restart_while_a_cell_runs_fails_it_and_the_next_cell_completes(
    manager: SessionManager,
) -> None:
    sid = (await manager.start_new("restart-busy"))["session_id"]
    running = asyncio.create_task(
        manager.execute(sid, "import time; print('asleep', flush=True); time.sleep(60)")
    )
    await started(manager, sid, "asleep")
    await manager.restart(sid)
    with pytest.raises(KernelDiedError, match="restarted"):
        await asyncio.wait_for(running, timeout=20)
    # Right after a restart the gateway's IOPub subscription is new; several quick cells in a
    # row must each see their idle status (none may hang waiting for it).
    for i in range(5):
        result = await asyncio.wait_for(manager.execute(sid, f"print({i})"), timeout=30)
        assert outputs_to_text(result.outputs) == f"{i}\n"
        await manager.restart(sid)
    manager.writer.flush()
    nb = on_disk(manager.get(sid).doc.path)
    assert nb.cells[0].outputs[0].text.startswith("asleep")
    assert len(nb.cells) == 6


async def test_cancelled_caller_leaves_the_cell_running(manager: SessionManager) -> None:
    sid = (await manager.start_new("cancel"))["session_id"]
    caller = asyncio.create_task(
        manager.execute(
            sid, "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.4)"
        )
    )
    await asyncio.sleep(0.3)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    with pytest.raises(SessionBusyError):  # still running: said, not silently queued
        await manager.execute(sid, "'next'")
    after = await manager.execute(sid, "'next'", queue=True)  # waits for it, then runs
    assert after.cell_index == 1
    manager.writer.flush()
    nb = on_disk(manager.get(sid).doc.path)
    assert nb.cells[0].outputs[0].text == "0\n1\n2\n"
    assert [c.execution_count for c in nb.cells] == [1, 2]


async def test_progress_reports_elapsed_and_last_line(manager: SessionManager) -> None:
    sid = (await manager.start_new("progress"))["session_id"]
    seen: list[str] = []

    async def progress(done: float, total: float | None, message: str) -> None:
        seen.append(message)

    await manager.execute(sid, "import time\nprint('epoch 1', flush=True)\ntime.sleep(1)", progress)
    assert any(m.startswith("running for") and "epoch 1" in m for m in seen), seen


async def test_notebook_file_keeps_umask_mode(manager: SessionManager) -> None:
    info = await manager.start_new("mode")
    mode = Path(info["notebook_path"]).stat().st_mode & 0o777
    assert mode & 0o044, oct(mode)  # group/other can read: not a private 0600 file
    assert json.loads(Path(info["notebook_path"]).read_text())["nbformat_minor"] == 5


async def test_resources_need_the_slurm_backend(manager: SessionManager) -> None:
    with pytest.raises(JlabgwError, match=r"need a batch backend \(slurm, gridengine\)"):
        await manager.start_new("gpu please", resources={"gpus": 1})
    assert manager.list() == []  # nothing started
    info = await manager.start_new("defaults", resources={"gpus": None})  # nothing asked
    assert "resources" not in info


async def test_unknown_kernel_name(tmp_path: Path, shared_backend: LocalBackend) -> None:
    settings: Settings = make_settings(tmp_path, kernel_name="julia-9")
    m = SessionManager(settings, shared_backend)
    try:
        with pytest.raises(Exception, match=r"kernel 'julia-9' is not installed.*python3"):
            await m.start_new("x")
    finally:
        await m.aclose()


async def test_another_kernel_spec_by_name_and_resume_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second kernel spec (as an R or Julia kernel would be): listed, chosen per session,
    recorded in the notebook, and chosen again when that notebook is resumed."""
    import sys

    spec_dir = tmp_path / "jupyter" / "kernels" / "alt"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Alternative Python",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    settings = make_settings(tmp_path, spare_kernel="false")
    backend = LocalBackend(settings)
    m = SessionManager(settings, backend)
    try:
        listed = await m.list_kernelspecs()
        assert listed[0] == {
            "name": "python3",
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            "default": True,
        }
        assert {"name": "alt", "display_name": "Alternative Python"}.items() <= listed[1].items()

        info = await m.start_new("alt run", kernel_name="alt")
        out = await m.execute(info["session_id"], "x = 5; x")
        assert outputs_to_text(out.outputs) == "5\n"
        assert m.get(info["session_id"]).kernel_name == "alt"
        await m.shutdown(info["session_id"])
        nb = on_disk(info["notebook_path"])
        assert nb.metadata.kernelspec.name == "alt"
        assert nb.metadata.kernelspec.display_name == "Alternative Python"

        resumed = await m.resume("again", Path(info["notebook_path"]).name)
        assert m.get(resumed["session_id"]).kernel_name == "alt"
        with pytest.raises(JlabgwError, match=r"kernel 'ir' is not installed.*list_kernelspecs"):
            await m.start_new("r", kernel_name="ir")
    finally:
        await m.aclose()
        await backend.aclose()


async def test_dead_local_gateway_is_reported_with_how_to_resume(tmp_path: Path) -> None:
    import os
    import signal

    from jlabgw.errors import SessionLostError

    backend = LocalBackend(make_settings(tmp_path))
    manager = SessionManager(backend._settings, backend)
    try:
        info = await manager.start_new("doomed")
        await manager.execute(info["session_id"], "v = 1")
        assert backend.pid is not None
        os.kill(backend.pid, signal.SIGKILL)
        with pytest.raises(SessionLostError, match=r"local Kernel Gateway exited.*doomed\.ipynb"):
            await manager.execute(info["session_id"], "v")
        resumed = await manager.resume("again", "doomed.ipynb")  # starts a new gateway
        out = await manager.execute(resumed["session_id"], "v + 1")
        assert outputs_to_text(out.outputs) == "2\n"
    finally:
        await manager.aclose()
        await backend.aclose()


async def test_a_spare_kernel_is_taken_by_the_next_session_and_replaced(
    manager: SessionManager,
) -> None:
    before = {k["id"] for k in await (await manager.gateway()).list_kernels()}
    first = await manager.start_new("spare one")
    spare = manager._spare
    assert spare is not None  # started behind the first session
    spare_conn = (await asyncio.wait_for(asyncio.shield(spare), timeout=60))[0]
    second = await manager.start_new("spare two")
    assert second["kernel_id"] == spare_conn.kernel_id
    result = await manager.execute(second["session_id"], "21 * 2")
    assert outputs_to_text(result.outputs) == "42\n"
    assert manager._spare is not None  # a new one behind it
    assert manager._spare is not spare

    # a spare that died meanwhile (culled, say) is not handed out: a new kernel is started
    gateway = await manager.gateway()
    dead = (await asyncio.wait_for(asyncio.shield(manager._spare), timeout=60))[0]
    await gateway.delete_kernel(dead.kernel_id)
    third = await manager.start_new("spare three")
    assert third["kernel_id"] != dead.kernel_id
    result = await manager.execute(third["session_id"], "'fresh'")
    assert outputs_to_text(result.outputs) == "'fresh'\n"

    latest = (await asyncio.wait_for(asyncio.shield(manager._spare), timeout=60))[0]
    sessions = {first["kernel_id"], second["kernel_id"], third["kernel_id"]}
    running = {k["id"] for k in await gateway.list_kernels()}
    assert running - before == sessions | {latest.kernel_id}  # one spare, never more
    await manager.aclose()
    client = GatewayClient(await manager.backend.start())  # the manager's client is closed
    try:
        assert {k["id"] for k in await client.list_kernels()} - before == set()
    finally:
        await client.aclose()


LONG_CELL = """
import time
for i in range(12):
    print(f"step {i}", flush=True)
    time.sleep(0.5)
'done'
"""


async def test_a_long_cell_returns_early_and_is_followed_to_the_end(
    manager: SessionManager,
) -> None:
    sid = (await manager.start_new("long"))["session_id"]
    first = await manager.execute(sid, LONG_CELL, wait=1.0)
    assert first.running
    assert first.status == "running"
    assert not first.is_error
    seen = outputs_to_text(first.outputs)
    assert seen.startswith("step 0\n")
    # busy: a second cell is refused, naming the running execution and what to do
    with pytest.raises(SessionBusyError, match=rf"execution {first.execution_id}.*queue=true"):
        await manager.execute(sid, "1")
    reports = [first]
    for _ in range(30):  # bounded: 6 s of cell, 1 s per report
        if not reports[-1].running:
            break
        reports.append(await manager.get_execution(sid, first.execution_id, wait=1.0))
        seen += outputs_to_text(reports[-1].outputs)
    last = reports[-1]
    assert not last.running
    assert last.status == "ok"
    assert last.execution_count == 1  # ran once
    assert not any(r.redrawn for r in reports)
    # every line once, in order, across the reports
    assert seen == "".join(f"step {i}\n" for i in range(12)) + "'done'\n"
    again = await manager.get_execution(sid)  # the latest one; nothing new
    assert again.outputs == []
    assert again.status == "ok"
    manager.writer.flush()
    cell = on_disk(manager.get(sid).doc.path).cells[0]
    assert cell.outputs[0].text == "".join(f"step {i}\n" for i in range(12))


async def test_queue_runs_after_the_busy_cell(manager: SessionManager) -> None:
    sid = (await manager.start_new("queued"))["session_id"]
    slow = await manager.execute(sid, "import time; time.sleep(2); x = 1", wait=0.2)
    assert slow.running
    queued = await manager.execute(sid, "x + 1", queue=True)  # waits for its turn
    assert outputs_to_text(queued.outputs) == "2\n"
    assert queued.cell_index == 1
    done = await manager.get_execution(sid, slow.execution_id, wait=10)
    assert done.status == "ok"
    with pytest.raises(UnknownExecutionError, match="recent"):
        await manager.get_execution(sid, "nope")


async def test_timeout_interrupts_the_cell(manager: SessionManager) -> None:
    sid = (await manager.start_new("timeout"))["session_id"]
    result = await manager.execute(
        sid, "import time; print('start', flush=True); time.sleep(60)", cell_timeout=1.5
    )
    assert result.is_error
    assert "KeyboardInterrupt" in outputs_to_text(result.outputs)
    assert any("timeout of 1.5 s" in w for w in result.warnings)
    after = await manager.execute(sid, "'alive'")  # the kernel and its state survive
    assert outputs_to_text(after.outputs) == "'alive'\n"


async def test_a_redrawn_progress_bar_is_reported_whole(manager: SessionManager) -> None:
    sid = (await manager.start_new("redraw"))["session_id"]
    code = (
        "import time\nfrom IPython.display import clear_output\n"
        "for i in range(8):\n    clear_output(wait=True)\n    print(f'{i}/7', flush=True)\n"
        "    time.sleep(0.3)\n"
    )
    first = await manager.execute(sid, code, wait=0.8)
    assert first.running
    later = await manager.get_execution(sid, wait=10)
    assert later.status == "ok"
    assert later.redrawn  # the earlier output was replaced, so this is the whole of it
    assert outputs_to_text(later.outputs) == "7/7\n"


async def test_kernel_death_is_clear_and_restart_brings_the_session_back(
    manager: SessionManager, caplog: pytest.LogCaptureFixture
) -> None:
    sid = (await manager.start_new("dies"))["session_id"]
    await manager.execute(sid, "x = 1")
    with pytest.raises(KernelDiedError, match="died"):
        await manager.execute(sid, "import os; os._exit(1)", wait=30)
    for _ in range(100):  # bounded: the gateway restarts the kernel by itself
        try:
            result = await manager.execute(sid, "'back'", wait=30)
            break
        except SessionBusyError:
            await asyncio.sleep(0.1)
    assert outputs_to_text(result.outputs) == "'back'\n"
    assert "completing without it" not in caplog.text  # IOPub was back, not papered over
    assert "restarted" in await manager.restart(sid)
    assert "NameError" in outputs_to_text((await manager.execute(sid, "x")).outputs)
    manager.writer.flush()
    sources = [c.source for c in on_disk(manager.get(sid).doc.path).cells]
    assert sources == ["x = 1", "import os; os._exit(1)", "'back'", "x"]


async def test_restart_right_after_a_kernel_died_waits_for_the_gateway(
    manager: SessionManager,
) -> None:
    """restart_kernel called the moment a kernel died collides with the gateway's own
    auto-restart (HTTP 500 "Exception restarting kernel", every time here before the fix)."""
    sid = (await manager.start_new("dies then restart"))["session_id"]
    for round_ in range(3):
        await manager.execute(sid, f"x = {round_}")
        with pytest.raises(KernelDiedError, match="died"):
            await manager.execute(sid, "import os; os._exit(1)", wait=30)
        assert "restarted" in await manager.restart(sid)  # at once: no waiting in between
        after = await manager.execute(sid, "'x' in dir()")
        assert outputs_to_text(after.outputs) == "False\n"
