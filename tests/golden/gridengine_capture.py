"""Re-captures the gridengine_*.xml / *.txt samples in this folder from a real Grid Engine.

Run as root, from the repository root, where tests/cluster/setup-gridengine.sh has run:
``python -m tests.golden.gridengine_capture``. It brings up the test cluster
(tests/gridengine.py), submits jobs as the test user into every state the samples show, saves
what qstat/qsub/qdel print, and takes the cluster down. The parsers' unit tests
(tests/unit/test_gridengine_parsing.py) read these files; after a re-capture, set their
STARTED to the jobs' new start time (``JAT_start_time`` in gridengine_qstat_jobs.xml).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

from tests.gridengine import GridEngineCluster
from tests.helpers import wait_until

HERE = Path(__file__).parent


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="jlabgw-ge-capture-"))
    cluster = GridEngineCluster(root)
    jobs = root / "jobs"
    try:
        cluster.setup()
        cluster.start()
        jobs.mkdir(mode=0o1777)
        jobs.chmod(0o1777)
        script = jobs / "sleep.sh"
        script.write_text("#!/bin/bash\nsleep 600\n")
        script.chmod(0o644)

        def user(*argv: str, check: bool = True) -> str:
            done = cluster.as_user(*argv, check=check)
            return done.stdout + done.stderr

        def qsub(*args: str) -> str:
            return user("qsub", "-terse", "-o", str(jobs), "-j", "y", *args, str(script)).strip()

        def save(name: str, text: str) -> None:
            # the capture's own paths and times vary from run to run; the parsers do not care
            (HERE / name).write_text(text.replace(str(root), "/tmp/jlabgw-ge-capture"))

        save("gridengine_qstat_empty.xml", user("qstat", "-xml", "-r"))
        save("gridengine_qsub_terse.txt", qsub("-N", "jlabgw-run", "-l", "h_rt=0:10:0") + "\n")
        running = (HERE / "gridengine_qsub_terse.txt").read_text().strip()
        parallel = qsub("-N", "jlabgw-par", "-pe", "smp", "2", "-l", "h_rt=1:00:00")
        suspended = qsub("-N", "suspended")
        stuck = qsub("-N", "too-big", "-pe", "smp", "99")
        held = qsub("-N", "held", "-h")
        error = user(
            "qsub", "-terse", "-N", "bad-output", "-o", "/root/nope", "-l", "h_rt=60", str(script)
        ).strip()
        save(
            "gridengine_qsub_refused.txt",
            user("qsub", "-w", "e", "-pe", "smp", "99", str(script), check=False),
        )

        def state(job: str) -> str:
            out = user("qstat")
            for line in out.splitlines():
                fields = line.split()
                if fields and fields[0] == job:
                    return fields[4]
            return ""

        assert wait_until(lambda: state(running) == "r" and state(suspended) == "r", 30)
        assert wait_until(lambda: state(parallel) == "r" and state(error) == "Eqw", 30)
        user("qmod", "-sj", suspended)
        assert wait_until(lambda: state(suspended) == "s", 30)
        time.sleep(2)  # a scheduler run for the stuck job's message
        save("gridengine_qstat_jobs.xml", user("env", "TZ=UTC", "qstat", "-xml", "-r"))
        save("gridengine_qstat_tokyo.xml", user("env", "TZ=Asia/Tokyo", "qstat", "-xml", "-r"))
        save("gridengine_qstat_j_error.xml", user("qstat", "-j", error, "-xml"))
        save("gridengine_qstat_j_pending.xml", user("qstat", "-j", stuck, "-xml"))
        save("gridengine_qstat_j_held.xml", user("qstat", "-j", held, "-xml"))
        save("gridengine_qstat_j_running.xml", user("qstat", "-j", running, "-xml"))
        save("gridengine_qstat_j_unknown.xml", user("qstat", "-j", "987654", "-xml"))
        user("qdel", running)
        deleting = user("qstat", "-xml", "-r")
        if re.search(r"<state>d", deleting):
            save("gridengine_qstat_deleting.xml", deleting)
        save("gridengine_qdel_unknown.txt", user("qdel", "987654", check=False))
        print(f"saved; jobs {running} {parallel} {suspended} {stuck} {held} {error}")
    finally:
        cluster.stop(qmaster_wait=2)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
