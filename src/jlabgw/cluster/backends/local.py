"""The ``local`` backend: Jupyter Kernel Gateway as a subprocess of this machine.

The gateway is started, watched and stopped by the same supervisor a batch job runs
(``jlabgw/node/job_supervisor.py``, run as a file: the cluster layer never imports node code).
So the port pick and its clash retry, the gateway's settings and its start are written once:
the gateway listens on 127.0.0.1 only with ``port_retries=0``, and its auth token lives only in
a 0600 config file in a 0700 directory (not on a command line, not in the kernels'
environment). The supervisor writes a 0600 connection file once the gateway answers an
authenticated request; that is how this backend learns the port, token and gateway pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import ClassVar

from jlabgw.cluster.backends.base import Backend
from jlabgw.cluster.backends.status import BackendStatus, GatewayStatus
from jlabgw.cluster.connection_file import GatewayInfo
from jlabgw.config import Settings
from jlabgw.errors import GatewayStartError
from jlabgw.fsutil import ensure_private_dir
from jlabgw.jupyter.endpoint import GatewayEndpoint
from jlabgw.log import register_secret
from jlabgw.processes import pid_alive

__all__ = ["LocalBackend", "supervisor_script"]

log = logging.getLogger(__name__)

_POLL_INTERVAL = 0.02  # the connection file appears ~1.6 s after the supervisor starts here
_STOP_GRACE = 10.0  # the gateway shuts kernels down on SIGTERM; that can take a few seconds
NODELAY_CLASS_PATH = "jlabgw.node.gateway_ext.NoDelayChannelsConnection"
_CONFIG_FILE = "kernel_gateway_config.json"  # the supervisor's name for it, in the work dir
_CONNECTION_FILE = "connection.json"
_CERT_FILE = "gateway-cert.pem"  # the supervisor's name for it, in the work dir


def supervisor_script() -> Path:
    """The supervisor's source file, run with this Python (which has the gateway installed)."""
    return Path(str(resources.files("jlabgw.node").joinpath("job_supervisor.py")))


def _remove_socket_dir(work_dir: Path) -> None:
    """The kernels' Unix socket dir, if the supervisor had to make it outside its work dir
    (too long a path there; the link ``k`` says where) and was killed before removing it."""
    link = work_dir / "k"
    with contextlib.suppress(OSError):
        target = Path(os.readlink(link))
        if target.name.startswith("jlabgw-k-") and target.is_absolute():
            shutil.rmtree(target, ignore_errors=True)


