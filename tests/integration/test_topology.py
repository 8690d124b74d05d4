"""Issue 14 end to end on a real multi-host layout: the laptop (this, the root namespace) reaches
only the login node; compute nodes c1 and c2 are reached through it as a jump host
(tests/cluster/topology.sh, driven by tests/topology.py). Every test drives a
``python -m jlabgw serve`` subprocess over MCP stdio, JLABGW_CONFIG pointing at the topology's
config, and then cuts links, restarts a node's sshd or cancels the job under it.

One topology for the module; one server and session shared by the tests that leave it usable
(the path, the link cuts, the sshd restart, the two resource shapes). The lost-job test has
its own server. Every wait is bounded; every address is loopback or the topology's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import nbformat
import pytest
from mcp import Client

from tests import topology as topo
from tests.helpers import PYTHON, server_env, wait_until
from tests.mcp_client import body, call, new_session, poll_to_the_end, serve, status, text_of
from tests.slurm import SlurmCluster, squeue
from tests.sshd import SSHDServer

if os.geteuid() != 0:
    pytest.skip(
        "the multi-host topology (tests/cluster/topology.sh) needs root: it creates network "
        "namespaces, veth pairs and a bridge",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

LINES = 60  # the printing cell: LINES numbered lines, 0.1 s apart (6 s)
CUT_SECONDS = 5.0
RUNS_DIR = ".jlabgw/topology-runs"  # in the test user's (shared) home: one file per cell tag


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so the shared server below can be a module fixture."""
    return "asyncio"


@pytest.fixture(scope="module")
def topology() -> Iterator[topo.Topology]:
    """``topology.sh up`` once for the module, ``down`` at the end whatever happened."""
    reason = topo.unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        yield topo.up()
    finally:
        result = topo.down()
        with contextlib.suppress(KeyError):
            shutil.rmtree(Path(pwd.getpwnam(topo.TEST_USER).pw_dir) / RUNS_DIR, ignore_errors=True)
    if result.returncode != 0:  # (not in `finally`: it would hide the error that got us there)
        pytest.fail(f"topology.sh down failed: {result.stderr[-2000:]}")


def topology_env(cluster: topo.Topology) -> dict[str, str]:
    """The server's environment on top of :func:`tests.helpers.server_env`: the topology's
    config (login node alias, jump, known_hosts, job Python) and nothing of this machine's."""
    return {
        "JLABGW_CONFIG": str(cluster.config),
        "JLABGW_EXEC_WAIT": "20",
        "JLABGW_WALLTIME_WARN": "0",  # no walltime footer in the results compared line by line
    }


@dataclass
class Server:
    client: Client
    session_id: str
    root: Path

    @property
    def log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")


