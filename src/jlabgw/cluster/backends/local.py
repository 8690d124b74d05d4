"""The ``local`` backend: Jupyter Kernel Gateway as a subprocess of this machine.

The gateway listens on 127.0.0.1 only, on a port picked free just before start, with
``port_retries=0`` so it never silently moves to another port (a clash makes it exit and we
retry with a new port). Its auth token lives only in a 0600 JSON config file in a 0700
directory: not on the command line (``ps``), not in the environment the kernels inherit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx

from jlabgw.cluster.backends.base import Backend
from jlabgw.cluster.backends.status import BackendStatus, GatewayStatus
from jlabgw.config import Settings
from jlabgw.errors import GatewayStartError
from jlabgw.fsutil import ensure_private_dir, write_private_file
from jlabgw.jupyter.endpoint import GatewayEndpoint
from jlabgw.log import register_secret
from jlabgw.node.job_supervisor import GATEWAY_MAIN, gateway_config
from jlabgw.node.job_supervisor import free_port as _free_port

__all__ = ["LocalBackend", "gateway_app_config"]

log = logging.getLogger(__name__)

_PORT_ATTEMPTS = 5
_POLL_INTERVAL = 0.02  # ready detection: the gateway answers ~1.6 s after exec here
_STOP_GRACE = 10.0  # the gateway shuts kernels down on SIGTERM; that can take a few seconds
_PORT_CLASH_MARKERS = ("no available port could be found", "Address already in use")
NODELAY_CLASS_PATH = "jlabgw.node.gateway_ext.NoDelayChannelsConnection"


def gateway_app_config(port: int, token: str) -> dict[str, Any]:
    """The batch job's gateway settings, with our NoDelay class importable as jlabgw."""
    return gateway_config(port, token, connection_class=NODELAY_CLASS_PATH)


