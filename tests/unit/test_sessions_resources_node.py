"""check_resources on a batch backend (sessions.resources): the probe runs as a command on the
job's node (a fake node at that boundary, whose "job's Python" is this machine's, a real
process) and no kernel is started; the throwaway kernel only when that fails. The probe finds
the session kernel's working directory from /proc, and never mistakes itself for the kernel
(a real process standing for the kernel); so does the node's plain-sh lookup."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlabgw.cluster import files as cluster_files
from jlabgw.cluster.files import Node, NodeFiles
from jlabgw.errors import CommandError, KernelError
from jlabgw.progress import no_progress
from jlabgw.sessions.manager import SessionManager
from jlabgw.sessions.resources import parse_probe, probe_code
from tests.session_fakes import FakeBackend, FakeStarter, settings_for

pytestmark = pytest.mark.anyio


class ProbeNode(Node):
    where = "node1"
    transfer_root = ""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.ran: list[str] = []

    def files(self) -> NodeFiles:
        raise AssertionError("no files for a probe")

    def kernel_cwd(self, kernel_id: str) -> str | None:
        return None

    def run_python(self, code: str, timeout: float) -> str:
        self.ran.append(code)
        if self.fail:
            raise CommandError(["bash", "-c", "..."], 127, "", "python3: not found", self.where)
        done = subprocess.run(
            [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=timeout
        )
        return done.stdout


class NodeBackend(FakeBackend):
    name = "slurm"

    def __init__(self, node: Node) -> None:
        super().__init__()
        self._node = node

    def node(self) -> Node | None:
        return self._node


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A process standing for a kernel: its command line names its id, its cwd is known."""
    kernel_id = str(uuid.uuid4())
    cwd = tmp_path / "kernel-cwd"
    cwd.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", f"kernel-{kernel_id}.json"],
        cwd=cwd,
    )
    yield kernel_id, cwd
    proc.kill()
    proc.wait()


async def test_the_probe_runs_on_the_node_and_starts_no_kernel(
    tmp_path: Path, starter: FakeStarter
) -> None:
    node = ProbeNode()
    manager = SessionManager(settings_for(tmp_path), NodeBackend(node), starter=starter)
    try:
        sid = (await manager.start_new("probe"))["session_id"]
        started = list(starter.started)
        info = await manager.resources.check(manager.get(sid), no_progress)
        assert info["asked"] == "the job's node (node1) over SSH, no kernel"
        assert info["cpus"]["count"] >= 1
        assert info["backend"] == "slurm"
        assert info["session_id"] == sid
        assert starter.started == started  # no kernel for it
        assert len(node.ran) == 1
    finally:
        await manager.aclose()


async def test_a_failing_probe_on_the_node_falls_back_to_a_kernel(
    tmp_path: Path, starter: FakeStarter
) -> None:
    manager = SessionManager(
        settings_for(tmp_path), NodeBackend(ProbeNode(fail=True)), starter=starter
    )
    try:
        # the fake kernel does not speak Python: the fallback is tried, and says it failed
        with pytest.raises(KernelError, match="the resource probe did not answer"):
            await manager.resources.check(None, no_progress)
        assert len(starter.started) == 1  # the throwaway kernel was asked
        assert starter.discarded == starter.started  # and shut down
    finally:
        await manager.aclose()


def test_the_probe_reports_the_kernels_directory_not_its_own(kernel: tuple[str, Path]) -> None:
    kernel_id, cwd = kernel
    code = probe_code(kernel_id)
    assert kernel_id not in code  # else the probe's own command line would match
    out = subprocess.run(
        [sys.executable, "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd="/",
    ).stdout
    info = parse_probe(out)
    assert info is not None
    assert info["disk"]["path"] == str(cwd)
    assert parse_probe("no answer\n") is None
    with pytest.raises(ValueError, match="not an object"):
        parse_probe("JLABGW-RESOURCES:[1]\n")


def test_the_nodes_sh_lookup_finds_the_kernels_directory(kernel: tuple[str, Path]) -> None:
    kernel_id, cwd = kernel
    script = cluster_files._CWD_SCRIPT
    found = subprocess.run(
        ["sh", "-c", script], input=f"{kernel_id}\n", capture_output=True, text=True, timeout=60
    )
    assert (found.returncode, found.stdout.strip()) == (0, str(cwd))
    missing = subprocess.run(
        ["sh", "-c", script], input=f"{uuid.uuid4()}\n", capture_output=True, text=True, timeout=60
    )
    assert (missing.returncode, missing.stdout) == (1, "")  # not itself, nor anything else
    hostile = subprocess.run(
        ["sh", "-c", script], input="*\n", capture_output=True, text=True, timeout=60
    )
    assert hostile.returncode == 2
    assert cluster_files.is_kernel_id(kernel_id)
    assert not cluster_files.is_kernel_id("../x")
