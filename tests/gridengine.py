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
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port, wait_until

CONFIGS = Path(__file__).parent / "cluster" / "gridengine"
GE_BIN = Path("/usr/lib/gridengine")
GE_INSTALLED_ROOT = Path("/var/lib/gridengine")
TEST_USER = os.environ.get("JLABGW_TEST_USER", "jlabgw-test")
ADMIN_USER = "sgeadmin"
QUEUE = "jlabgw.q"
PE = "smp"
SLOTS = 8


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
        values = {"root": self.root, "hostname": self.hostname}
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
        for path in [self.root / "spool", *(self.root / "spool").iterdir()]:
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
        execd = self.procs.get("execd")
        if execd is not None and execd.poll() is None:
            self.run("qconf", "-kej", self.hostname, check=False, timeout=15)
            self._wait(execd, 5)
        qmaster = self.procs.get("qmaster")
        if qmaster is not None and qmaster.poll() is None:
            self.run("qconf", "-km", check=False, timeout=15)
            self._wait(qmaster, qmaster_wait)
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs = {}
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.timings["down"] = time.monotonic() - t0

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