@pytest.fixture(scope="module")
async def server(
    topology: topo.Topology, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    """One jlabgw server over stdio and one session on the topology's default job."""
    root = tmp_path_factory.mktemp("topology-server")
    with (root / "server.log").open("w") as log:
        async with serve(root, log, **topology_env(topology)) as client:
            sid = await new_session(client, "through the jump host")
            yield Server(client, sid, root)


async def job_of(client: Client, resources: str = "default") -> dict[str, Any]:
    """The status entry of the job of one resource shape."""
    jobs = [j for j in (await status(client))["jobs"] if j["resources"] == resources]
    assert len(jobs) == 1, f"jobs of shape {resources}: {jobs}"
    job: dict[str, Any] = jobs[0]
    return job


async def hostname(client: Client, sid: str) -> tuple[str, str]:
    """(hostname, SLURM_JOB_ID) as the session's kernel sees them."""
    out = await call(
        client,
        "execute_code",
        session_id=sid,
        code="import os, socket; print(socket.gethostname(), os.environ.get('SLURM_JOB_ID'))",
    )
    assert not out.is_error, text_of(out)
    name, job = text_of(out).split()
    return name, job


# -- 1. the tunnel is the only path ----------------------------------------------------------


async def test_the_tunnel_through_the_login_node_is_the_only_path(
    topology: topo.Topology, server: Server
) -> None:
    node, job_id = await hostname(server.client, server.session_id)
    job = await job_of(server.client)
    assert node in topo.COMPUTE
    assert (job["node"], job["id"], job["state"]) == (node, job_id, "RUNNING")

    # the gateway's port on the node, from the connection file on the shared home
    conn = topology.user_home / ".jlabgw" / "topology-connections" / f"jlabgw-{job_id}.json"
    info = json.loads(conn.read_text())
    assert info["host"] == node
    port = int(info["port"])

    # the login node answers from here (the probe itself works) ...
    error, _ = topo.tcp_connect(topo.LOGIN_ADDR, 22)
    assert error is None, f"the login node's sshd does not answer from the laptop: {error}"
    # ... the compute node does not, and fails fast
    error, seconds = topo.tcp_connect(topo.NODE_ADDR[node], 22)
    assert topo.refused_or_unreachable(error), f"{node}:22 from the laptop: {error!r}"
    assert seconds < 1.0, f"{node}:22 took {seconds:.2f} s to fail"
    # nor does the gateway, at the node's address or at the laptop's loopback
    for host in (topo.NODE_ADDR[node], "127.0.0.1"):
        error, seconds = topo.tcp_connect(host, port)
        assert topo.refused_or_unreachable(error), f"gateway port {host}:{port}: {error!r}"
        assert seconds < 1.0, f"{host}:{port} took {seconds:.2f} s to fail"
    # yet the kernel answers, on the node, through the tunnel
    out = await call(
        server.client,
        "execute_code",
        session_id=server.session_id,
        code="import socket; socket.gethostname()",
    )
    assert not out.is_error, text_of(out)
    assert text_of(out) == f"'{node}'\n"
    # the node's sshd let the user in from the login node's cluster address: the jump
    accepted = re.findall(
        rf"Accepted publickey for {re.escape(topo.TEST_USER)} from (\S+)",
        (topology.state / "nodes" / node / "sshd.log").read_text(errors="replace"),
    )
    assert accepted, f"{node}'s sshd logged no login"
    assert set(accepted) == {topo.LOGIN_INTERNAL}, accepted


# -- 2, 3, 4. output through a cut link and a restarted sshd ---------------------------------


def printing_cell(tag: str) -> str:
    """LINES numbered lines 0.1 s apart; it counts its own runs in a file on the shared home
    (one line per run) and in a variable of the kernel."""
    return (
        "import os, time\n"
        f"_path = os.path.expanduser('~/{RUNS_DIR}/{tag}')\n"
        "os.makedirs(os.path.dirname(_path), exist_ok=True)\n"
        "with open(_path, 'a') as _f:\n"
        "    _f.write('run\\n')\n"
        f"runs_{tag} = globals().get('runs_{tag}', 0) + 1\n"
        f"for i in range({LINES}):\n"
        "    print(f'line {i}', flush=True)\n"
        "    time.sleep(0.1)\n"
    )


EXPECTED = "".join(f"line {i}\n" for i in range(LINES))


def stdout_of(cell: Any) -> str:
    return "".join(
        o.get("text", "")
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )


async def cell_through(
    topology: topo.Topology,
    server: Server,
    disrupt: Callable[[], Any],
) -> None:
    """Run the printing cell; once it has printed for a second, call ``disrupt`` (blocking, in
    a thread); then check that the call completed, that no line is missing or doubled in the
    result stream nor in the notebook on disk, and that the cell ran exactly once."""
    client, sid = server.client, server.session_id
    tag = uuid.uuid4().hex[:12]
    code = printing_cell(tag)
    runs = topology.user_home / RUNS_DIR / tag
    reports: list[Any] = []

    async def run() -> None:
        first = await call(client, "execute_code", session_id=sid, code=code)
        reports.extend(await poll_to_the_end(client, sid, first, limit=20))

    with anyio.fail_after(180):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.fail_after(30):
                while not runs.exists():
                    await anyio.sleep(0.05)
            await anyio.sleep(1.0)
            await anyio.to_thread.run_sync(disrupt)

    final = reports[-1]
    log = server.log[-3000:]
    assert not final.is_error, f"{text_of(final)}\nserver log:\n{log}"
    assert final.meta["status"] == "ok", final.meta
    streamed = "".join(body(r) for r in reports)
    assert streamed == EXPECTED, f"result stream:\n{streamed}\nserver log:\n{log}"

    # the notebook on disk holds the cell once, with every line once
    path = final.meta["notebook_path"]

    def on_disk() -> list[Any]:
        try:
            cells = nbformat.read(path, as_version=4).cells
        except (OSError, ValueError):
            return []
        return [c for c in cells if c.cell_type == "code" and c.source == code]

    wait_until(lambda: len(on_disk()) == 1 and stdout_of(on_disk()[0]) == EXPECTED, timeout=10)
    cells = on_disk()
    assert len(cells) == 1, f"the cell is {len(cells)} times in {path}"
    assert stdout_of(cells[0]) == EXPECTED, f"notebook stdout:\n{stdout_of(cells[0])}"

    # it ran exactly once, in the same kernel
    assert runs.read_text() == "run\n", f"the cell ran {runs.read_text().count('run')} times"
    count = await call(client, "execute_code", session_id=sid, code=f"runs_{tag}")
    assert text_of(count) == "1\n", text_of(count)


def cut(
    topology: topo.Topology, link: tuple[str, str | None], check: Callable[[], None]
) -> Callable[[], None]:
    """A ``disrupt`` for :func:`cell_through`: ``link`` down for CUT_SECONDS, then up; ``check``
    (run while it is down) proves the cut took effect."""

    def disrupt() -> None:
        name, netns = link
        with topology.link_down(name, netns):
            start = time.monotonic()
            check()
            time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - start)))

    return disrupt


