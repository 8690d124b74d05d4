"""Shared fixtures. Integration tests use a real Kernel Gateway and real ipykernels."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlabgw.cluster.backends import LocalBackend
from jlabgw.config import Settings, load_settings
from tests.slurm import SlurmCluster
from tests.slurm import unavailable_reason as slurm_unavailable_reason
from tests.sshd import SSHDServer, unavailable_reason


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(root: Path, **extra: str) -> Settings:
    """Settings under ``root``; an empty config file so the user's own config never leaks in."""
    root.mkdir(parents=True, exist_ok=True)
    empty = root / "empty-config.toml"
    empty.touch()
    env = {
        "JLABGW_NOTEBOOK_DIR": str(root / "notebooks"),
        "JLABGW_STATE_DIR": str(root / "state"),
        "JLABGW_CONFIG": str(empty),
        **{f"JLABGW_{k.upper()}": v for k, v in extra.items()},
    }
    return load_settings(environ=env)


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


def server_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for a jlabgw server subprocess: a clean one, as MCP clients give."""
    empty = root / "empty-config.toml"
    empty.touch()
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(root)),
        "JLABGW_CONFIG": str(empty),
        "JLABGW_NOTEBOOK_DIR": str(root / "notebooks"),
        "JLABGW_STATE_DIR": str(root / "state"),
        "JLABGW_LOG_LEVEL": "INFO",
        **extra,
    }


PYTHON = sys.executable


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
