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
   Kernels talk to the gateway over Unix sockets in a 0700 directory (``KernelManager.transport
   = ipc``): nothing of a kernel listens on TCP, where any user of a shared node could
   subscribe to its output (ZMQ has no authentication; the HMAC key only signs messages).
3. No token leaves this process before the socket listening on 127.0.0.1:PORT is shown to be
   the gateway's own (its inode in /proc/net/tcp is among the gateway pid's fds): another user
   who holds the port gets nothing, and we retry on another port. Once an authenticated
   request succeeds, the connection file (host, port, token, job id) is written atomically
   with mode 0600.
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
       [--kernel-transport ipc|tcp]   (default: $JLABGW_KERNEL_TRANSPORT, else ipc; tcp only for
       a kernel that cannot do ipc, and never on a node shared with other users)

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
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

PORT_ATTEMPTS = 5
CERT_DAYS = 3650  # the client pins the certificate itself and ignores its dates (clock skew)
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

# Kernel sockets: jupyter_client names them ``<runtime dir>/kernel-<kernel id>-ipc-<n>``, one
# prefix per kernel (a prefix shared by all kernels would race: libzmq unlinks an existing path
# when it binds, so two kernels starting at once could take each other's sockets). The runtime
# dir is the gateway's JUPYTER_RUNTIME_DIR, a 0700 dir of ours, node-local.
SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107  # sun_path: 104 / 108 with NUL
KERNEL_SOCKET_NAME = "kernel-" + "0" * 36 + "-ipc-99"  # the longest name a kernel's socket gets


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


def make_certificate(work_dir: Path) -> tuple[Path, Path] | None:
    """A fresh self-signed certificate for 127.0.0.1 and its key (0600), made here in the
    private work dir with openssl: the client pins it (the connection file carries it), so an
    impostor on the gateway's port fails the TLS handshake before the token is sent. None
    (plain HTTP, logged) where openssl is missing or fails, or JLABGW_GATEWAY_TLS=0."""
    if os.environ.get("JLABGW_GATEWAY_TLS", "1").strip().lower() in ("0", "false", "no", "off"):
        log("JLABGW_GATEWAY_TLS=0: the gateway speaks plain HTTP (its port can be impersonated)")
        return None
    openssl = shutil.which("openssl")
    if openssl is None:
        log("no openssl on this node: the gateway speaks plain HTTP (its port can be impersonated)")
        return None
    key, cert = work_dir / "gateway-key.pem", work_dir / "gateway-cert.pem"
    argv = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    argv += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(CERT_DAYS)]
    argv += ["-subj", "/CN=jlabgw gateway", "-addext", "subjectAltName=IP:127.0.0.1"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"openssl failed ({exc}): the gateway speaks plain HTTP")
        return None
    if done.returncode != 0 or not cert.exists():
        why = done.stderr.decode(errors="replace").strip()[-300:]
        log(f"openssl could not make a certificate ({why}): the gateway speaks plain HTTP")
        return None
    os.chmod(key, 0o600)
    return cert, key


def tls_context(cert: Path | None) -> ssl.SSLContext | None:
    """What trusts exactly our gateway's certificate, whatever its dates (None: plain HTTP)."""
    if cert is None:
        return None
    context = ssl.create_default_context(cafile=str(cert))
    context.verify_flags |= 0x200000  # X509_V_FLAG_NO_CHECK_TIME: the pin is the identity
    return context


