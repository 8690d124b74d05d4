"""Start Kernel Gateway, publish how to reach it, and stop it: in the batch job on the compute
node, and for the ``local`` backend on this machine (the one place a gateway is started).

Standard library only (plus the Kernel Gateway it starts): the rendered sbatch script embeds
this file and runs it with the job's Python, which need not have jlabgw installed; the local
backend runs this file as it is (``python -P .../job_supervisor.py``), never imports it.

What it does, in order:

1. ``umask 077``; a random token generated here, on the node: never in the script, argv or the
   environment the kernels inherit. It lives in a 0600 gateway config file in a 0700 work dir.
2. A free port on 127.0.0.1 and the gateway with ``port_retries=0``; on a clash it exits and
   we retry on another port (any other failure ends the attempts: it would only repeat).
3. Once an authenticated request succeeds, the connection file (host, port, token, job id) is
   written atomically with mode 0600.
4. SIGTERM (scancel, walltime) or SIGINT: remove the connection file, stop the gateway (which
   shuts its kernels down), remove the work dir.
5. Idle protection: the gateway culls kernels idle for ``--kernel-idle`` seconds; the job exits
   once it has had no kernel for ``--job-idle`` seconds.
6. A gateway that dies (OOM killer, a stray ``kill``) is restarted in the same job, at most
   ``--gateway-restarts`` times: the allocation may have waited hours in the queue. Its kernels
   go with it (ipykernel polls its parent; any other kernel still naming the dead gateway in
   ``JPY_PARENT_PID`` is killed here, so it cannot hold the node's memory or GPU). The new
   connection file says how the old gateway ended and how many restarts there were, which is
   how the client tells a replaced gateway from a dropped tunnel.

Usage: python job_supervisor.py --connection-file F --work-dir D [--kernel-idle S] [--job-idle S]
       [--gateway-restarts N] [--gateway-log F] [--connection-class MODULE.CLASS] [--keep-umask]

The local backend passes ``--job-idle 0 --kernel-idle 0 --gateway-restarts 0`` (its gateway
lives as long as the server), its own log file, the connection class by its jlabgw name, and
``--keep-umask`` (its kernels create files as the user's shell would).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

PORT_ATTEMPTS = 5
KERNEL_INFO_TIMEOUT = 15.0
READY_TIMEOUT = 120.0
POLL = 0.05
IDLE_CHECK_EVERY = 10.0

# How the gateway is started: ``python -c GATEWAY_MAIN --config=FILE`` does what
# ``python -m kernel_gateway`` does, 1.2-1.4 s sooner. jupyter_server's import reaches
# jsonschema's format checkers, which import rfc3987_syntax when installed (jupyter-events
# installs it) and it builds ~35 Lark parsers at import time, for "iri" formats that no Jupyter
# schema uses (python-jsonschema/jsonschema#1428). A None module entry makes jsonschema skip
# that one checker. No secret is in this command line.
GATEWAY_MAIN = (
    "import sys; sys.modules.setdefault('rfc3987_syntax', None); "
    "import kernel_gateway.gatewayapp as app; app.launch_instance()"
)

# ``-P`` (Python >= 3.11): the working directory does not go first on the gateway's sys.path,
# so a file such as ``kernel_gateway.py`` or ``json.py`` where the job or server was started
# cannot shadow what the gateway imports. (The work dir, with the NoDelay module, is on
# PYTHONPATH, which -P leaves alone.) Older Pythons have no -P and keep the old behaviour.
SAFE_PATH = ("-P",) if sys.version_info >= (3, 11) else ()

NODELAY_CLASS = "jlabgw_nodelay.NoDelayChannelsConnection"  # jlabgw/gateway_ext.py, shipped
# into the work dir as jlabgw_nodelay.py by the batch script
# What Kernel Gateway logs when its port is taken (port_retries=0 makes it exit then)
PORT_CLASH_MARKERS = ("no available port could be found", "Address already in use")


def log(message: str) -> None:
    print(f"jlabgw-job: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_private(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def gateway_config(
    port: int, token: str, kernel_idle: int = 0, connection_class: str = NODELAY_CLASS
) -> dict[str, Any]:
    """Traitlets config: loopback only, fixed port, TCP_NODELAY, no IOPub limit, culling."""
    config: dict[str, Any] = {
        "KernelGatewayApp": {
            "ip": "127.0.0.1",
            "port": port,
            "port_retries": 0,
            "auth_token": token,
            "kernel_websocket_connection_class": connection_class,
        },
        "ZMQChannelsWebsocketConnection": {"limit_rate": False},
        # GET /api/kernels is refused (403) by default; status, idle checks and reattach use it
        "JupyterWebsocketPersonality": {"list_kernels": True},
        # A WebSocket opens only once the kernel answers kernel_info, and that request is
        # shared per kernel: one sent to a kernel that was killed is never answered, and every
        # connection then waits the whole timeout (60 s by default, more than a client's
        # open timeout). A live kernel answers in milliseconds.
        "MappingKernelManager": {"kernel_info_timeout": KERNEL_INFO_TIMEOUT},
    }
    if kernel_idle > 0:
        config["MappingKernelManager"] |= {
            "cull_idle_timeout": kernel_idle,
            "cull_interval": max(10, min(kernel_idle // 4, 300)),
            "cull_connected": False,
        }
    return config


def api(port: int, token: str, path: str, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
        return json.loads(response.read() or b"null")


def log_since(path: Path, offset: int) -> str:
    """What was appended to ``path`` after ``offset`` bytes ("" if it cannot be read)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class Supervisor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.connection_file = Path(args.connection_file)
        self.work_dir = Path(args.work_dir)
        self.gateway_log = Path(args.gateway_log or self.work_dir / "gateway.log")
        self.connection_class: str = args.connection_class
        self.kernel_idle = args.kernel_idle
        self.job_idle = args.job_idle
        self.max_restarts: int = args.gateway_restarts
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.keep_umask: bool = args.keep_umask
        self.gateway_umask = -1  # -1: the gateway and its kernels get ours (077)

    def gateway_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.connection_class == NODELAY_CLASS:  # the copy shipped into the work dir
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.work_dir), env.get("PYTHONPATH", "")) if p
            )
        env.pop("KG_AUTH_TOKEN", None)
        return env

    def start_gateway(self) -> tuple[int, str]:
        env = self.gateway_env()
        last = ""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port, token = free_port(), secrets.token_urlsafe(32)
            config = self.work_dir / "kernel_gateway_config.json"
            settings = gateway_config(port, token, self.kernel_idle, self.connection_class)
            write_private(config, json.dumps(settings))
            log_start = file_size(self.gateway_log)
            log_file = self.gateway_log.open("ab")
            self.proc = subprocess.Popen(
                [sys.executable, *SAFE_PATH, "-c", GATEWAY_MAIN, f"--config={config}"],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                umask=self.gateway_umask,
            )
            log_file.close()
            deadline = time.monotonic() + READY_TIMEOUT
            while time.monotonic() < deadline and not self.stopping:
                if self.proc.poll() is not None:
                    break
                try:
                    api(port, token, "/api/kernelspecs", timeout=2)
                    return port, token
                except (OSError, urllib.error.URLError):
                    time.sleep(POLL)
            code = self.proc.poll()
            last = f"exit code {code}" if code is not None else "no answer"
            self.stop_gateway()
            if self.stopping:
                break
            output = log_since(self.gateway_log, log_start)
            if not any(marker in output for marker in PORT_CLASH_MARKERS):
                break  # not a port clash: another attempt would fail the same way
            log(f"gateway attempt {attempt}: port {port} was taken ({last}); retrying")
        raise SystemExit(
            f"jlabgw-job: Kernel Gateway did not start ({last}); see {self.gateway_log}"
        )

    def stop_gateway(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def on_signal(self, signum: int, frame: object) -> None:
        log(f"received {signal.Signals(signum).name}; shutting down")
        self.stopping = True

    def run(self) -> int:
        caller_umask = os.umask(0o077)
        if self.keep_umask:  # local kernels write the user's files as the user's shell would
            self.gateway_umask = caller_umask
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.connection_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        restarts, previous_exit = 0, ""
        try:
            while True:
                port, token = self.start_gateway()
                assert self.proc is not None
                gateway_pid = self.proc.pid
                info = {
                    "host": socket.gethostname(),
                    "port": port,
                    "token": token,
                    "job_id": os.environ.get("SLURM_JOB_ID", ""),
                    "pid": os.getpid(),
                    "gateway_pid": gateway_pid,
                    "started_at": time.time(),
                    "restarts": restarts,
                    "previous_exit": previous_exit,
                }
                write_private(self.connection_file, json.dumps(info))
                log(f"gateway ready on {info['host']}:127.0.0.1:{port}; connection file written")
                ended = self.watch(port, token)
                if ended is None:
                    return 0
                self.connection_file.unlink(missing_ok=True)
                killed = kill_orphaned_kernels(gateway_pid)
                if killed:
                    log(f"killed {killed} kernel process(es) left by the dead gateway")
                if restarts >= self.max_restarts:
                    log(f"the gateway {ended}; {restarts} restart(s) used up, ending the job")
                    return 1
                restarts += 1
                previous_exit = f"the gateway {ended} at {time.strftime('%H:%M:%S')}"
                log(f"{previous_exit}; starting a new one ({restarts}/{self.max_restarts})")
        finally:
            self.connection_file.unlink(missing_ok=True)
            self.stop_gateway()
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def watch(self, port: int, token: str) -> str | None:
        """Until the job should end (None) or the gateway dies (how it ended)."""
        idle_since = time.monotonic()
        next_check = 0.0
        while not self.stopping:
            code = self.proc.poll() if self.proc is not None else -1
            if code is not None:
                self.proc = None
                return describe_exit(code)
            now = time.monotonic()
            if self.job_idle and now >= next_check:
                next_check = now + min(IDLE_CHECK_EVERY, self.job_idle / 4)
                try:
                    kernels = api(port, token, "/api/kernels")
                except (OSError, urllib.error.URLError, ValueError):
                    kernels = None
                if kernels:
                    idle_since = now
                elif kernels is not None and now - idle_since >= self.job_idle:
                    log(f"no kernel for {self.job_idle} s; ending the job")
                    return None
            time.sleep(0.2)
        return None


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def kill_orphaned_kernels(gateway_pid: int) -> int:
    """SIGKILL this user's processes started by ``gateway_pid`` (``JPY_PARENT_PID``), which a
    dead gateway can no longer stop. Returns how many there were."""
    marker = f"JPY_PARENT_PID={gateway_pid}".encode()
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
        except (OSError, ValueError):  # gone meanwhile, or not ours to read
            continue
    return killed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="jlabgw's Kernel Gateway supervisor (in-job)")
    parser.add_argument("--connection-file", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--kernel-idle", type=int, default=3600)
    parser.add_argument("--job-idle", type=int, default=1800)
    parser.add_argument("--gateway-restarts", type=int, default=3)
    parser.add_argument("--gateway-log", help="default: gateway.log in the work dir")
    parser.add_argument("--connection-class", default=NODELAY_CLASS)
    parser.add_argument(
        "--keep-umask", action="store_true", help="the gateway and kernels keep the caller's umask"
    )
    return Supervisor(parser.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