class LocalBackend(Backend):
    """Starts one gateway on first use and stops it (and its kernels) on close."""

    name: ClassVar[str] = "local"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings
        self._lock = asyncio.Lock()
        self._proc: subprocess.Popen[bytes] | None = None  # the supervisor
        self._gateway_pid: int | None = None
        self._endpoint: GatewayEndpoint | None = None
        self._work_dir: Path | None = None
        self._log_path: Path | None = None
        self._started_at: float | None = None
        self._start_seconds: float | None = None
        self._early: float | None = None  # when begin() spawned the supervisor (monotonic)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> GatewayEndpoint:
        async with self._lock:
            if self._endpoint is not None:
                why = self._exited()
                if why is None:
                    return self._endpoint
                log.warning("%s; starting a new one", why)
                self._retire(why)
                self._stop()
            self._endpoint = await self._start()
            self.generation += 1
            return self._endpoint

    def begin(self) -> None:
        """Spawn the gateway now (it takes ~1.5 s to answer); :meth:`start` waits for it."""
        if self._early is None and self._proc is None:
            t0 = time.monotonic()
            self._launch()
            self._early = t0

    def _launch(self) -> None:
        """Spawn the supervisor in a fresh private work dir (it picks the port and token)."""
        state_dir = ensure_private_dir(self._settings.state_dir)
        logs = ensure_private_dir(state_dir / "logs")
        self._log_path = logs / f"gateway-local-{os.getpid()}.log"
        self._work_dir = Path(
            tempfile.mkdtemp(prefix="gw-", dir=ensure_private_dir(state_dir / "run"))
        )
        cmd = [
            sys.executable,
            "-P",  # nothing beside the script shadows the standard library
            str(supervisor_script()),
            f"--connection-file={self._work_dir / _CONNECTION_FILE}",
            f"--work-dir={self._work_dir}",
            f"--gateway-log={self._log_path}",
            f"--connection-class={NODELAY_CLASS_PATH}",
            "--kernel-idle=0",
            "--job-idle=0",
            "--gateway-restarts=0",  # a gateway that dies is replaced by the next start()
            "--keep-umask",
        ]
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
        log.debug("started the gateway supervisor, pid %d", self._proc.pid)

    async def _start(self) -> GatewayEndpoint:
        t0, self._early = self._early, None
        if t0 is None or self._proc is None:
            self._stop()  # what a start that was cancelled half-way left behind
            t0 = time.monotonic()
            self._launch()
        info = await self._wait_ready(t0)
        if isinstance(info, str):
            self._stop()
            raise GatewayStartError(
                f"the local Kernel Gateway did not start: {info.strip()} "
                f"(full log: {self._log_path}). Check that jupyter-kernel-gateway and ipykernel "
                f"are installed in {sys.executable}."
            )
        register_secret(info.token)
        endpoint = GatewayEndpoint(
            url=f"{info.scheme}://127.0.0.1:{info.port}", token=info.token, cert=info.cert or None
        )
        self._gateway_pid = info.gateway_pid
        self._start_seconds = time.monotonic() - t0
        self._started_at = time.time()
        log.info(
            "gateway ready at %s in %.2f s (log: %s)",
            endpoint.url,
            self._start_seconds,
            self._log_path,
        )
        return endpoint

    async def _wait_ready(self, t0: float) -> GatewayInfo | str:
        """The connection file, once the supervisor has written it; else why there is none."""
        assert self._proc is not None
        assert self._work_dir is not None
        path = self._work_dir / _CONNECTION_FILE
        deadline = t0 + self._settings.gateway_start_timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                return f"its supervisor exited with code {code}: {self._log_tail()}"
            try:
                return GatewayInfo.parse(path.read_bytes())  # written atomically
            except FileNotFoundError:
                await asyncio.sleep(_POLL_INTERVAL)
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

    def _exited(self) -> str | None:
        """Why the gateway that is up is gone (it died, or its supervisor did), else None."""
        proc, pid = self._proc, self._gateway_pid
        if proc is None:
            return None
        if proc.poll() is not None or (pid is not None and not pid_alive(pid)):
            # the supervisor notices the gateway's death within 0.2 s; the pid tells at once
            return f"the local Kernel Gateway exited (pid {pid}; log: {self._log_path})"
        return None

    async def lost(self) -> str | None:
        return self._exited()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close_now)

    def close_now(self) -> None:
        self._stop()

    def _stop(self) -> None:
        """Stop the supervisor (it stops the gateway, which stops its kernels) and clean up."""
        proc, self._proc = self._proc, None
        self._endpoint = None
        self._gateway_pid = None
        if proc is not None and proc.poll() is None:
            log.info("stopping the gateway (supervisor pid %d)", proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                log.warning("gateway did not stop in %.0f s; killing it", _STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        work_dir, self._work_dir = self._work_dir, None
        if work_dir is not None:  # the supervisor removes it; not if it was killed
            _remove_socket_dir(work_dir)
            shutil.rmtree(work_dir, ignore_errors=True)

    # -- status ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The gateway's pid (what `jlabgw status` shows and `jlabgw stop` ends if orphaned)."""
        return self._gateway_pid

    def describe(self) -> BackendStatus:
        running = self._endpoint is not None and self._exited() is None
        starting = self._lock.locked() or self._early is not None
        return BackendStatus(
            self.name,
            GatewayStatus(
                state="running" if running else ("starting" if starting else "stopped"),
                url=self._endpoint.url if self._endpoint else None,
                pid=self.pid if running else None,
                started_at=self._started_at,
                start_seconds=round(self._start_seconds, 3) if self._start_seconds else None,
                log=str(self._log_path) if self._log_path else None,
                # where the token is (0600), never the token itself
                token_file=str(self._work_dir / _CONFIG_FILE)
                if running and self._work_dir
                else None,
                cert_file=str(self._work_dir / _CERT_FILE)
                if running and self._work_dir and self._endpoint and self._endpoint.cert
                else None,
            ),
        )
