"""The state files `jlabgw status` and `jlabgw stop` read name their server by pid and start
time: a file whose pid now belongs to another process (a recycled pid) is stale, so `stop`
can never signal that process. The "other process" is a real child."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from jlabgw.processes import process_identity
from jlabgw.sessions.state import read_server_states


def write_state(folder: Path, pid: int, identity: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pid}.json"
    data = {"pid": pid, "started_at": 0, "backend": {"backend": "local"}}
    if identity is not None:
        data["process"] = identity
    path.write_text(json.dumps(data))
    return path


def test_a_recycled_pid_is_not_taken_for_the_server(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    identity = process_identity(child.pid)
    assert identity is not None
    pid, start = identity.split(":")
    servers = tmp_path / "servers"
    write_state(servers, child.pid, f"{pid}:{int(start) - 1}")  # same pid, another process
    assert read_server_states(tmp_path) == []
    assert not (servers / f"{child.pid}.json").exists()  # pruned as stale


def test_the_recorded_process_is_listed(tmp_path: Path, child: subprocess.Popen[bytes]) -> None:
    write_state(tmp_path / "servers", child.pid, process_identity(child.pid))
    assert [s.pid for s in read_server_states(tmp_path)] == [child.pid]


def test_an_older_file_without_a_start_time_falls_back_to_the_pid(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    write_state(tmp_path / "servers", child.pid, None)
    assert [s.pid for s in read_server_states(tmp_path)] == [child.pid]