async def test_laptop_login_link_down_for_5_s_while_a_cell_prints(
    topology: topo.Topology, server: Server
) -> None:
    def login_unreachable() -> None:
        error, _ = topo.tcp_connect(topo.LOGIN_ADDR, 22, timeout=1)
        assert error is not None, "the login node still answers with its link down"

    await cell_through(topology, server, cut(topology, topology.laptop_link(), login_unreachable))


async def test_login_compute_link_down_for_5_s_while_a_cell_prints(
    topology: topo.Topology, server: Server
) -> None:
    node = (await job_of(server.client))["node"]

    def node_unreachable() -> None:
        assert not topology.sshd_answers(node, timeout=1), f"{node} answers with its link down"

    await cell_through(
        topology, server, cut(topology, topology.compute_link(node), node_unreachable)
    )


async def test_compute_node_sshd_restarted_when_idle_and_while_a_cell_prints(
    topology: topo.Topology, server: Server
) -> None:
    node = (await job_of(server.client))["node"]
    before = topology.sshd_pids(node)
    assert len(before) > 1, f"no SSH connection of jlabgw on {node}: sshd pids {before}"

    # idle: every sshd of the node goes (the tunnel's connection too), a new one starts
    listener = await anyio.to_thread.run_sync(topology.restart_sshd, node)
    assert not set(before) & set(topology.sshd_pids(node))
    tag = uuid.uuid4().hex[:8]
    out = await call(
        server.client,
        "execute_code",
        session_id=server.session_id,
        code=f"import socket\nidle_{tag} = globals().get('idle_{tag}', 0) + 1\n"
        f"print(socket.gethostname(), idle_{tag})",
    )
    assert not out.is_error, text_of(out)
    assert text_of(out) == f"{node} 1\n"  # the same kernel, the cell run once
    again = topology.sshd_pids(node)
    assert len(again) > 1, f"jlabgw did not connect to {node} again: sshd pids {again}"

    # busy: the same while the cell prints
    def restart() -> None:
        topology.restart_sshd(node)

    await cell_through(topology, server, restart)
    assert topology.sshd_listener(node) not in (None, listener)
    assert not set(again) & set(topology.sshd_pids(node))
    assert len(topology.sshd_pids(node)) > 1, f"jlabgw did not connect to {node} again"


