"""A real one-host Grid Engine (Son of Grid Engine 8.1.9: sge_qmaster + sge_execd) for the tests.

Needs root and Debian's gridengine packages (tests/cluster/setup-gridengine.sh) and the test
user (tests/cluster/setup-system.sh). The daemons are started directly, not by the packages'
init scripts (which lose track of their pid files and can start a second qmaster).

Everything lives in one directory of its own, which is also the cluster's ``SGE_ROOT``:
``bin``/``lib``/``utilbin``/``util`` link to the installed ones; the cell ``default/common``
(bootstrap, act_qmaster, host_aliases, accounting) and the spool (Berkeley DB, qmaster, execd)
are ours, and so is the queue's tmpdir: the root itself, where GE makes (and removes) one
directory per job, ``<root>/<job>.1.jlabgw.q``, short enough for the supervisor's kernel
sockets (sun_path: 107 bytes; else it puts them under /tmp). The ports are free ones of our
own (``SGE_QMASTER_PORT``/``SGE_EXECD_PORT``), so the Debian cell under /var/lib/gridengine is
neither read nor written, and two test runs do not meet. What this needs from the system: the
``sgeadmin`` user the packages create (the daemons run as it), nothing else. GE's daemons
listen on every address (8.1.9 has no listen-address setting), on random high ports.

Client commands need :attr:`GridEngineCluster.client_env` (SGE_ROOT, SGE_CELL and the ports);
the directory is world-readable so the non-root test user, logged in over SSH as on a login
node, reads the cell's files. Root cannot submit (``min_uid 1000``): submit as the test user.

Settings that make it fast (tests/cluster/gridengine/): ``schedule_interval 0:0:1``,
``flush_submit_sec``/``flush_finish_sec 1`` (qsub -> running in 0.1-1.3 s instead of
~15 s), no load thresholds or load adjustments (a busy 2-core machine would otherwise put the
queue in alarm state), ``schedd_job_info true`` (pending reasons in ``qstat -j``).

Run as a module it is also the engine of ``tests/cluster/gridengine.sh up|down`` (root): ``python
-m tests.gridengine up --state DIR`` starts a cluster whose daemons outlive the command (each in
a session of its own), a login sshd for the test user whose sessions have the cluster's
environment, and a jlabgw config for a client on this machine, recording root, ports and pids in
DIR/state.json; ``down --state DIR`` stops whatever of it runs and removes DIR. Such a cluster
has its own root, ports, job ids and ``gid_range``, so it coexists with the tests' own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port, wait_until
from tests.sshd import SSHD, SSHDServer
from tests.sshd import unavailable_reason as sshd_unavailable_reason

CONFIGS = Path(__file__).parent / "cluster" / "gridengine"
GE_BIN = Path("/usr/lib/gridengine")
GE_INSTALLED_ROOT = Path("/var/lib/gridengine")
TEST_USER = os.environ.get("JLABGW_TEST_USER", "jlabgw-test")
ADMIN_USER = "sgeadmin"
QUEUE = "jlabgw.q"
PE = "smp"
SLOTS = 8
GID_RANGE = "65400-65500"  # the supplementary group ids execd gives jobs, to track their processes


def unavailable_reason() -> str | None:
    """Why the Grid Engine tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the test Grid Engine needs root"
    for tool in ("sge_qmaster", "sge_execd", "qsub", "qconf", "spoolinit", "spooldefaults.bin"):
        if not (GE_BIN / tool).exists():
            return f"{tool} is not installed (run tests/cluster/setup-gridengine.sh)"
    for user in (ADMIN_USER, TEST_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            setup = "setup-gridengine.sh" if user == ADMIN_USER else "setup-system.sh"
            return f"user {user} does not exist (run tests/cluster/{setup})"
    return None


@dataclass
class GridEngineCluster:
    """One qmaster and one execd on this host, with queue ``jlabgw.q`` and PE ``smp``."""

    root: Path
    hostname: str = field(default_factory=socket.gethostname)
    qmaster_port: int = 0
    execd_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # two clusters on one host need ranges of their own (execd finds a job's processes by it)
    gid_range: str = GID_RANGE
    # the first job id (0: GE's own, 1); another cluster's ids then do not look like ours
    first_job_id: int = 0
    # where execd makes each job's directory (None: the root, see the module's docstring)
    tmpdir: Path | None = None
    # daemons started by another process (``up`` of tests/cluster/gridengine.sh): name -> pid
    pids: dict[str, int] = field(default_factory=dict)

    queue = QUEUE
    pe = PE
    slots = SLOTS
    user = TEST_USER

    @property
    def cell(self) -> Path:
        return self.root / "default" / "common"

    @property
    def client_env(self) -> dict[str, str]:
        """What a client command needs (for sshd's SetEnv, runuser, or LocalHost)."""
        return {
            "SGE_ROOT": str(self.root),
            "SGE_CELL": "default",
            "SGE_QMASTER_PORT": str(self.qmaster_port),
            "SGE_EXECD_PORT": str(self.execd_port),
        }

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus :attr:`client_env`, for commands run as root here."""
        return {**os.environ, **self.client_env}

    def _daemon_env(self) -> dict[str, str]:
        # a clean environment: the execd's is inherited by every job
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "SGE_ND": "true",  # stay in the foreground: the pid is Popen's
            **self.client_env,
        }

    # -- set-up --------------------------------------------------------------------------------

    def setup(self) -> None:
        """The SGE_ROOT, the cell's files and an initialised (empty) spool. No daemon yet."""
        self.qmaster_port = self.qmaster_port or free_port()
        self.execd_port = self.execd_port or free_port()
        for sub in ("default/common", "spool/qmaster", "spool/execd", "spool/spooldb", "conf"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for name in ("bin", "lib", "utilbin", "util"):
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(GE_INSTALLED_ROOT / name)
        values = {
            "root": self.root,
            "hostname": self.hostname,
            "gid_range": self.gid_range,
            "tmpdir": self.tmpdir or self.root,
        }
        (self.cell / "bootstrap").write_text(
            (CONFIGS / "bootstrap.in").read_text().format(**values)
        )
        (self.cell / "act_qmaster").write_text(f"{self.hostname}\n")
        # The hostname resolves to 127.0.0.1, which resolves back to "localhost": without the
        # alias the qmaster rejects every client ("resolved to host name localhost, not
        # identical to <hostname>").
        (self.cell / "host_aliases").write_text(f"{self.hostname} localhost\n")
        conf = self.root / "conf"
        (conf / "configuration").write_text(
            (CONFIGS / "configuration.in").read_text().format(**values)
        )
        for name in ("exechost", "queue"):
            (conf / name).write_text((CONFIGS / f"{name}.in").read_text().format(**values))
        for name in ("pe_smp", "sched_conf"):
            shutil.copyfile(CONFIGS / name, conf / name)
        admin = pwd.getpwnam(ADMIN_USER)
        for path in [self.root / "default", self.cell, *(self.cell.iterdir())]:
            os.chown(path, admin.pw_uid, admin.pw_gid)  # qmaster rewrites act_qmaster
        if self.first_job_id > 1:  # the qmaster's last job id, read when it starts
            (self.root / "spool" / "qmaster" / "jobseqnum").write_text(f"{self.first_job_id - 1}\n")
        for path in [
            self.root / "spool",
            *(self.root / "spool").iterdir(),
            *(self.root / "spool" / "qmaster").iterdir(),
        ]:
            os.chown(path, admin.pw_uid, admin.pw_gid)
        self.root.chmod(0o755)  # the test user reads the cell's files
        # what Debian's init_cluster does for its cell, for ours
        spool = str(self.root / "spool" / "spooldb")
        self._as_admin([str(GE_BIN / "spoolinit"), "berkeleydb", "libspoolb", spool, "init"])
        defaults = str(GE_BIN / "spooldefaults.bin")
        resources = Path("/usr/share/gridengine/util/resources")
        self._as_admin([defaults, "configuration", str(conf / "configuration")])
        self._as_admin([defaults, "complexes", str(resources / "centry")])
        self._as_admin([defaults, "usersets", str(resources / "usersets")])
        self._as_admin([defaults, "managers", "root", ADMIN_USER])

    def _as_admin(self, argv: list[str]) -> None:
        env = {**self._daemon_env(), "LD_LIBRARY_PATH": str(GE_BIN)}
        env.pop("SGE_ND")
        done = subprocess.run(
            ["runuser", "-u", ADMIN_USER, "--", *argv],
            env=env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv} failed: {done.stdout}{done.stderr}")

    # -- commands ------------------------------------------------------------------------------

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """A GE client command as root (admin commands: qconf, qmod)."""
        done = subprocess.run(
            [str(GE_BIN / argv[0]), *argv[1:]],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stdout}{done.stderr}")
        return done

    def as_user(
        self, *argv: str, check: bool = True, timeout: float = 30, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A client command as the test user (who may submit), via runuser."""
        env = ["env", "-i", "PATH=/usr/bin:/bin", f"HOME={pwd.getpwnam(self.user).pw_dir}"]
        env += [f"{k}={v}" for k, v in self.client_env.items()]
        done = subprocess.run(
            ["runuser", "-u", self.user, "--", *env, *argv],
            cwd=cwd or "/",
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} as {self.user}: {done.stdout}{done.stderr}")
        return done

    # -- start / stop --------------------------------------------------------------------------

    def _spawn(self, name: str, daemon: str) -> None:
        with (self.root / f"{name}.out").open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [str(GE_BIN / daemon)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._daemon_env(),
                cwd=self.root,
                start_new_session=True,
            )

    def _alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {self.tail(name)}")
        return True

    def start(self) -> None:
        """qmaster, this host as submit and execution host, execd, the PE, the queue and the
        fast scheduler settings; returns once the queue instance takes jobs."""
        t0 = time.monotonic()
        self._spawn("qmaster", "sge_qmaster")
        if not wait_until(lambda: self._alive("qmaster") and self._answers(), 30, 0.1):
            raise RuntimeError(f"sge_qmaster did not answer: {self.tail('qmaster')}")
        self.timings["qmaster"] = time.monotonic() - t0
        conf = self.root / "conf"
        self.run("qconf", "-as", self.hostname)
        self.run("qconf", "-Ae", str(conf / "exechost"))
        self.run("qconf", "-Ap", str(conf / "pe_smp"))
        self.run("qconf", "-Msconf", str(conf / "sched_conf"))
        self._spawn("execd", "sge_execd")
        self.run("qconf", "-Aq", str(conf / "queue"))
        if not wait_until(
            lambda: self._alive("execd") and self._queue_ready(), timeout=30, interval=0.1
        ):
            raise RuntimeError(
                f"the queue did not become ready: {self.run('qstat', '-f', check=False).stdout}"
                f" {self.tail('execd')}"
            )
        self.timings["up"] = time.monotonic() - t0

    def _answers(self) -> bool:
        return self.run("qconf", "-sh", check=False).returncode == 0

    def _queue_ready(self) -> bool:
        """``qstat -f`` lists our queue instance with no state flag (not u(nknown), a(larm))."""
        out = self.run("qstat", "-f", "-q", self.queue, check=False).stdout
        for line in out.splitlines():
            if line.startswith(f"{self.queue}@"):
                return len(line.split()) == 5  # name, type, used/tot, load, arch: no states
        return False

    def tail(self, name: str) -> str:
        """The end of a daemon's output and of its messages file (for error messages)."""
        texts = []
        messages = {
            "qmaster": self.root / "spool" / "qmaster" / "messages",
            "execd": self.root / "spool" / "execd" / "localhost" / "messages",
        }
        for path in (self.root / f"{name}.out", messages.get(name)):
            if path is not None:
                with contextlib.suppress(OSError):
                    texts.append(path.read_text()[-1500:])
        return " | ".join(texts)

    def stop(self, *, qmaster_wait: float = 20.0) -> None:
        """``qconf -kej`` (execd and its jobs), ``qconf -km``, then SIGKILL whatever is left
        of this cluster: the daemons and any process whose environment names our SGE_ROOT
        (jobs, shepherds). Bounded: about 5 s for execd, ``qmaster_wait`` for qmaster (it
        takes ~10 s to exit after -km)."""
        t0 = time.monotonic()
        # (no qconf without our ports: it would fall back to the system's cell and its qmaster)
        ports = bool(self.qmaster_port and self.execd_port)
        if ports and self._daemon_running("execd"):
            self.run("qconf", "-kej", self.hostname, check=False, timeout=15)
            self._wait_daemon("execd", 5)
        if ports and self._daemon_running("qmaster"):
            self.run("qconf", "-km", check=False, timeout=15)
            self._wait_daemon("qmaster", qmaster_wait)
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs = {}
        for pid in self.pids.values():
            if self._is_ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    if os.getpgid(pid) == pid:  # started in a session of its own
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
        self.pids = {}
        for _ in range(100):  # bounded: at most ~5 s for SIGKILLed processes to go
            left = self.leftover_pids()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        self.timings["down"] = time.monotonic() - t0

    def _is_ours(self, pid: int) -> bool:
        """``pid`` runs (not a zombie) with our SGE_ROOT in its environment."""
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        return f"SGE_ROOT={self.root}".encode() in environ.split(b"\0")

    def _daemon_running(self, name: str) -> bool:
        proc = self.procs.get(name)
        if proc is not None:
            return proc.poll() is None
        pid = self.pids.get(name)
        return pid is not None and self._is_ours(pid)

    def _wait_daemon(self, name: str, timeout: float) -> None:
        proc = self.procs.get(name)
        if proc is not None:
            self._wait(proc, timeout)
        elif name in self.pids:
            wait_until(lambda: not self._is_ours(self.pids[name]), timeout, 0.05)

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)

    def leftover_pids(self) -> list[int]:
        """Processes of this cluster still alive: their environment has our SGE_ROOT."""
        marker = f"SGE_ROOT={self.root}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.append(int(entry.name))
        return found


@contextlib.contextmanager
def running_cluster() -> Iterator[GridEngineCluster]:
    """A started cluster in a fresh directory under /tmp (not pytest's 0700 temp dirs: the
    test user reads the cell's files); stopped and removed afterwards, whatever happened."""
    root = Path(tempfile.mkdtemp(prefix="jlabgw-ge-"))
    cluster = GridEngineCluster(root)
    try:
        cluster.setup()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def user_dir(cluster: GridEngineCluster, name: str) -> Path:
    """A private directory of the test user's inside the cluster's directory (job scripts,
    logs, connection files); removed with the cluster."""
    path = cluster.root / "users" / name
    path.parent.mkdir(mode=0o755, exist_ok=True)
    path.mkdir(mode=0o700)
    account = pwd.getpwnam(cluster.user)
    os.chown(path, account.pw_uid, account.pw_gid)
    return path


# -- driven from a script: tests/cluster/gridengine.sh up|down ---------------------------------
#
# DIR (default /run/jlabgw-gridengine) holds everything: ``sge`` (the SGE_ROOT), ``sshd`` (the
# login sshd's config, host key, the client's key and known_hosts), ``client`` (the jlabgw
# config, notebooks and state of a client here), ``state.json`` (root, ports, pids) and a marker
# file; outside it only the sshd's authorized_keys file in the test user's ~/.ssh.

STATE_MARKER = ".jlabgw-gridengine"
SCRIPT_GID_RANGE = "65300-65399"  # not the tests' own (GID_RANGE): both may run at once
# execd makes each job's directory, <tmpdir>/<job>.1.jlabgw.q, where a site's does: in /tmp. (Not
# in the root under DIR: its path would leave no room for the kernels' socket paths.)
SCRIPT_TMPDIR = Path("/tmp")
SCRIPT_JOB_VENV = Path(os.environ.get("JLABGW_TEST_JOB_VENV", "/opt/jlabgw-test/job-venv"))
SCRIPT_QMASTER_WAIT = 1.0  # after -km: it takes ~11 s to exit, for a spool deleted anyway
SCRIPT_CONFIG = """\
# jlabgw configuration for the one-node Grid Engine of tests/cluster/gridengine.sh, as a user of
# this machine would write it: qsub over SSH on the login node (this machine's sshd on
# 127.0.0.1, whose sessions have SGE_ROOT and the cluster's ports), the job's gateway reached
# through it on the "compute node" (this machine again, the same sshd). Use with:
#   jlabgw doctor --config {config}
backend = "gridengine"
notebook_dir = {notebook_dir}
state_dir = {state_dir}

# -- how to reach the cluster ---------------------------------------------------------------
ssh_host = {ssh_host}
# also the user on the compute node (as `ssh -J user@login node` would, the user of ssh_host
# is the login node's only: without this line the node is tried as the local user)
ssh_user = {ssh_user}
ssh_key = {ssh_key}
known_hosts = {known_hosts}
# does not exist: nothing of ~/.ssh/config applies
ssh_config = {ssh_config}
compute_ssh_port = {port}
connection_dir = {connection_dir}

# -- the job -----------------------------------------------------------------------------------
remote_setup = {remote_setup}
job_name = "jlabgw-gridengine"
ge_queue = {queue}
ge_h_rt = "00:30:00"
walltime_warn = 5.0
"""


def _first_job_id() -> int:
    """Job ids from 1,000,000 on (the tests' clusters count from 1), 50 per second of the clock:
    no job of an earlier ``up`` had the same id (its connection file may still be there, as a
    job killed by qdel leaves it), below GE's largest job id (9,999,999)."""
    return 1_000_000 + (int(time.time()) % 100_000) * 50


def _connection_dir(state: Path) -> str:
    """The config's connection_dir (in the test user's home): one per state dir."""
    return f"~/.jlabgw/connections-{state.name}"


def _log(message: str) -> None:
    print(f"gridengine: {message}", file=sys.stderr, flush=True)


def _toml(value: object) -> str:
    return json.dumps(str(value))  # a TOML basic string (paths, plain text)


def _write_state(state: Path, info: dict[str, object]) -> None:
    tmp = state / "state.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(state / "state.json")


def _sshd_pids(state: Path) -> tuple[set[int], set[int]]:
    """(listeners, all): the login sshd (any sshd whose command line names our sshd_config) and
    it with every process below it (connections, privilege separation, sessions)."""
    config = str(state / "sshd" / "sshd_config").encode()
    listeners: set[int] = set()
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if stat[0] == "Z":
            continue
        parents[pid] = int(stat[1])
        # sshd rewrites its title: "sshd: /usr/sbin/sshd -D -e -f CONFIG [listener] ..."
        words = cmdline.replace(b"\0", b" ").split()
        if words and words[0] in (b"sshd:", SSHD.encode()) and config in words:
            listeners.add(pid)
    found = set(listeners)
    for _ in range(6):  # listener -> [priv] -> [net]/user -> shell -> ...: a few levels
        found |= {pid for pid, ppid in parents.items() if ppid in found}
    return listeners, found


def _stop_sshd(state: Path) -> None:
    """SIGKILL to the connections, SIGTERM to the listener, SIGKILL to what is left after 2 s."""
    listeners, pids = _sshd_pids(state)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM if pid in listeners else signal.SIGKILL)
    for i in range(60):  # bounded: 60 x 0.05 s
        _, left = _sshd_pids(state)
        if not left:
            return
        if i >= 40:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    _log(f"warning: sshd process(es) survived SIGKILL: {sorted(_sshd_pids(state)[1])}")


def _live_jobs(cluster: GridEngineCluster) -> list[str]:
    """The ids of the jobs the qmaster knows, while it answers (their directories in /tmp stay
    when execd is killed under them). Nothing without the cluster's ports."""
    if not (cluster.qmaster_port and cluster.execd_port and cluster._daemon_running("qmaster")):
        return []
    listed = cluster.run("qstat", "-u", "*", check=False, timeout=15).stdout
    firsts = [line.split()[0] for line in listed.splitlines() if line.strip()]
    return [word for word in firsts if word.isdigit()]


def _remove_job_files(state: Path, jobs: list[str]) -> None:
    """What the jobs of this cluster left outside DIR: the connection dir in the test user's
    home, and the directories in /tmp of the jobs that were running."""
    with contextlib.suppress(KeyError):
        home = Path(pwd.getpwnam(TEST_USER).pw_dir)
        shutil.rmtree(home / _connection_dir(state).removeprefix("~/"), ignore_errors=True)
    for job in jobs:
        for job_dir in SCRIPT_TMPDIR.glob(f"{job}.*.{QUEUE}"):
            if not job_dir.is_symlink():
                shutil.rmtree(job_dir, ignore_errors=True)


def script_down(state: Path) -> None:
    """Stop what ``script_up`` started in ``state`` and remove it; nothing there is fine."""
    t0 = time.monotonic()
    if not state.exists():
        _log(f"nothing to stop: no {state}")
        return
    if not (state / STATE_MARKER).exists():
        raise SystemExit(
            f"{state} is not a gridengine.sh state dir (no {STATE_MARKER}): left alone"
        )
    info: dict[str, object] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((state / "state.json").read_text())
    pids = info.get("pids")
    pids = {k: int(v) for k, v in pids.items()} if isinstance(pids, dict) else {}
    cluster = GridEngineCluster(
        state / "sge",
        hostname=str(info.get("hostname") or socket.gethostname()),
        qmaster_port=int(str(info.get("qmaster_port") or 0)),
        execd_port=int(str(info.get("execd_port") or 0)),
        pids={k: v for k, v in pids.items() if k in ("qmaster", "execd")},
    )
    jobs = _live_jobs(cluster)
    cluster.stop(qmaster_wait=SCRIPT_QMASTER_WAIT)  # (also kills jobs and SSH sessions: SGE_ROOT)
    _stop_sshd(state)
    with contextlib.suppress(KeyError, FileNotFoundError):
        SSHDServer(state / "sshd").authorized_keys.unlink()
    _remove_job_files(state, jobs)
    shutil.rmtree(state)
    _log(f"down in {time.monotonic() - t0:.2f} s")


def script_up(state: Path) -> Path:
    """A cluster, its login sshd and a client config in ``state`` (a previous one stopped
    first); returns the config's path. On any failure, everything is stopped again."""
    script_down(state)
    t0 = time.monotonic()
    state.mkdir(mode=0o755, parents=True)
    state.chmod(0o755)  # the test user reads the cell's files below it
    (state / STATE_MARKER).touch()
    cluster = GridEngineCluster(
        state / "sge",
        gid_range=SCRIPT_GID_RANGE,
        first_job_id=_first_job_id(),
        tmpdir=SCRIPT_TMPDIR,
    )
    sshd = None
    info: dict[str, object] = {
        "root": str(cluster.root),
        "first_job_id": cluster.first_job_id,
        "pids": {},
    }
    try:
        for parent in state.parents:  # the test user reads the cell's files (as topology.sh)
            if parent.stat().st_mode & 0o001 == 0:
                raise SystemExit(f"{parent} is not searchable by other users: pick another dir")
        cluster.setup()
        info.update(
            hostname=cluster.hostname,
            qmaster_port=cluster.qmaster_port,
            execd_port=cluster.execd_port,
        )
        _write_state(state, info)  # before any daemon: down finds them by SGE_ROOT anyway
        cluster.start()
        info["pids"] = {name: proc.pid for name, proc in cluster.procs.items()}
        _write_state(state, info)
        sshd = SSHDServer(state / "sshd", set_env=cluster.client_env)
        sshd.setup()
        sshd.start()
        assert sshd.proc is not None
        info["pids"] = {**{n: p.pid for n, p in cluster.procs.items()}, "sshd": sshd.proc.pid}
        info["sshd_port"] = sshd.port
        client = state / "client"
        client.mkdir(mode=0o700)
        config = client / "jlabgw.toml"
        config.write_text(
            SCRIPT_CONFIG.format(
                config=config,
                notebook_dir=_toml(client / "notebooks"),
                state_dir=_toml(client / "state"),
                ssh_host=_toml(f"{sshd.user}@{sshd.host}:{sshd.port}"),
                ssh_user=_toml(sshd.user),
                connection_dir=_toml(_connection_dir(state)),
                ssh_key=_toml(sshd.client_key),
                known_hosts=_toml(sshd.known_hosts),
                ssh_config=_toml(client / "no-ssh-config"),
                port=sshd.port,
                remote_setup=_toml(f". {SCRIPT_JOB_VENV}/bin/activate"),
                queue=_toml(cluster.queue),
            )
        )
        info["config"] = str(config)
        _write_state(state, info)
    except BaseException:
        _log("up failed: stopping what came up")
        if sshd is not None:
            sshd.stop()
        cluster.stop(qmaster_wait=SCRIPT_QMASTER_WAIT)
        script_down(state)
        raise
    _log(
        f"up in {time.monotonic() - t0:.2f} s (qmaster {cluster.timings['qmaster']:.2f} s): "
        f"SGE_ROOT={cluster.root} ports {cluster.qmaster_port}/{cluster.execd_port}, queue "
        f"{cluster.queue}, login sshd {sshd.user}@{sshd.host}:{sshd.port}"
    )
    return config


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so that a failing `up` (timeout's SIGTERM) cleans up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.gridengine")
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--state", type=Path, default=Path("/run/jlabgw-gridengine"))
    args = parser.parse_args(argv)
    reason = unavailable_reason() or sshd_unavailable_reason()
    if reason and args.command == "up":
        _log(f"cannot start: {reason}")
        return 1
    if not (SCRIPT_JOB_VENV / "bin" / "python").exists() and args.command == "up":
        _log(f"no job Python at {SCRIPT_JOB_VENV} (run tests/cluster/setup-system.sh)")
        return 1
    # the daemons inherit stdin: never the caller's pipe or terminal
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    state = args.state.absolute()
    if args.command == "down":
        script_down(state)
        return 0
    print(script_up(state), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- what the gridengine backend's test servers are given ---------------------------------


def ge_env(tmp_path: Path, login: SSHDServer, **extra: str) -> dict[str, str]:
    """A "laptop" jlabgw server's environment for the ``gridengine`` backend: qsub/qstat/qdel
    only through the ``login`` sshd, which is the compute node's too (one machine)."""
    import pytest  # here: `python -m tests.gridengine up` needs no pytest

    from tests.slurm import JOB_VENV

    if not (JOB_VENV / "bin" / "python").exists():
        pytest.skip(f"no job Python at {JOB_VENV} (run tests/cluster/setup-system.sh)")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "HOME": str(home),
        "JLABGW_BACKEND": "gridengine",
        "JLABGW_SSH_HOST": login.host,
        "JLABGW_SSH_PORT": str(login.port),
        "JLABGW_SSH_USER": login.user,
        "JLABGW_SSH_KEY": str(login.client_key),
        "JLABGW_KNOWN_HOSTS": str(login.known_hosts),
        "JLABGW_SSH_CONFIG": str(tmp_path / "no-ssh-config"),
        "JLABGW_COMPUTE_SSH_PORT": str(login.port),
        "JLABGW_REMOTE_SETUP": f". {JOB_VENV}/bin/activate",
        "JLABGW_GE_H_RT": "0:10:00",
        "JLABGW_JOB_IDLE_TIMEOUT": "0",
        "JLABGW_WALLTIME_WARN": "0",
        **extra,
    }
