"""Issue 13, shared nodes: another user on the compute node sees nothing, reaches nothing and
fakes nothing of a jlabgw session.

* On the namespace topology (tests/cluster/topology.sh): a session runs in a job on a compute
  node, its cells print a canary; a second account (``jlabgw-other``) inside that node's
  namespaces connects ZMQ SUB sockets to every TCP port the job user listens on, asks each for
  HTTP, lists the kernels' socket directory and connects to their Unix sockets. It must get
  nothing. The same probe against a job whose kernels were forced onto TCP receives the canary:
  the control that shows the probe would see a leak.
* The gateway's port held by another account before the gateway binds it: the supervisor
  never sends the token there and moves to another port.
* Culling still works with kernels on Unix sockets, and their sockets go with them.

Every wait is bounded; every address is loopback or the topology's own.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import ssl
import stat
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from jlabgw.node import job_supervisor as sup
from tests import topology as topo
from tests.helpers import PYTHON, free_port, gateway_base, wait_until
from tests.mcp_client import call, new_session, serve, text_of

if os.geteuid() != 0:
    pytest.skip(
        "runs processes as a second account (and the topology needs root)",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.integration]

CONNECTION_CLASS = "jlabgw.node.gateway_ext.NoDelayChannelsConnection"
# The transport of the main test's job: ipc (the default); JLABGW_TEST_SHARED_NODE_TRANSPORT=tcp
# runs the same test on TCP kernels, where it must fail (the evidence of issue 13).
TRANSPORT = os.environ.get("JLABGW_TEST_SHARED_NODE_TRANSPORT", "ipc")
LISTEN_SECONDS = 8.0  # how long the other account listens while the cells print


def other_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(topo.OTHER_USER)
    except KeyError:
        pytest.skip(f"user {topo.OTHER_USER} does not exist (run tests/cluster/setup-system.sh)")


# -- the gateway's port, taken by another account ----------------------------------------------

IMPOSTOR = r"""
import select, socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:  # bounded; the test ends us sooner
    if not select.select([s], [], [], 0.2)[0]:
        continue
    conn, _ = s.accept()
    conn.settimeout(2)
    try:
        data = conn.recv(65536)
    except OSError:
        data = b""
    print("GOT", data.hex(), flush=True)
    try:  # the answer a fake gateway gives: ready
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    except OSError:
        pass
    conn.close()
