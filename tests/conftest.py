"""Shared fixtures. Integration tests use a real Kernel Gateway and real ipykernels.

Only fixtures here; helpers to import live in tests/helpers.py and tests/mcp_client.py."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlabgw.cluster.backends import LocalBackend
from jlabgw.config import Settings
from tests.gridengine import GridEngineCluster, running_cluster
from tests.gridengine import unavailable_reason as ge_unavailable_reason
from tests.helpers import make_settings
from tests.slurm import SlurmCluster
from tests.slurm import unavailable_reason as slurm_unavailable_reason
from tests.sshd import SSHDServer, unavailable_reason


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture(scope="session")
def shared_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    """One real gateway for the tests that do not stop or kill it (each starts its own kernels)."""
    backend = LocalBackend(make_settings(tmp_path_factory.mktemp("shared-gateway")))
    asyncio.run(backend.start())
    yield backend
    backend.close_now()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHDServer]:
    """A real OpenSSH sshd on 127.0.0.1 (see tests/sshd.py); skipped where it cannot run."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = SSHDServer(tmp_path_factory.mktemp("sshd"))
    server.setup()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A real one-node SLURM (munged, slurmctld, slurmd; see tests/slurm.py)."""
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    # not under pytest's 0700 temp dir: the test user must read the config (tests/slurm.py)
    root = Path(tempfile.mkdtemp(prefix="jlabgw-slurm-"))
    cluster = SlurmCluster(root)
    try:
        cluster.setup()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def login_node(
    tmp_path_factory: pytest.TempPathFactory, slurm: SlurmCluster
) -> Iterator[SSHDServer]:
    """An sshd that acts as the cluster's login node: SLURM's commands work in its sessions
    (SLURM_CONF set by sshd's SetEnv, as a site's profile would) for the non-root test user."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = SSHDServer(tmp_path_factory.mktemp("login"), set_env={"SLURM_CONF": str(slurm.conf)})
    server.setup()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gridengine() -> Iterator[GridEngineCluster]:
    """A real one-host Grid Engine (see tests/gridengine.py)."""
    reason = ge_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with running_cluster() as cluster:
        yield cluster
    print(
        f"Grid Engine up in {cluster.timings['up']:.2f} s, down in {cluster.timings['down']:.2f} s"
    )


@pytest.fixture(scope="session")
def ge_login(
    tmp_path_factory: pytest.TempPathFactory, gridengine: GridEngineCluster
) -> Iterator[SSHDServer]:
    """The Grid Engine cluster's login node: its sessions have SGE_ROOT, SGE_CELL and the
    cluster's ports (sshd's SetEnv, as a site's profile would)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = SSHDServer(tmp_path_factory.mktemp("ge-login"), set_env=gridengine.client_env)
    server.setup()
    server.start()
    yield server
    server.stop()