class LocalBackend(Backend):
    """Starts one gateway on first use and stops it (and its kernels) on close."""

    name: ClassVar[str] = "local"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings
        self._lock = asyncio.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._endpoint: GatewayEndpoint | None = None
        self._secret_dir: Path | None = None
        self._log_path: Path | None = None
        self._started_at: float | None = None
        self._start_seconds: float | None = None
        self._early: tuple[GatewayEndpoint, float] | None = None  # spawned by begin(), and when

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> GatewayEndpoint:
        async with self._lock:
            if self._endpoint is not None and self._proc is not None:
                if self._proc.poll() is None:
                    return self._endpoint
                log.warning(
                    "gateway process exited (code %s); starting a new one", self._proc.returncode
                )
                self._retire(f"the local Kernel Gateway exited (code {self._proc.returncode})")
                self._cleanup_files()
                self._endpoint = None
            self._endpoint = await self._start_with_retries()
            self.generation += 1
            return self._endpoint

    def begin(self) -> None:
        """Spawn the gateway now (it takes ~0.5 s to answer); :meth:`start` waits for it."""
        if self._early is None and self._proc is None:
            t0 = time.monotonic()
            self._early = (self._launch(), t0)

    def _launch(self) -> GatewayEndpoint:
        """Write a fresh private config (new port and token) and spawn the gateway on it."""
        state_dir = ensure_private_dir(self._settings.state_dir)
        logs = ensure_private_dir(state_dir / "logs")
        self._log_path = logs / f"gateway-local-{os.getpid()}.log"
        port = _free_port()
        token = secrets.token_urlsafe(32)
        register_secret(token)
        self._secret_dir = Path(
            tempfile.mkdtemp(prefix="gw-", dir=ensure_private_dir(state_dir / "run"))
        )
        config_file = self._secret_dir / "kernel_gateway_config.json"
        write_private_file(config_file, json.dumps(gateway_app_config(port, token)).encode())
        self._spawn(config_file)
        return GatewayEndpoint(url=f"http://127.0.0.1:{port}", token=token)

    async def _start_with_retries(self) -> GatewayEndpoint:
        early, self._early = self._early, None
        t0 = early[1] if early else time.monotonic()
        last_error = ""
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if early is not None and self._proc is not None:
                endpoint = early[0]  # spawned by begin()
                early = None
            else:
                endpoint = self._launch()
            port = int(endpoint.url.rsplit(":", 1)[1])
            outcome = await self._wait_ready(endpoint, t0)
            if outcome == "ready":
                self._start_seconds = time.monotonic() - t0
                self._started_at = time.time()
                log.info(
                    "gateway ready at %s in %.2f s (log: %s)",
                    endpoint.url,
                    self._start_seconds,
                    self._log_path,
                )
                return endpoint
            last_error = outcome
            self._terminate()
            self._cleanup_files()
            if not any(marker in outcome for marker in _PORT_CLASH_MARKERS):
                break
            log.info(
                "port %d was taken (attempt %d/%d); retrying on another port",
                port,
                attempt,
                _PORT_ATTEMPTS,
            )
        raise GatewayStartError(
            f"the local Kernel Gateway did not start: {last_error.strip()} "
            f"(full log: {self._log_path}). Check that jupyter-kernel-gateway and ipykernel "
            f"are installed in {sys.executable}."
        )

    def _spawn(self, config_file: Path) -> None:
        assert self._log_path is not None
        cmd = [sys.executable, "-c", GATEWAY_MAIN, f"--config={config_file}"]
        with self._log_path.open("ab") as logf:
            # Own session: a Ctrl-C in the user's terminal reaches us, and we stop the gateway
            # in order (kernels first) instead of it dying half-way.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        log.debug("started gateway pid %d", self._proc.pid)

    async def _wait_ready(self, endpoint: GatewayEndpoint, t0: float) -> str:
        """Poll until an authenticated request succeeds; return "ready" or why it failed."""
        assert self._proc is not None
        headers = {"Authorization": f"token {endpoint.token}"}
        deadline = t0 + self._settings.gateway_start_timeout
        async with httpx.AsyncClient(base_url=endpoint.url, headers=headers, timeout=2.0) as http:
            while time.monotonic() < deadline:
                code = self._proc.poll()
                if code is not None:
                    return f"the gateway exited with code {code}: {self._log_tail()}"
                try:
                    resp = await http.get("/api/kernelspecs")
                except httpx.TransportError:
                    await asyncio.sleep(_POLL_INTERVAL)
                    continue
                if resp.status_code == 200:
                    return "ready"
                return f"the gateway answered HTTP {resp.status_code} to an authenticated request"
        return (
            f"no answer within {self._settings.gateway_start_timeout:.0f} s "
            f"(JLABGW_GATEWAY_START_TIMEOUT): {self._log_tail()}"
        )

    def _log_tail(self, lines: int = 5) -> str:
        if self._log_path is None:
            return ""
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())

    async def lost(self) -> str | None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            return f"the local Kernel Gateway exited (code {proc.returncode})"
        return None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close_now)

    def close_now(self) -> None:
        self._terminate()
        self._cleanup_files()
        self._endpoint = None

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        log.info("stopping gateway pid %d", proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_GRACE)
        except subprocess.TimeoutExpired:
            log.warning("gateway pid %d did not stop in %.0f s; killing it", proc.pid, _STOP_GRACE)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def _cleanup_files(self) -> None:
        secret_dir, self._secret_dir = self._secret_dir, None
        if secret_dir is None:
            return
        for child in secret_dir.iterdir():
            child.unlink(missing_ok=True)
        secret_dir.rmdir()

    # -- status ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def describe(self) -> BackendStatus:
        running = self._proc is not None and self._proc.poll() is None
        state = "running" if running else ("starting" if self._lock.locked() else "stopped")
        return BackendStatus(
            self.name,
            GatewayStatus(
                state=state,
                url=self._endpoint.url if self._endpoint else None,
                pid=self.pid if running else None,
                started_at=self._started_at,
                start_seconds=round(self._start_seconds, 3) if self._start_seconds else None,
                log=str(self._log_path) if self._log_path else None,
                # where the token is (0600), never the token itself
                token_file=str(self._secret_dir / "kernel_gateway_config.json")
                if running and self._secret_dir
                else None,
            ),
        )