"""


def as_other(argv: list[str]) -> list[str]:
    """``argv`` run as the other account (setpriv execs it: its pid is the process's own)."""
    user = other_user()
    return [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--init-groups",
        "--",
        *argv,
    ]


def supervisor_args(work: Path, **extra: Any) -> argparse.Namespace:
    values: dict[str, Any] = {
        "connection_file": str(work / "connection.json"),
        "work_dir": str(work / "w"),
        "gateway_log": None,
        "connection_class": CONNECTION_CLASS,
        "kernel_idle": 0,
        "job_idle": 0,
        "gateway_restarts": 0,
        "keep_umask": False,
        "kernel_transport": "ipc",
    }
    return argparse.Namespace(**(values | extra))


def test_the_token_never_reaches_another_account_holding_the_gateway_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    uid = other_user().pw_uid
    impostor = subprocess.Popen(
        as_other(["/usr/bin/python3", "-c", IMPOSTOR, "60"]),
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    supervisor = sup.Supervisor(supervisor_args(tmp_path))
    port, token = 0, ""
    try:
        assert impostor.stdout is not None
        taken = int(impostor.stdout.readline())
        assert sup.listeners(taken), "the impostor does not listen"
        picks = iter([taken])  # the supervisor's first pick is the impostor's port
        monkeypatch.setattr(sup, "free_port", lambda: next(picks, 0) or free_port())
        Path(supervisor.work_dir).mkdir(mode=0o700)
        port, token = supervisor.start_gateway()
        assert supervisor.proc is not None
        gateway_pid = supervisor.proc.pid
        answer = sup.api(port, token, "/api/kernelspecs")  # the real gateway
    finally:
        supervisor.stop_gateway()
        impostor.send_signal(signal.SIGTERM)
        heard = impostor.communicate(timeout=10)[0]
    got = [bytes.fromhex(line.split()[1]) for line in heard.splitlines() if line.startswith("GOT")]
    assert not got, f"the impostor on port {taken} was sent: {got}"
    assert port != taken
    assert sup.strangers(port, gateway_pid) is None  # (stopped now)
    assert answer
    log = capsys.readouterr().err
    assert f"127.0.0.1:{taken} is held by another process, uid {uid}" in log, log
    assert "its token was not sent there" in log
    assert f"port {taken} was taken" in log


# -- culling with kernels on Unix sockets -------------------------------------------------------


def rest(info: dict[str, Any], path: str, method: str = "GET", body: bytes | None = None) -> Any:
    base, verify = gateway_base(info)
    request = urllib.request.Request(
        f"{base}{path}",
        data=body,
        method=method,
        headers={"Authorization": f"token {info['token']}", "Content-Type": "application/json"},
    )
    context = verify if isinstance(verify, ssl.SSLContext) else None
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return json.loads(response.read() or b"null")


@contextlib.contextmanager
def running_supervisor(*options: str) -> Iterator[tuple[dict[str, Any], Path]]:
    """The supervisor run as a file, as the local backend runs it, in a short private dir:
    (its connection info, its work dir)."""
    root = Path(tempfile.mkdtemp(prefix="jlabgw-sn-"))
    work = root / "w"
    connection = root / "connection.json"
    with (root / "supervisor.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                PYTHON,
                "-P",
                str(Path(sup.__file__)),
                f"--connection-file={connection}",
                f"--work-dir={work}",
                f"--connection-class={CONNECTION_CLASS}",
                "--job-idle=0",
                "--gateway-restarts=0",
                *options,
            ],
            stdin=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    try:
        assert wait_until(connection.exists, timeout=60), (root / "supervisor.log").read_text()
        yield json.loads(connection.read_text()), work
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def test_idle_kernels_on_unix_sockets_are_culled_and_their_sockets_go() -> None:
    with running_supervisor("--kernel-idle=2") as (info, work):
        socket_dir = work / "k"
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
        # three at once: each kernel has its own socket paths (a shared prefix would race)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            started = list(
                pool.map(
                    lambda _: rest(info, "/api/kernels", "POST", b'{"name": "python3"}'), range(3)
                )
            )
        ids = {kernel["id"] for kernel in started}
        assert len(ids) == 3

        def bound() -> list[Path]:
            return [p for p in socket_dir.iterdir() if p.name.split("-ipc-")[0][7:] in ids]

        assert wait_until(lambda: len(bound()) == 15, timeout=60), list(socket_dir.iterdir())
        assert all(stat.S_ISSOCK(p.lstat().st_mode) for p in bound())
        # culled: idle for 2 s, checked every 10 s (the gateway's floor for cull_interval)
        assert wait_until(lambda: rest(info, "/api/kernels") == [], timeout=40, interval=0.5)
        assert wait_until(lambda: not bound(), timeout=10), bound()


# -- another account on the node: the topology ----------------------------------------------------

# Run as the other account inside the node, with the job venv's Python (pyzmq via ipykernel).
# argv: the job user's uid, seconds to listen, the canary, JSON list of Unix paths to try.
PROBE = r"""
import json, os, select, socket, ssl, struct, sys, time
import zmq

job_uid, seconds, canary = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3].encode()
paths = json.loads(sys.argv[4])


def address(hex_address):
    raw = bytes.fromhex(hex_address)
    words = b"".join(  # /proc prints each 32-bit word in host order
        struct.pack("=I", int.from_bytes(raw[i : i + 4], "big")) for i in range(0, len(raw), 4)
    )
    family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
    text = socket.inet_ntop(family, words)
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(text, text)


listeners = set()  # (host, port) of every TCP socket of the job user in LISTEN
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        lines = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        f = line.split()
        if f[3] == "0A" and int(f[7]) == job_uid:
            hex_address, hex_port = f[1].split(":")
            listeners.add((address(hex_address), int(hex_port, 16)))


def http(host, port, tls=False):
    # A GET without a token: the status, or what else came back. The gateway speaks TLS
    # (issue 13): a plain request is reset, so what is not HTTP is asked again over TLS, as
    # another user can (any certificate accepted: they only lack the token).
    try:
        with socket.create_connection((host, port), timeout=3) as raw:
            s = raw
            if tls:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                s = context.wrap_socket(raw)
            s.settimeout(3)
            s.sendall(b"GET /api/kernels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = s.recv(200)
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        if not tls:
            return http(host, port, tls=True)
        return f"error {exc.__class__.__name__}"
    if data.startswith(b"HTTP/"):
        return int(data.split()[1])
    if not tls and not data:
        return http(host, port, tls=True)
    return "not HTTP " + data[:12].hex() if data else "closed"


def unix(path):
    try:
        if os.path.isdir(path) or path.endswith("/"):
            return "listed " + ",".join(sorted(os.listdir(path)))
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(3)
            s.connect(path)
            return "connected"
    except PermissionError:
        return "denied"
    except OSError as exc:
        return f"error {exc.__class__.__name__}: {exc.strerror}"


report = {
    "tcp": {f"{h}:{p}": {"http": http(h, p)} for h, p in sorted(listeners)},
    "unix": {p: unix(p) for p in paths},
}
ctx = zmq.Context()
subs = {}
for h, p in sorted(listeners):
    host = f"[{h}]" if ":" in h else h
    subs[f"tcp://{host}:{p}"] = None
for p in paths:
    subs[f"ipc://{p}"] = None
poller = zmq.Poller()
for endpoint in subs:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.IPV6, 1)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    subs[endpoint] = sub
    poller.register(sub, zmq.POLLIN)
received = {endpoint: [] for endpoint in subs}
print("READY", flush=True)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:  # bounded
    for sub, _ in poller.poll(100):
        frames = sub.recv_multipart(zmq.NOBLOCK)
        endpoint = next(e for e, s in subs.items() if s is sub)
        received[endpoint].append(b"|".join(frames[-2:])[:600].decode(errors="replace"))
report["zmq"] = {
    e: {
        "messages": len(m),
        "canary": sum(canary in x.encode() for x in m),
        "sample": [x for x in m if canary.decode() in x][::9][:3] or m[:3],  # canary ones
    }
    for e, m in received.items()
}
print(json.dumps(report), flush=True)
"""

KERNEL_INFO = """
import json, os, socket
from ipykernel.connect import get_connection_file
_f = get_connection_file()
_i = json.load(open(_f))
print(json.dumps({"node": socket.gethostname(), "job": os.environ.get("SLURM_JOB_ID"),
                  "file": _f, "transport": _i["transport"], "ip": _i["ip"],
                  "ports": [_i[k] for k in ("shell_port", "iopub_port", "stdin_port",
                                            "control_port", "hb_port")]}))
"""


@pytest.fixture(scope="module")
def topology() -> Iterator[topo.Topology]:
    """``topology.sh up`` once for the module, ``down`` at the end whatever happened."""
    reason = topo.unavailable_reason()
    if reason:
        pytest.skip(reason)
    other_user()
    try:
        yield topo.up()
    finally:
        result = topo.down()
    if result.returncode != 0:
        pytest.fail(f"topology.sh down failed: {result.stderr[-2000:]}")


@contextlib.asynccontextmanager
async def session_in_a_job(
    cluster: topo.Topology, root: Path, transport: str
) -> AsyncIterator[tuple[Any, str]]:
    """A jlabgw server over stdio on the topology and one session in a job of its own whose
    kernels use ``transport``: (client, session id)."""
    setup = f"source {topo.JOB_VENV}/bin/activate\n"
    if transport != "ipc":  # ipc is the default: nothing to say
        setup += f"export JLABGW_KERNEL_TRANSPORT={transport}\n"
    env = {
        "JLABGW_CONFIG": str(cluster.config),
        "JLABGW_EXEC_WAIT": "20",
        "JLABGW_WALLTIME_WARN": "0",
        "JLABGW_JOB_NAME": f"jlabgw-shared-{transport}",
        "JLABGW_REMOTE_SETUP": setup,
    }
    try:
        with (root / "server.log").open("w") as log:
            async with serve(root, log, **env) as client:
                yield client, await new_session(client, f"shared node, {transport} kernels")
    finally:
        await anyio.to_thread.run_sync(cluster.cancel_user_jobs)


async def sniff(cluster: topo.Topology, root: Path, transport: str) -> dict[str, Any]:
    """Run the other account's probe on the session's node while its cells print a canary;
    the probe's report, with the kernel's own view (``kernel``) and the canary."""
    canary = f"CANARY-{uuid.uuid4().hex}"
    cell = (
        "import time\n"
        "for _i in range(15):\n"
        f"    print('{canary}', _i, flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    async with session_in_a_job(cluster, root, transport) as (client, sid):
        out = await call(client, "execute_code", session_id=sid, code=KERNEL_INFO)
        assert not out.is_error, text_of(out)
        kernel = json.loads(text_of(out).splitlines()[0])
        assert kernel["node"] in topo.COMPUTE, kernel
        assert kernel["transport"] == transport, kernel
        socket_dir = os.path.dirname(kernel["file"])
        paths = [socket_dir, os.path.dirname(socket_dir)]
        if transport == "ipc":
            paths += [f"{kernel['ip']}-{port}" for port in kernel["ports"]]
        job_uid = pwd.getpwnam(topo.TEST_USER).pw_uid
        argv = [str(topo.JOB_VENV / "bin" / "python"), "-c", PROBE]
        argv += [str(job_uid), str(LISTEN_SECONDS), canary, json.dumps(paths)]
        probe = subprocess.Popen(
            cluster.in_node(kernel["node"], argv, as_user=topo.OTHER_USER),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=topo.NODE_ENV,
            cwd="/",
        )
        try:
            assert probe.stdout is not None
            with anyio.fail_after(60):
                ready = await anyio.to_thread.run_sync(probe.stdout.readline)
            assert ready.strip() == "READY", ready + (probe.stderr.read() if probe.stderr else "")
            started = time.monotonic()
            while time.monotonic() - started < LISTEN_SECONDS - 2:  # bounded: ~4 cells
                printed = await call(client, "execute_code", session_id=sid, code=cell)
                assert not printed.is_error, text_of(printed)
                assert canary in text_of(printed)
            ports_by_pid = tcp_ports_by_pid(cluster, kernel["node"])
            out_text, err_text = await anyio.to_thread.run_sync(
                lambda: probe.communicate(timeout=60)
            )
        finally:
            if probe.poll() is None:
                probe.kill()
                probe.wait()
    assert probe.returncode == 0, err_text
    report: dict[str, Any] = json.loads(out_text.splitlines()[-1])
    report["kernel"], report["canary"] = kernel, canary
    job_ports = {int(where.rsplit(":", 1)[1]) for where in report["tcp"]}
    report["ports_by_pid"] = {
        pid: [p for p in ports if p in job_ports]
        for pid, ports in ports_by_pid.items()
        if set(ports) & job_ports
    }
    print(f"the other account's probe ({transport} kernels):\n{json.dumps(report, indent=1)}")
    return report


def tcp_ports_by_pid(cluster: topo.Topology, node: str) -> dict[str, list[int]]:
    """pid -> the TCP ports it listens on in ``node`` (``ss`` as root there)."""
    out = cluster.run_in(node, ["ss", "-ltnpH"]).stdout
    found: dict[str, list[int]] = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        port = int(fields[3].rsplit(":", 1)[1])
        for pid in re.findall(r"pid=(\d+)", fields[5]):
            found.setdefault(pid, []).append(port)
    return found


def leaks(report: dict[str, Any]) -> list[str]:
    """What the other account got: each a line (empty: nothing)."""
    found = []
    for endpoint, got in report["zmq"].items():
        if got["messages"]:
            found.append(
                f"{endpoint}: {got['messages']} message(s), {got['canary']} with the canary, "
                f"e.g. {got['sample'][:2]}"
            )
    for where, got in report["tcp"].items():
        if isinstance(got["http"], int) and got["http"] != 401:
            found.append(f"http://{where}: HTTP {got['http']} without a token")
    for path, got in report["unix"].items():
        if got not in ("denied",):
            found.append(f"{path}: {got}")
    return found


@pytest.mark.anyio
async def test_another_user_on_the_node_gets_nothing_of_a_session(
    topology: topo.Topology, tmp_path: Path
) -> None:
    report = await sniff(topology, tmp_path, TRANSPORT)
    assert report["tcp"], "the probe found no TCP listener of the job user (not even the gateway)"
    assert 401 in [got["http"] for got in report["tcp"].values()], report["tcp"]
    assert report["unix"], report
    assert not leaks(report), "the other account got:\n" + "\n".join(leaks(report))
    # nothing of a kernel listens on TCP but ipykernel's subprocess-output pipe (a PULL socket:
    # it only takes messages in, and only those that carry its random 16-byte key)
    # (one per kernel: the session's and the spare one jlabgw keeps ready), and the gateway
    many = {pid: ports for pid, ports in report["ports_by_pid"].items() if len(ports) > 1}
    assert not many, f"processes of the job listening on several TCP ports: {many}"


@pytest.mark.anyio
async def test_control_the_same_probe_hears_the_canary_from_tcp_kernels(
    topology: topo.Topology, tmp_path: Path
) -> None:
    """Issue 13's leak, kept as the proof that the probe above would see one."""
    report = await sniff(topology, tmp_path, "tcp")
    heard = [e for e, got in report["zmq"].items() if got["canary"]]
    assert heard, f"the probe heard no canary from TCP kernels: {json.dumps(report)[:3000]}"
