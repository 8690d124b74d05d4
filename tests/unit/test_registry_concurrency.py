"""Several servers (processes) write one session registry at once (issue 12): 200 trials of
4 writer processes, each rewriting its own records a few times while this process reads the
file without the lock. Every read parses and is a consistent snapshot (each writer's records
all from one of its rounds), and at the end every writer's last records are there.

The writers are 4 long-lived Python processes (not forked from pytest's threads), each told
a trial's file on its stdin at once, and answering on stdout when done.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

TRIALS = 200
WRITERS = 4
ROUNDS = 4


WRITER = f"""
import sys
from pathlib import Path
from jlabgw.sessions.registry import SessionRegistry
writer = int(sys.argv[1])
for line in sys.stdin:
    for round_ in range({ROUNDS}):  # round r has r + 1 records, padded past one tiny block
        records = [
            {{"session_id": f"w{{writer}}-s{{i}}", "writer": writer, "round": round_,
              "pad": "x" * 300}}
            for i in range(round_ + 1)
        ]
        registry = SessionRegistry(Path(line.strip()))  # a fresh one: every round is written
        registry.save("slurm:1", records)
        registry.close()
    print("done", flush=True)
"""


def _ids(writer: int, round_: int) -> list[str]:
    return [f"w{writer}-s{i}" for i in range(round_ + 1)]


def _check_snapshot(raw: bytes, final: bool) -> None:
    data = json.loads(raw)  # never a partial file
    sessions = data["sessions"]
    ids = [s["session_id"] for s in sessions]
    assert len(ids) == len(set(ids)), ids
    by_writer: dict[int, list[dict[str, Any]]] = {}
    for record in sessions:
        by_writer.setdefault(record["writer"], []).append(record)
    for writer, records in by_writer.items():
        rounds = {r["round"] for r in records}
        assert len(rounds) == 1, (writer, rounds)  # one round's records, never a mix
        assert sorted(r["session_id"] for r in records) == _ids(writer, rounds.pop())
    if final:  # every writer's last round, none lost to another's write
        assert sorted(by_writer) == list(range(WRITERS)), sorted(by_writer)
        assert all(r["round"] == ROUNDS - 1 for r in sessions)


def _read_while(path: Path, running: threading.Event, reads: list[int]) -> None:
    """Read the file without the lock, as ``jlabgw status`` or a person would, until told."""
    while running.is_set():
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            time.sleep(0.0002)
            continue
        _check_snapshot(raw, final=False)
        reads.append(1)


def test_concurrent_writers_never_corrupt_or_lose_records(tmp_path: Path) -> None:
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(WRITERS)
    ]
    reads: list[int] = []
    try:
        for trial in range(TRIALS):
            path = tmp_path / f"trial-{trial}" / "slurm-x.json"
            running = threading.Event()
            running.set()
            errors: list[BaseException] = []

            def reader(
                path: Path = path,
                running: threading.Event = running,
                errors: list[BaseException] = errors,
            ) -> None:
                try:
                    _read_while(path, running, reads)
                except BaseException as exc:  # reported by the test's thread
                    errors.append(exc)

            thread = threading.Thread(target=reader)
            thread.start()
            for proc in writers:  # all at once
                assert proc.stdin is not None
                proc.stdin.write(f"{path}\n")
                proc.stdin.flush()
            for proc in writers:
                assert proc.stdout is not None
                assert proc.stdout.readline() == "done\n"
            running.clear()
            thread.join()
            if errors:
                raise errors[0]
            _check_snapshot(path.read_bytes(), final=True)
            leftovers = sorted(p.name for p in path.parent.iterdir())
            assert leftovers in (["slurm-x.json"], ["slurm-x.json", "slurm-x.json.lock"]), leftovers
    finally:
        for proc in writers:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in writers:
            proc.wait(timeout=30)
            assert proc.stdout is not None
            proc.stdout.close()
    assert all(proc.returncode == 0 for proc in writers)
    assert reads
