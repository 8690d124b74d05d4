"""LocalBackend against a fake supervisor (the one faked boundary: the script it runs, which
here starts a ``sleep`` as its "gateway" and publishes a connection file like the real one)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from jlabgw.cluster.backends import local as local_module
from jlabgw.cluster.backends.local import LocalBackend
from jlabgw.errors import GatewayStartError
from jlabgw.processes import pid_alive
from tests.helpers import make_settings

pytestmark = pytest.mark.anyio

FAKE_SUPERVISOR = textwrap.dedent(
    """
    import argparse, json, os, shutil, signal, subprocess, sys, time
    p = argparse.ArgumentParser()
    for name in ("--connection-file", "--work-dir", "--gateway-log", "--connection-class",
                 "--kernel-idle", "--job-idle", "--gateway-restarts"):
        p.add_argument(name)
    p.add_argument("--keep-umask", action="store_true")
    args = p.parse_args()
    mode = os.environ.get("FAKE_SUPERVISOR", "ok")
    if mode == "broken":
        sys.exit("jlabgw-job: Kernel Gateway did not start (exit code 1); see the log")
    gateway = subprocess.Popen(["sleep", "600"])
    stopping = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
    with open(args.connection_file + ".tmp", "w") as fh:
        json.dump({"host": "h", "port": 4321, "token": "fake-token-123",
                   "gateway_pid": gateway.pid, "started_at": time.time()}, fh)
    os.replace(args.connection_file + ".tmp", args.connection_file)
    while not stopping and gateway.poll() is None:
        time.sleep(1)  # slow to notice a dead gateway: the backend must not rely on us
    gateway.kill()
    gateway.wait()
    shutil.rmtree(args.work_dir, ignore_errors=True)
    sys.exit(0 if stopping else 1)
    """
)


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalBackend:
    script = tmp_path / "fake_supervisor.py"
    script.write_text(FAKE_SUPERVISOR)
    monkeypatch.setattr(local_module, "supervisor_script", lambda: script)
    return LocalBackend(make_settings(tmp_path, gateway_start_timeout="20"))


async def test_the_published_gateway_is_the_endpoint_and_status(backend: LocalBackend) -> None:
    try:
        endpoint = await backend.start()
        assert endpoint.url == "http://127.0.0.1:4321"
        assert endpoint.token == "fake-token-123"
        status = backend.describe().gateway
        assert status.state == "running"
        assert status.pid == backend.pid
        assert backend.pid is not None
        assert pid_alive(backend.pid)
        assert status.token_file is not None
        assert status.token_file.endswith("kernel_gateway_config.json")
        work_dir = Path(status.token_file).parent
        assert work_dir.is_dir()
        assert await backend.lost() is None
        assert await backend.start() is endpoint  # still up: the same one
    finally:
        await backend.aclose()
    assert not work_dir.exists()
    assert backend.describe().gateway.state == "stopped"


async def test_a_dead_gateway_is_reported_at_once_and_replaced(backend: LocalBackend) -> None:
    try:
        first = await backend.start()
        gateway_pid = backend.pid
        assert gateway_pid is not None
        os.kill(gateway_pid, signal.SIGKILL)
        for _ in range(100):  # until the kill has landed (not until the supervisor notices)
            if not pid_alive(gateway_pid):
                break
            await asyncio.sleep(0.02)
        why = await backend.lost()
        assert why is not None
        assert why.startswith(f"the local Kernel Gateway exited (pid {gateway_pid}")
        generation = backend.generation
        second = await backend.start()
        assert backend.generation == generation + 1
        assert backend.pid != gateway_pid
        assert await backend.lost_since(generation) == why
        assert second == first  # the fake publishes the same port and token
    finally:
        await backend.aclose()


async def test_a_supervisor_that_fails_is_reported_with_its_log(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SUPERVISOR", "broken")
    with pytest.raises(GatewayStartError) as caught:
        await backend.start()
    await backend.aclose()
    message = str(caught.value)
    assert "its supervisor exited with code 1: jlabgw-job: Kernel Gateway did not start" in message
    assert f"(full log: {backend.describe().gateway.log})" in message
    assert f"installed in {sys.executable}" in message