# -- 5. two resource shapes, two jobs, two nodes ---------------------------------------------


async def test_a_second_resource_shape_gets_its_own_job_on_the_other_node(
    topology: topo.Topology, server: Server
) -> None:
    client = server.client
    first = await job_of(client)
    first_node, first_job = await hostname(client, server.session_id)
    assert (first["node"], first["id"]) == (first_node, first_job)

    # the default shape takes 1 of a node's 2 CPUs: a 2-CPU job cannot share its node
    started = await call(client, "start_new_session", experiment_name="two cpus", cpus=2)
    assert not started.is_error, text_of(started)
    other = started.structured_content["session_id"]
    try:
        second = await job_of(client, "cpus=2")
        node, job_id = await hostname(client, other)
        assert job_id == second["id"] != first_job
        assert node == second["node"]
        assert {first_node, node} == set(topo.COMPUTE), (first_node, node)
        # both sessions still answer, each on its own node
        assert await hostname(client, server.session_id) == (first_node, first_job)
        # status shows both jobs with their nodes; SLURM agrees
        state = await status(client)
        shown = {j["id"]: (j["node"], j["state"], j["sessions"]) for j in state["jobs"]}
        assert shown == {
            first_job: (first_node, "RUNNING", 1),
            job_id: (node, "RUNNING", 1),
        }, state["jobs"]
        by_session = {s["session_id"]: s["resources"] for s in state["sessions"]}
        assert by_session == {server.session_id: "default", other: "cpus=2"}
        queue = topology.user_jobs()
        assert queue.get(first_job) == ("RUNNING", first_node), queue
        assert queue.get(job_id) == ("RUNNING", node), queue
        # two tunnels: an SSH connection of jlabgw into each node (an sshd besides the listener)
        for n in (first_node, node):
            pids = topology.sshd_pids(n)
            assert len(pids) > 1, f"no SSH connection into {n}: sshd pids {pids}"
    finally:
        await call(client, "shutdown_session", session_id=other)


# -- 6. the job under a session is lost -------------------------------------------------------


async def test_after_the_job_is_lost_every_call_on_the_session_says_so(
    topology: topo.Topology, tmp_path: Path
) -> None:
    calls: dict[str, Any] = {}  # tool -> result, in the order they were made
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **topology_env(topology)) as client:
            sid = await new_session(client, "doomed")
            out = await call(client, "execute_code", session_id=sid, code="x = 41")
            assert not out.is_error, text_of(out)
            state = await status(client)
            job_id = (await job_of(client))["id"]
            notebook = Path(state["sessions"][0]["notebook_path"]).name

            # the user cancels it on the login node
            await anyio.to_thread.run_sync(topology.scancel, job_id)
            assert wait_until(lambda: job_id not in topology.user_jobs(), timeout=30)

            calls["execute_code (first)"] = await call(
                client, "execute_code", session_id=sid, code="x + 1"
            )
            calls["execute_code (again)"] = await call(
                client, "execute_code", session_id=sid, code="x"
            )
            calls["get_execution"] = await call(client, "get_execution", session_id=sid)
            calls["interrupt_kernel"] = await call(client, "interrupt_kernel", session_id=sid)
    # (asserted out here: inside the client's task group a failure reads as an ExceptionGroup)

    def says_job_ended(result: Any) -> bool:
        text = text_of(result)
        return (
            result.is_error
            and re.search(rf"job {job_id}\b.*(no longer running|ended)", text) is not None
            and "start_session_resume_notebook" in text
            and notebook in text
            and "unknown session_id" not in text
        )

    wrong = {tool: text_of(result) for tool, result in calls.items() if not says_job_ended(result)}
    assert not wrong, (
        f"after job {job_id} ended, these calls on session {sid} do not say that the job "
        f"ended and to resume {notebook} with start_session_resume_notebook:\n"
        + "\n".join(f"  {tool}: {text}" for tool, text in wrong.items())
    )


# -- 7. doctor and a compute node's host key ----------------------------------------------------


