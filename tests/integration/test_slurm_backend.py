"""JLABGW_BACKEND=slurm end to end: MCP over stdio -> sbatch on a real SLURM -> Kernel Gateway
in the job -> SSH tunnel to the "compute node" (this machine, via the test sshd) -> notebook."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.helpers import PYTHON, gateway_base, server_env, wait_until
from tests.mcp_client import body, call, new_session, poll_to_the_end, serve, status, text_of
from tests.slurm import JOB_VENV, SlurmCluster, login_env, slurm_env, squeue
from tests.sshd import SSHDServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_session_on_a_slurm_job(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-e2e")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "on the cluster")
            out = await call(
                client,
                "execute_code",
                session_id=sid,
                code="import socket, os; print(socket.gethostname()); 6 * 7",
            )
            assert not out.is_error, text_of(out)
            assert text_of(out).endswith("42\n")
            state = await status(client)
            assert state["backend"] == "slurm"
            job = state["job"]
            assert job["state"] == "RUNNING"
            assert job["node"]
            assert job["id"]
            assert squeue(slurm, job["id"]) == "RUNNING"
            conn_file = tmp_path / "home" / ".jlabgw" / "connections" / f"jlabgw-{job['id']}.json"
            assert conn_file.stat().st_mode & 0o777 == 0o600
            token = json.loads(conn_file.read_text())["token"]
            assert token not in json.dumps(state)
            notebook = state["sessions"][0]["notebook_path"]
    # client gone: the job is cancelled (JLABGW_KEEP_JOB unset), its connection file removed
    assert wait_until(lambda: squeue(slurm, job["id"]) == "", timeout=60)
    assert wait_until(lambda: not conn_file.exists(), timeout=30)
    nb = nbformat.read(notebook, as_version=4)
    assert nb.cells[0].outputs[-1]["data"]["text/plain"] == "42"
    assert token not in (tmp_path / "server.log").read_text()
    # a stolen state dir holds no token of a batch job (issue 13's threat list)
    state_files = [f for f in (tmp_path / "state").rglob("*") if f.is_file()]
    assert state_files  # registry, leases, server state ...
    assert not [f for f in state_files if token.encode() in f.read_bytes()]


async def test_a_job_that_cannot_fit_fails_fast_with_the_reason(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-huge", JLABGW_SLURM_CPUS="512")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            result = await call(client, "start_new_session", experiment_name="too big")
            assert result.is_error
            message = text_of(result)
            assert "cannot start" in message
            assert "PartitionConfig" in message
            assert "cancelled" in message
    listed = subprocess.run(
        ["squeue", "-h", "-n", "jlabgw-huge", "-o", "%i"],
        capture_output=True,
        text=True,
        env=slurm.env,
        timeout=10,
    )
    assert listed.stdout.strip() == ""


async def test_job_ended_mid_session_then_resume_on_a_new_job(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-ended")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "fragile")
            first = await call(client, "execute_code", session_id=sid, code="x = 41")
            assert not first.is_error, text_of(first)
            state = await status(client)
            old_job = state["job"]["id"]
            notebook = Path(state["sessions"][0]["notebook_path"])

            subprocess.run(["scancel", old_job], env=slurm.env, timeout=30, check=True)
            assert wait_until(lambda: squeue(slurm, old_job) == "", timeout=60)

            lost = await call(client, "execute_code", session_id=sid, code="x + 1")
            assert lost.is_error
            message = text_of(lost)
            assert f"batch job {old_job} is no longer running" in message
            assert "kernel and its variables are gone" in message
            assert f"notebook_path='{notebook.name}'" in message
            gone = await call(client, "execute_code", session_id=sid, code="x")
            assert gone.is_error
            assert text_of(gone) == message  # and so does every later call on the session

            resumed = await call(
                client,
                "start_session_resume_notebook",
                experiment_name="again",
                notebook_path=notebook.name,
            )
            assert not resumed.is_error, text_of(resumed)
            info = resumed.structured_content
            assert info["executed_cells"] == 2  # "x = 41", and the cell the lost call added
            assert info["failed_cells"] == []
            out = await call(client, "execute_code", session_id=info["session_id"], code="x + 1")
            assert text_of(out) == "42\n"
            new_job = (await status(client))["job"]["id"]
            assert new_job != old_job
    assert wait_until(lambda: squeue(slurm, new_job) == "", timeout=60)
    cells = nbformat.read(notebook, as_version=4).cells
    assert [c.source for c in cells] == ["x = 41", "x + 1", "x + 1"]
    assert [c.execution_count for c in cells] == [1, 2, 3]  # each ran once, on the new job


async def test_job_ended_during_a_running_cell_is_reported_without_retrying(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    import anyio

    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-busy-end")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "long cell")
            job = (await status(client))["job"]["id"]
            async with anyio.create_task_group() as tg:
                result: list[Any] = []

                async def run() -> None:
                    result.append(
                        await call(
                            client,
                            "execute_code",
                            session_id=sid,
                            code="import time; print('started', flush=True); time.sleep(300)",
                        )
                    )

                tg.start_soon(run)
                await anyio.sleep(1.0)
                subprocess.run(["scancel", job], env=slurm.env, timeout=30, check=True)
                with anyio.fail_after(120):  # far less than the cell's 300 s
                    while not result:
                        await anyio.sleep(0.1)
            message = text_of(result[0])
            assert result[0].is_error
            assert f"batch job {job} is no longer running" in message
            assert "start_session_resume_notebook" in message
    # the dead job was found by asking SLURM after the first failed reopen, not after the
    # whole reconnect schedule
    assert "WebSocket, attempt 2" not in (tmp_path / "server.log").read_text()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not count)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def jlabgw_status(tmp_path: Path, env: dict[str, str]) -> str:
    return subprocess.run(
        [PYTHON, "-m", "jlabgw", "status"],
        capture_output=True,
        text=True,
        env=server_env(tmp_path, **env),
        timeout=60,
    ).stdout


async def test_one_job_many_sessions_and_reuse_by_a_restarted_server(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-reuse", JLABGW_KEEP_JOB="1")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            first = await new_session(client, "a")
            second = await new_session(client, "b")
            for sid, value in ((first, "1"), (second, "2")):
                out = await call(client, "execute_code", session_id=sid, code=value)
                assert text_of(out) == f"{value}\n"
            state = await status(client)
            job = state["job"]["id"]
            assert len(state["sessions"]) == 2
            shown = jlabgw_status(tmp_path, env)
            assert f"job: {job} RUNNING on " in shown
            assert "time left" in shown
    assert squeue(slurm, job) == "RUNNING"  # JLABGW_KEEP_JOB: left running
    with (tmp_path / "server2.log").open("w") as log:
        async with serve(tmp_path, log, **{**env, "JLABGW_KEEP_JOB": "0"}) as client:
            sid = await new_session(client, "c")
            out = await call(client, "execute_code", session_id=sid, code="'reused'")
            assert text_of(out) == "'reused'\n"
            assert (await status(client))["job"]["id"] == job
    assert wait_until(lambda: squeue(slurm, job) == "", timeout=60)


async def test_pending_reason_reaches_the_client_as_progress(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    import anyio

    blocker = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--job-name=blocker",
            "--cpus-per-task=2",
            f"--output={tmp_path}/blocker.out",
            "--wrap",
            "sleep 300",
        ],
        capture_output=True,
        text=True,
        env=slurm.env,
        cwd=tmp_path,
        timeout=30,
        check=True,
    ).stdout.strip()
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-queued")
    try:
        assert wait_until(lambda: squeue(slurm, blocker) == "RUNNING", timeout=30)
        with (tmp_path / "server.log").open("w") as log:
            async with serve(tmp_path, log, **env) as client:
                async with anyio.create_task_group() as tg:
                    result: list[object] = []

                    async def start() -> None:
                        result.append(
                            await client.call_tool(
                                "start_new_session",
                                {"experiment_name": "queued"},
                                progress_callback=on_progress,
                            )
                        )

                    tg.start_soon(start)
                    with anyio.move_on_after(60):
                        while not any("pending: Resources" in m for m in messages):
                            await anyio.sleep(0.2)
                    assert any("pending: Resources" in m for m in messages), messages[-5:]
                    subprocess.run(["scancel", blocker], env=slurm.env, timeout=30, check=True)
                started = result[0]
                assert not getattr(started, "is_error", True), text_of(started)
    finally:
        subprocess.run(["scancel", blocker], env=slurm.env, timeout=30, check=False)


async def test_submission_over_ssh_as_the_cluster_user(
    tmp_path: Path, slurm: SlurmCluster, login_node: SSHDServer
) -> None:
    if not (JOB_VENV / "bin" / "python").exists():
        pytest.skip(f"no job Python at {JOB_VENV} (run tests/cluster/setup-system.sh)")
    env = login_env(tmp_path, login_node, JLABGW_JOB_NAME="jlabgw-login")
    assert "SLURM_CONF" not in server_env(tmp_path, **env)  # SLURM is only reachable via SSH
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "from the laptop")
            out = await call(
                client,
                "execute_code",
                session_id=sid,
                code="import getpass, sys; print(getpass.getuser(), sys.prefix); 6 * 7",
            )
            assert not out.is_error, text_of(out)
            assert text_of(out) == f"{login_node.user} {JOB_VENV}\n42\n"
            state = await status(client)
            job = state["job"]
            assert job["state"] == "RUNNING"
            listed = subprocess.run(
                ["squeue", "-h", "-j", job["id"], "-o", "%u %j"],
                capture_output=True,
                text=True,
                env=slurm.env,
                timeout=10,
            ).stdout.strip()
            assert listed == f"{login_node.user} jlabgw-login"
            account = pwd.getpwnam(login_node.user)
            conn_file = (
                Path(account.pw_dir) / ".jlabgw" / "connections" / f"jlabgw-{job['id']}.json"
            )
            info = conn_file.stat()
            assert (info.st_mode & 0o777, info.st_uid) == (0o600, account.pw_uid)
            token = json.loads(conn_file.read_text())["token"]
            notebook = state["sessions"][0]["notebook_path"]
    # the client's exit cancels the job over SSH
    assert wait_until(lambda: squeue(slurm, job["id"]) == "", timeout=60)
    assert wait_until(lambda: not conn_file.exists(), timeout=30)
    nb = nbformat.read(notebook, as_version=4)  # the notebook is local, on the laptop
    assert nb.cells[0].outputs[-1]["data"]["text/plain"] == "42"
    assert token not in (tmp_path / "server.log").read_text()


async def test_long_cell_and_ten_megabytes_through_the_tunnel(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-workload", JLABGW_EXEC_WAIT="2")
    code = (
        "import time\nfor i in range(8):\n    print(f'tick {i}', flush=True)\n    time.sleep(1)\n"
    )
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "cluster workload")
            first = await call(client, "execute_code", session_id=sid, code=code)
            assert first.meta["status"] == "running"
            reports = await poll_to_the_end(client, sid, first)
            assert "".join(body(r) for r in reports) == "".join(f"tick {i}\n" for i in range(8))
            assert reports[-1].meta["execution_count"] == 1

            big = await call(
                client,
                "execute_code",
                session_id=sid,
                code="print(('0123456789' * 10 + '\\n') * 100_000, end='')",
            )
            assert not big.is_error
            assert "characters cut here" in text_of(big)
            notebook = big.meta["notebook_path"]
    cells = nbformat.read(notebook, as_version=4).cells
    assert len(cells[1].outputs[0].text) == 101 * 100_000


async def test_walltime_ending_soon_is_warned_in_results_and_status(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    env = slurm_env(
        tmp_path,
        slurm,
        sshd,
        JLABGW_JOB_NAME="jlabgw-walltime",
        JLABGW_SLURM_TIME="00:03:00",
        JLABGW_WALLTIME_WARN="5",
    )
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "short job")
            out = await call(client, "execute_code", session_id=sid, code="1 + 1")
            assert not out.is_error
            text = text_of(out)
            assert text.startswith("2\n")
            job = (await status(client))["job"]
            assert f"warning: batch job {job['id']} reaches its walltime in about" in text
            assert "start_session_resume_notebook" in text
            assert 0 < job["seconds_left"] <= 180


async def test_a_killed_server_is_replaced_and_takes_its_sessions_back(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    """kill -9 of the MCP server while a cell runs: the next server takes the session back,
    with its variables, and the running cell's output (what the gateway buffered meanwhile)
    lands in the same cell; nothing runs twice."""
    import anyio

    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-reattach", JLABGW_EXEC_WAIT="1")
    # a line every 0.1 s: when the server dies, it has always received lines it has not yet
    # written (writes coalesce for 0.25 s); the next server must recover those too
    code = (
        "import time\nfor i in range(60):\n    print(f'tick {i}', flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    first_log = (tmp_path / "server1.log").open("w")
    async with serve(tmp_path, first_log, **env) as client:
        sid = await new_session(client, "survivor")
        assert not (await call(client, "execute_code", session_id=sid, code="x = 41")).is_error
        running = await call(client, "execute_code", session_id=sid, code=code)
        assert running.meta["status"] == "running"
        execution_id = running.meta["execution_id"]
        state = await status(client)
        job = state["job"]["id"]
        notebook = state["sessions"][0]["notebook_path"]

        def written(n: int) -> bool:
            with contextlib.suppress(OSError, ValueError, IndexError, KeyError):
                cell = nbformat.read(notebook, as_version=4).cells[1]
                return f"tick {n}\n" in cell.outputs[0].text
            return False

        assert wait_until(lambda: written(10), timeout=30)
        # frozen first: for a second the gateway goes on sending lines into the connection,
        # which the server never reads (a laptop that sleeps, a hung client); then killed
        os.kill(state["server_pid"], signal.SIGSTOP)
        time.sleep(1.0)
        os.kill(state["server_pid"], signal.SIGKILL)
        with anyio.move_on_after(5):
            with contextlib.suppress(Exception):
                await call(client, "list_sessions")
    first_log.close()
    assert squeue(slurm, job) == "RUNNING"  # nobody cancelled it

    with (tmp_path / "server2.log").open("w") as log:
        async with serve(tmp_path, log, **{**env, "JLABGW_EXEC_WAIT": "30"}) as client:
            followed = await call(
                client, "get_execution", session_id=sid, execution_id=execution_id, wait=30
            )
            assert followed.meta["status"] == "ok", text_of(followed)
            again = await call(client, "execute_code", session_id=sid, code="x + 1")
            assert text_of(again) == "42\n"  # the kernel's state survived
            assert (await status(client))["job"]["id"] == job
    cells = nbformat.read(notebook, as_version=4).cells
    assert cells[1].outputs[0].text == "".join(f"tick {i}\n" for i in range(60))
    assert [c.execution_count for c in cells] == [1, 2, 3]  # nothing ran twice
    assert all("jlabgw" not in c.metadata for c in cells)  # the running marks are gone
    assert "took back session" in (tmp_path / "server2.log").read_text()


async def test_a_gateway_killed_in_the_job_is_restarted_there_and_reported(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    """SIGKILL of the Kernel Gateway inside a live job (the OOM killer, a stray kill): the job's
    supervisor starts a new gateway in the same allocation and kills the old kernels; the next
    call says what happened and how to go on; resuming the notebook runs on the same job."""
    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-gw-kill")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            sid = await new_session(client, "gateway dies")
            pid_out = await call(
                client, "execute_code", session_id=sid, code="import os; x = 41; os.getpid()"
            )
            kernel_pid = int(text_of(pid_out).strip())
            state = await status(client)
            job = state["job"]["id"]
            notebook = Path(state["sessions"][0]["notebook_path"])
            conn_file = tmp_path / "home" / ".jlabgw" / "connections" / f"jlabgw-{job}.json"
            before = json.loads(conn_file.read_text())
            os.kill(before["gateway_pid"], signal.SIGKILL)

            lost = await call(client, "execute_code", session_id=sid, code="x + 1")
            assert lost.is_error
            message = text_of(lost)
            assert "the gateway was killed by SIGKILL at" in message
            assert f"in batch job {job}, and the job started a new gateway (restart 1)" in message
            assert "kernel and its variables are gone" in message
            assert f"notebook_path='{notebook.name}'" in message
            after = json.loads(conn_file.read_text())
            assert after["restarts"] == 1
            assert after["token"] != before["token"]
            assert wait_until(lambda: not alive(kernel_pid), timeout=10)  # the old kernel went

            resumed = await call(
                client,
                "start_session_resume_notebook",
                experiment_name="after the gateway",
                notebook_path=notebook.name,
            )
            assert not resumed.is_error, text_of(resumed)
            new_sid = resumed.structured_content["session_id"]
            out = await call(client, "execute_code", session_id=new_sid, code="x + 1")
            assert text_of(out) == "42\n"
            assert (await status(client))["job"]["id"] == job  # same allocation
            assert squeue(slurm, job) == "RUNNING"
    cells = nbformat.read(notebook, as_version=4).cells
    # the failed call's cell is kept (with no output) and replayed by the resume
    assert [c.source for c in cells][-1] == "x + 1"
    assert cells[-1].execution_count is not None


def test_tunnel_command_starts_a_job_shows_progress_and_forwards(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    """`jlabgw tunnel` with the slurm backend and no server running: submits the job, prints
    its progress on stderr, then the forwarded URL (never the token); a request with the token
    from the job's connection file works through it; Ctrl-C cancels the job."""
    import time
    import urllib.request

    env = server_env(tmp_path, **slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-tun"))
    with (
        (tmp_path / "tunnel.err").open("w") as err,
        subprocess.Popen(
            [PYTHON, "-m", "jlabgw", "tunnel"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=tmp_path,
        ) as proc,
    ):
        try:
            lines: list[str] = []
            deadline = time.monotonic() + 120
            assert proc.stdout is not None
            while time.monotonic() < deadline and not any("Ctrl-C" in x for x in lines):
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
            printed = "".join(lines)
            assert "started a slurm gateway" in printed, printed
            url = printed.split("gateway: ", 1)[1].split()[0]
            assert url.startswith("https://127.0.0.1:")  # TLS to the gateway's own certificate
            assert "--cacert" in printed
            job = subprocess.run(
                ["squeue", "-h", "-n", "jlabgw-tun", "-o", "%i"],
                capture_output=True,
                text=True,
                env=slurm.env,
                timeout=10,
            ).stdout.strip()
            conn_file = tmp_path / "home" / ".jlabgw" / "connections" / f"jlabgw-{job}.json"
            assert f"'token' field of {conn_file}" in printed
            token = json.loads(conn_file.read_text())["token"]
            assert token not in printed
            request = urllib.request.Request(
                f"{url}/api/kernelspecs", headers={"Authorization": f"token {token}"}
            )
            pinned = gateway_base(json.loads(conn_file.read_text()))[1]
            assert isinstance(pinned, ssl.SSLContext)
            with urllib.request.urlopen(request, timeout=30, context=pinned) as response:
                assert "python3" in json.loads(response.read())["kernelspecs"]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    progress = (tmp_path / "tunnel.err").read_text()
    assert "jlabgw: starting the slurm gateway" in progress
    assert f"job {job} running; waiting for its gateway" in progress
    assert token not in progress
    assert wait_until(lambda: squeue(slurm, job) == "", timeout=60)  # cancelled on exit


def doctor(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "jlabgw", "doctor"],
        capture_output=True,
        text=True,
        env=server_env(tmp_path, **env),
        timeout=300,
        cwd=tmp_path,
    )


def marks(output: str) -> dict[str, str]:
    """check name -> its mark, from doctor's report."""
    found = {}
    for line in output.splitlines():
        if line[:1] in "✓✗!–" and line[1:2] == " ":
            found[line[2:].split("  ")[0].strip()] = line[0]
    return found


def test_doctor_on_a_working_cluster_setup(tmp_path: Path, login_node: SSHDServer) -> None:
    if not (JOB_VENV / "bin" / "python").exists():
        pytest.skip(f"no job Python at {JOB_VENV} (run tests/cluster/setup-system.sh)")
    done = doctor(tmp_path, login_env(tmp_path, login_node))
    assert done.returncode == 0, done.stdout + done.stderr
    found = marks(done.stdout)
    for name in ("config", "batch script", "ssh login", "scheduler", "connection dir"):
        assert found[name] == "✓", done.stdout
    assert found["remote python"] == "✓", done.stdout
    assert f"{JOB_VENV}/bin/python" in done.stdout
    assert "host key matches" in done.stdout
    assert "slurm-wlm" in done.stdout or "slurm " in done.stdout  # sbatch --version
    assert done.stdout.splitlines()[-1] == "all checks passed"


def test_doctor_explains_a_broken_cluster_setup(tmp_path: Path, login_node: SSHDServer) -> None:
    # an unknown host key: refused, with the line that adds it after checking
    empty = tmp_path / "empty_known_hosts"
    empty.touch()
    done = doctor(tmp_path, login_env(tmp_path, login_node, JLABGW_KNOWN_HOSTS=str(empty)))
    assert done.returncode == 1
    found = marks(done.stdout)
    assert found["ssh login"] == "✗"
    assert "ssh-keyscan" in done.stdout
    assert "SHA256:" in done.stdout
    for dependent in ("scheduler", "connection dir", "remote python"):
        assert found[dependent] == "–"
    # a set-up that gives a Python without Kernel Gateway (the system one, here)
    plain = login_env(tmp_path, login_node, JLABGW_REMOTE_SETUP="export PATH=/usr/bin:/bin")
    done = doctor(tmp_path, plain)
    assert done.returncode == 1
    found = marks(done.stdout)
    assert (found["ssh login"], found["scheduler"]) == ("✓", "✓"), done.stdout
    assert found["remote python"] == "✗"
    assert "lacks kernel_gateway, ipykernel" in done.stdout
    assert "fix: set JLABGW_REMOTE_SETUP" in done.stdout


async def test_sessions_share_a_job_per_resource_shape(
    tmp_path: Path, slurm: SlurmCluster, sshd: SSHDServer
) -> None:
    """Two sessions with the configured resources share the default job; a session asking
    for another walltime gets a job of its own, and one asking the same again shares that.
    status shows each job; all of them are cancelled when the server exits."""
    env = slurm_env(tmp_path, slurm, sshd, JLABGW_JOB_NAME="jlabgw-shape")
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            plain = await new_session(client, "plain")
            shaped = await call(
                client, "start_new_session", experiment_name="shaped", time="00:09:00"
            )
            assert not shaped.is_error, text_of(shaped)
            assert shaped.structured_content["resources"] == "time=00:09:00"
            same = await call(
                client, "start_new_session", experiment_name="same shape", time="00:09:00"
            )
            for sid in (plain, shaped.structured_content["session_id"]):
                out = await call(
                    client,
                    "execute_code",
                    session_id=sid,
                    code="import os; os.environ['SLURM_JOB_ID']",
                )
                assert not out.is_error, text_of(out)
            state = await status(client)
            jobs = {job["resources"]: job for job in state["jobs"]}
            assert set(jobs) == {"default", "time=00:09:00"}
            assert jobs["default"]["sessions"] == 1
            assert jobs["time=00:09:00"]["sessions"] == 2
            default_job, shaped_job = jobs["default"]["id"], jobs["time=00:09:00"]["id"]
            assert default_job != shaped_job
            assert same.structured_content["resources"] == "time=00:09:00"
            limits = subprocess.run(
                ["squeue", "-h", "-j", shaped_job, "-o", "%l"],
                capture_output=True,
                text=True,
                env=slurm.env,
                timeout=10,
            ).stdout.strip()
            assert limits == "9:00"
            bad = await call(client, "start_new_session", experiment_name="x", mem="lots")
            assert bad.is_error
            assert "give a size such as 16G" in text_of(bad)
    for job in (default_job, shaped_job):
        assert wait_until(lambda job=job: squeue(slurm, job) == "", timeout=60)
