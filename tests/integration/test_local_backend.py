"""The local backend against a real Kernel Gateway process."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import httpx
import pytest

from jlabgw.cluster.backends import LocalBackend
from jlabgw.cluster.backends import local as local_module
from jlabgw.cluster.backends.local import supervisor_script
from jlabgw.config import Settings
from jlabgw.errors import GatewayStartError
from jlabgw.jupyter.channels import KernelConnection
from jlabgw.jupyter.rest import GatewayClient
from tests.helpers import (
    cmdlines,
    listening_addresses,
    make_settings,
    pids_matching,
    process_environ,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _secret_config(settings: Settings) -> Path:
    files = list((settings.state_dir / "run").glob("gw-*/kernel_gateway_config.json"))
    assert len(files) == 1, files
    return files[0]


async def test_gateway_is_private_and_cleaned_up(settings: Settings) -> None:
    backend = LocalBackend(settings)
    endpoint = await backend.start()
    try:
        # TLS with the gateway's own certificate, pinned (issue 13: port impersonation)
        assert endpoint.url.startswith("https://127.0.0.1:")
        assert endpoint.cert is not None
        assert "BEGIN CERTIFICATE" in endpoint.cert
        port = int(endpoint.url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"127.0.0.1"}  # loopback only, no 0.0.0.0 or ::
        assert endpoint.token not in repr(endpoint)

        # the token is in a 0600 file in a 0700 directory, and on no command line
        config = _secret_config(settings)
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
        assert json.loads(config.read_text())["KernelGatewayApp"]["auth_token"] == endpoint.token
        assert not [cmd for cmd in cmdlines().values() if endpoint.token in cmd]
        assert backend.pid is not None
        assert endpoint.token not in process_environ(backend.pid)

        # loopback only: the same port on another loopback address is closed
        with pytest.raises(OSError, match="refused"):
            socket.create_connection(("127.0.0.2", port), timeout=2).close()

        # requests without or with a wrong token are refused
        async with httpx.AsyncClient(base_url=endpoint.url, verify=endpoint.ssl_context) as http:
            assert (await http.get("/api/kernelspecs")).status_code == 401
            wrong = {"Authorization": "token not-the-token"}
            assert (await http.get("/api/kernelspecs", headers=wrong)).status_code == 401

        # the kernels do not inherit the token
        gateway = GatewayClient(endpoint)
        kernel = await gateway.start_kernel("python3")
        conn = KernelConnection(endpoint, kernel["id"])
        outputs: list[dict] = []
        reply = await conn.execute(
            "import os, json; print(json.dumps(dict(os.environ)))", outputs.append
        )
        assert reply["content"]["status"] == "ok"
        printed = "".join(m["content"].get("text", "") for m in outputs)
        assert "PATH" in printed
        assert endpoint.token not in printed
        # ... and create files as the user's shell would (the supervisor's own files are 0600)
        outputs.clear()
        await conn.execute("import os; print(oct(os.umask(0o22)))", outputs.append)
        ours = os.umask(0o22)
        os.umask(ours)
        assert "".join(m["content"].get("text", "") for m in outputs).strip() == oct(ours)
        kernel_pids = pids_matching(kernel["id"])
        assert kernel_pids, "kernel process not found"
        await conn.close()
        await gateway.aclose()
    finally:
        gateway_pid = backend.pid
        await backend.aclose()

    assert not pids_matching(f"--config={config}")
    assert gateway_pid is not None
    assert not Path(f"/proc/{gateway_pid}").exists()
    assert wait_until(lambda: not pids_matching(kernel["id"]), timeout=10)
    assert not config.exists()
    assert backend.describe().gateway.state == "stopped"


async def test_port_clash_is_retried_on_another_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor's first port is taken: the gateway exits, the next port is used."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy_port = taken.getsockname()[1]
    # the real supervisor file, with only its port pick replaced for the first attempt
    wrapper = tmp_path / "supervisor_first_port_taken.py"
    wrapper.write_text(
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('sup', {str(supervisor_script())!r})\n"
        "sup = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(sup)\n"
        f"ports, real = iter([{busy_port}]), sup.free_port\n"
        "sup.free_port = lambda: next(ports, None) or real()\n"
        "sys.exit(sup.main())\n"
    )
    monkeypatch.setattr(local_module, "supervisor_script", lambda: wrapper)
    backend = LocalBackend(make_settings(tmp_path))
    try:
        endpoint = await backend.start()
        assert not endpoint.url.endswith(f":{busy_port}")
        async with httpx.AsyncClient(verify=endpoint.ssl_context) as http:
            headers = {"Authorization": f"token {endpoint.token}"}
            resp = await http.get(f"{endpoint.url}/api/kernelspecs", headers=headers)
        assert resp.status_code == 200
        log = Path(str(backend.describe().gateway.log)).read_text()
        assert f"port {busy_port} was taken" in log  # the first attempt saw the clash
    finally:
        await backend.aclose()
        taken.close()


async def test_a_gateway_that_cannot_start_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a port clash is worth another attempt: a broken gateway fails once, with its log."""
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "broken"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "kernel_gateway").mkdir()
    (tmp_path / "broken" / "kernel_gateway" / "__init__.py").write_text("raise ImportError('x')")
    backend = LocalBackend(make_settings(tmp_path))
    try:
        with pytest.raises(GatewayStartError, match="exited with code 1") as caught:
            await backend.start()
    finally:
        await backend.aclose()
    log = Path(str(backend.describe().gateway.log)).read_text()
    assert "was taken" not in log
    assert log.count("ImportError: x") == 1, log
    assert "full log:" in str(caught.value)


async def test_start_timeout_is_reported_with_the_setting(tmp_path: Path) -> None:
    backend = LocalBackend(make_settings(tmp_path, gateway_start_timeout="0.05"))
    try:
        with pytest.raises(GatewayStartError, match="JLABGW_GATEWAY_START_TIMEOUT"):
            await backend.start()
    finally:
        await backend.aclose()
    assert not pids_matching(str(tmp_path / "state" / "run"))


async def test_start_is_idempotent_and_restarts_a_dead_gateway(settings: Settings) -> None:
    backend = LocalBackend(settings)
    try:
        first = await backend.start()
        assert await backend.start() == first
        assert backend.pid is not None
        import signal

        os.kill(backend.pid, signal.SIGKILL)
        assert wait_until(lambda: backend._proc is not None and backend._proc.poll() is not None)
        second = await backend.start()
        assert second.token != first.token
    finally:
        await backend.aclose()


async def test_files_in_the_working_directory_do_not_shadow_the_gateways_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server may be started anywhere (a project checkout, the notebook dir): a
    ``kernel_gateway`` package there must not be what the gateway imports."""
    settings = make_settings(tmp_path / "state")
    cwd = tmp_path / "project"
    marker = tmp_path / "shadow-imported"
    (cwd / "kernel_gateway").mkdir(parents=True)
    (cwd / "kernel_gateway" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise SystemExit('shadowed')\n"
    )
    monkeypatch.chdir(cwd)
    backend = LocalBackend(settings)
    try:
        endpoint = await backend.start()
        gw = GatewayClient(endpoint)
        try:
            assert "python3" in (await gw.kernelspecs())["kernelspecs"]
        finally:
            await gw.aclose()
    finally:
        await backend.aclose()
    assert not marker.exists()