def test_doctor_names_a_compute_nodes_missing_host_key_and_the_keyscan_through_login(
    topology: topo.Topology, tmp_path: Path
) -> None:
    # a running job of the user, so there is a node to reach
    filler = topology.sbatch("--job-name=jlabgw-topology-doctor")
    try:
        node = topology.wait_running(filler)
        known_hosts = tmp_path / "known_hosts"
        lines = topology.known_hosts.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.split(",", 1)[0] != node]
        assert len(kept) == len(lines) - 1, f"no line of {node} in {topology.known_hosts}"
        known_hosts.write_text("".join(kept))
        config = tmp_path / "jlabgw.toml"
        text = topology.config.read_text()
        text, n = re.subn(r"(?m)^known_hosts = .*$", f'known_hosts = "{known_hosts}"', text)
        assert n == 1
        config.write_text(text)

        result = subprocess.run(
            [PYTHON, "-m", "jlabgw", "doctor"],
            capture_output=True,
            text=True,
            env=server_env(tmp_path, JLABGW_CONFIG=str(config)),
            timeout=120,
        )
        report = result.stdout + result.stderr
        assert result.returncode == 1, f"doctor passed with {node}'s host key missing:\n{report}"
        assert node in report, report
        assert str(known_hosts) in report, report
        keyscan = re.compile(
            rf"ssh\b[^\n]*\b(login|{re.escape(topo.LOGIN_ADDR)})\b[^\n]*ssh-keyscan[^\n]*\b{node}\b"
        )
        assert keyscan.search(report), f"no ssh-keyscan of {node} through the login node:\n{report}"
    finally:
        topology.scancel(filler)


# -- 8. two SLURM clusters from one server (issue 15) -------------------------------------------


async def test_one_server_on_two_slurm_clusters(
    topology: topo.Topology, slurm: SlurmCluster, login_node: SSHDServer, tmp_path: Path
) -> None:
    """The topology is the server's own cluster (its config file); the one-node test SLURM,
    behind its own login sshd on 127.0.0.1, is [profiles.one] of the same file. A session on
    each at once, on their own nodes and jobs; each session says its cluster; both jobs end
    with the server."""
    config = tmp_path / "two-clusters.toml"
    config.write_text(
        topology.config.read_text()
        + "\n[profiles.one]\n"
        + f'ssh_host = "{login_node.host}"\n'
        + f"ssh_port = {login_node.port}\n"
        + f'ssh_user = "{login_node.user}"\n'
        + f'ssh_key = "{login_node.client_key}"\n'
        + f'known_hosts = "{login_node.known_hosts}"\n'
        + f'ssh_config = "{tmp_path / "no-ssh-config"}"\n'
        + f"compute_ssh_port = {login_node.port}\n"
        + 'connection_dir = "~/.jlabgw/connections"\n'
        + 'job_name = "jlabgw-two-slurm-one"\n'
    )
    env = {**topology_env(topology), "JLABGW_CONFIG": str(config)}
    env["JLABGW_JOB_NAME"] = "jlabgw-two-slurm-topo"
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, **env) as client:
            on_topology = await new_session(client, "on the topology")
            started = await call(client, "start_new_session", experiment_name="one", profile="one")
            assert not started.is_error, text_of(started)
            assert started.structured_content["cluster"] == "one"
            on_one = started.structured_content["session_id"]
            node_a, job_a = await hostname(client, on_topology)
            node_b, job_b = await hostname(client, on_one)
            assert node_a in topo.COMPUTE  # c1 or c2, behind the topology's login node
            assert node_b not in topo.COMPUTE  # this machine, the one-node SLURM's node
            listed = {s["session_id"]: s["cluster"] for s in (await status(client))["sessions"]}
            assert listed == {on_topology: "default", on_one: "one"}
            assert (await job_of(client, "@one"))["id"] == job_b
            assert (await job_of(client))["id"] == job_a
    assert wait_until(lambda: squeue(slurm, job_b) == "", timeout=60)
    # (the module's shared server keeps its own job on the topology meanwhile)
    assert wait_until(lambda: job_a not in topology.user_jobs(), timeout=60)