def gateway_config(
    port: int,
    token: str,
    kernel_idle: int = 0,
    connection_class: str = NODELAY_CLASS,
    kernel_transport: str = "ipc",
    tls: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """Traitlets config: loopback only, fixed port, TCP_NODELAY, no IOPub limit, culling, and
    kernels on Unix sockets (their directory is the gateway's JUPYTER_RUNTIME_DIR)."""
    config: dict[str, Any] = {
        # every KernelManager the MappingKernelManager makes (one per kernel) reads this; its
        # ``ip`` then defaults to the connection file's path (runtime dir, kernel id) + "-ipc"
        "KernelManager": {"transport": kernel_transport},
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
    if tls is not None:
        config["KernelGatewayApp"] |= {"certfile": str(tls[0]), "keyfile": str(tls[1])}
    if kernel_idle > 0:
        config["MappingKernelManager"] |= {
            "cull_idle_timeout": kernel_idle,
            "cull_interval": max(10, min(kernel_idle // 4, 300)),
            "cull_connected": False,
        }
    return config


def private_dir(path: Path) -> Path:
    """``path`` if it is a real directory of ours that nobody else may enter; else exit."""
    info = path.lstat()
    if not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid():
        raise SystemExit(f"jlabgw-job: {path} is not a directory of this user; refusing it")
    if info.st_mode & 0o077:
        raise SystemExit(f"jlabgw-job: {path} has mode {info.st_mode & 0o777:o}, not 700")
    return path


def kernel_socket_dir(work_dir: Path) -> tuple[Path, bool]:
    """The 0700 dir for the kernels' Unix sockets and connection files: ``k`` in the work dir,
    or, if a socket there would have too long a path, a new private dir in the temp dir, /tmp
    or /dev/shm. Returns (dir, whether it is outside the work dir). Exits if none fits."""
    candidate = work_dir / "k"
    if len(os.fsencode(candidate / KERNEL_SOCKET_NAME)) <= SOCKET_PATH_MAX:
        candidate.mkdir(mode=0o700, exist_ok=True)
        return private_dir(candidate), False
    for base in dict.fromkeys((tempfile.gettempdir(), "/tmp", "/dev/shm")):  # noqa: S108
        room = SOCKET_PATH_MAX - len(os.fsencode(base)) - len("/jlabgw-k-12345678/")
        if room >= len(KERNEL_SOCKET_NAME) and os.path.isdir(base):
            path = Path(tempfile.mkdtemp(prefix="jlabgw-k-", dir=base))  # 0700
            log(f"{candidate} is too long for Unix socket paths; kernel sockets go to {path}")
            candidate.symlink_to(path)  # where it is, for a clean-up after a SIGKILL
            return private_dir(path), True
    raise SystemExit(
        f"jlabgw-job: kernel socket paths in {candidate} would be longer than the "
        f"{SOCKET_PATH_MAX} bytes a Unix socket path may have, and no shorter temp dir was "
        "found: point TMPDIR to a shorter directory"
    )


def proc_net_address(family: socket.AddressFamily, address: str) -> str:
    """``address`` as /proc/net/tcp(6) prints it: each 32-bit word in host byte order, hex."""
    packed = socket.inet_pton(family, address)
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words)


# A connection to 127.0.0.1:PORT reaches a listener on 127.0.0.1 or 0.0.0.0, or on :: or
# ::ffff:127.0.0.1 (dual stack)
_LOOPBACK4 = {proc_net_address(socket.AF_INET, a) for a in ("127.0.0.1", "0.0.0.0")}  # noqa: S104
_LOOPBACK6 = {proc_net_address(socket.AF_INET6, a) for a in ("::", "::ffff:127.0.0.1")}


def listeners(port: int) -> dict[int, int]:
    """Socket inode -> uid of every TCP listener (state 0A) that a connection to
    127.0.0.1:``port`` could reach, from /proc/net/tcp and tcp6 (this network namespace)."""
    found: dict[int, int] = {}
    for table, addresses in (("/proc/net/tcp", _LOOPBACK4), ("/proc/net/tcp6", _LOOPBACK6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:  # no IPv6 here
            continue
        for line in lines:
            fields = line.split()  # sl local remote st tx:rx tr:when retrnsmt uid timeout inode
            if len(fields) < 10 or fields[3] != "0A":
                continue
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and address.upper() in addresses:
                found[int(fields[9])] = int(fields[7])
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets among ``pid``'s open files (empty if it cannot be read)."""
    inodes = set()
    try:
        entries = list(os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return set()
    for entry in entries:
        try:
            target = os.readlink(entry.path)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def strangers(port: int, pid: int) -> dict[int, int] | None:
    """Who else listens where 127.0.0.1:``port`` leads: inode -> uid of each listener that is
    not process ``pid``'s ({} when all are), or None while nobody listens there yet."""
    held = listeners(port)
    if not held:
        return None
    own = socket_inodes(pid)
    return {inode: uid for inode, uid in held.items() if inode not in own}


def api(
    port: int, token: str, path: str, timeout: float = 5.0, tls: ssl.SSLContext | None = None
) -> Any:
    """GET ``path`` from the gateway; with ``tls``, over HTTPS to the pinned certificate only."""
    scheme = "https" if tls is not None else "http"
    request = urllib.request.Request(  # noqa: S310 - http(s) to loopback only
        f"{scheme}://127.0.0.1:{port}{path}", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=timeout, context=tls) as response:  # noqa: S310
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
        self.kernel_transport: str = args.kernel_transport
        self.socket_dir: Path | None = None  # the kernels' (ipc); made by run()
        self.socket_dir_apart = False  # not in the work dir: removed on its own
        # where there is no /proc (a macOS laptop's local backend) the owner cannot be checked
        self.check_owner = Path("/proc/net/tcp").exists()
        self.tls: tuple[Path, Path] | None = None  # certificate and key; made by run()
        self.tls_context: ssl.SSLContext | None = None

    def gateway_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.connection_class == NODELAY_CLASS:  # the copy shipped into the work dir
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.work_dir), env.get("PYTHONPATH", "")) if p
            )
        env.pop("KG_AUTH_TOKEN", None)
        if self.socket_dir is not None:  # kernel connection files and ipc sockets go there
            env["JUPYTER_RUNTIME_DIR"] = str(self.socket_dir)
        return env

    def start_gateway(self) -> tuple[int, str]:
        env = self.gateway_env()
        last = ""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port, token = free_port(), secrets.token_urlsafe(32)
            config = self.work_dir / "kernel_gateway_config.json"
            settings = gateway_config(
                port,
                token,
                self.kernel_idle,
                self.connection_class,
                self.kernel_transport,
                self.tls,
            )
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
            impostor = ""
            while time.monotonic() < deadline and not self.stopping:
                if self.proc.poll() is not None:
                    break
                impostor = self.impostor(port)
                if impostor:  # the token must not go there
                    break
                try:
                    if self.owns(port):
                        api(port, token, "/api/kernelspecs", timeout=2, tls=self.tls_context)
                        return port, token
                except (OSError, urllib.error.URLError):
                    pass
                time.sleep(POLL)
            code = self.proc.poll()
            last = f"exit code {code}" if code is not None else impostor or "no answer"
            self.stop_gateway()
            if self.stopping:
                break
            output = log_since(self.gateway_log, log_start)
            if not impostor and not any(marker in output for marker in PORT_CLASH_MARKERS):
                break  # not a port clash: another attempt would fail the same way
            log(f"gateway attempt {attempt}: port {port} was taken ({last}); retrying")
        raise SystemExit(
            f"jlabgw-job: Kernel Gateway did not start ({last}); see {self.gateway_log}"
        )

    def impostor(self, port: int) -> str:
        """Why ``port`` is someone else's ("" while it is not): a listener there that is not
        our gateway process's socket."""
        pid = self.proc.pid if self.proc is not None else -1
        others = (strangers(port, pid) or {}) if self.check_owner else {}
        if not others:
            return ""
        who = ", ".join(f"uid {uid} (socket inode {inode})" for inode, uid in others.items())
        log(
            f"127.0.0.1:{port} is held by another process, {who}, not by the gateway "
            f"(pid {pid}): an impostor or a port clash; its token was not sent there"
        )
        return f"held by {who}"

    def owns(self, port: int) -> bool:
        """The only listener that 127.0.0.1:``port`` reaches is the gateway process's own."""
        if not self.check_owner:
            return True
        return self.proc is not None and strangers(port, self.proc.pid) == {}

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
        # SIGUSR1/SIGUSR2: Grid Engine's warning before it suspends or kills a job (qsub
        # -notify, qdel): clean up as for SIGTERM while there is time
        for signum in (
            signal.SIGTERM,
            signal.SIGINT,
            signal.SIGHUP,
            signal.SIGUSR1,
            signal.SIGUSR2,
        ):
            signal.signal(signum, self.on_signal)
        self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.connection_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.check_owner:
            log("no /proc/net/tcp here: the gateway's port cannot be checked for its owner")
        restarts, previous_exit = 0, ""
        try:
            if self.kernel_transport == "ipc":  # (a refusal here still cleans up, below)
                self.socket_dir, self.socket_dir_apart = kernel_socket_dir(
                    private_dir(self.work_dir)
                )
            else:
                log(
                    "kernels listen on TCP (--kernel-transport tcp): other users of this node "
                    "can subscribe to their output"
                )
            while True:
                # a fresh certificate per gateway: a replaced gateway is a new identity
                self.tls = make_certificate(private_dir(self.work_dir))
                self.tls_context = tls_context(self.tls[0] if self.tls else None)
                port, token = self.start_gateway()
                assert self.proc is not None
                gateway_pid = self.proc.pid
                info = {
                    "host": socket.gethostname(),
                    "port": port,
                    "token": token,
                    "job_id": os.environ.get("SLURM_JOB_ID") or os.environ.get("JOB_ID", ""),
                    "pid": os.getpid(),
                    "gateway_pid": gateway_pid,
                    "started_at": time.time(),
                    "restarts": restarts,
                    "previous_exit": previous_exit,
                    # the client pins it: only our gateway can complete the TLS handshake
                    "cert": self.tls[0].read_text() if self.tls else "",
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
            if self.socket_dir is not None and self.socket_dir_apart:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
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
                try:  # (a gateway that died meanwhile is noticed above, next round)
                    kernels = (
                        api(port, token, "/api/kernels", tls=self.tls_context)
                        if self.owns(port)
                        else None
                    )
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
    parser.add_argument(
        "--kernel-transport",
        choices=("ipc", "tcp"),
        default=os.environ.get("JLABGW_KERNEL_TRANSPORT") or ("tcp" if os.name == "nt" else "ipc"),
        help="how kernels talk to the gateway (tcp: any user of the node can listen in)",
    )
    args = parser.parse_args(argv)
    if args.kernel_transport not in ("ipc", "tcp"):  # (a default is not checked by argparse)
        parser.error(f"JLABGW_KERNEL_TRANSPORT={args.kernel_transport!r}: use ipc or tcp")
    return Supervisor(args).run()


if __name__ == "__main__":
    sys.exit(main())
