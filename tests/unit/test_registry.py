"""The session registry file: private, atomic, owned per record, and never fatal when unreadable:
a corrupt or foreign-version file is set aside with a warning."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jlabgw.processes import identity_alive, process_identity
from jlabgw.sessions.registry import VERSION, SessionRegistry, this_owner


def test_round_trip_private_file(tmp_path: Path) -> None:
    registry = SessionRegistry(tmp_path / "state" / "sessions" / "slurm-x.json")
    assert registry.load() == (None, [])
    sessions = [{"session_id": "a1", "kernel_id": "k", "running": None}]
    registry.save("slurm:41", [])
    registry.save("slurm:42", sessions)  # the newest state wins
    registry.close()
    owner = this_owner()
    assert owner["process"].startswith(f"{os.getpid()}")
    mine = [{**sessions[0], "identity": "slurm:42", "owner": owner}]
    assert registry.load() == ("slurm:42", mine)
    assert json.loads(registry.path.read_bytes())["version"] == VERSION
    assert registry.path.stat().st_mode & 0o777 == 0o600
    assert registry.path.parent.stat().st_mode & 0o777 == 0o700
    again = SessionRegistry(registry.path)
    again.save("slurm:42", [])
    again.close()
    assert again.load() == (None, [])


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[1, 2]",
        b'{"sessions": [1, {"session_id": "a"}]}',
        b'{"sessions": {"session_id": "a"}}',
        b'{"sessions": [{"kernel_id": "k"}]}',
        b'{"version": 99, "sessions": [{"session_id": "a"}]}',
        b'{"version": "2", "sessions": []}',
    ],
    ids=["json", "list", "record", "sessions", "no-id", "foreign-version", "version-type"],
)
def test_a_corrupt_or_foreign_file_is_set_aside_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "slurm-x.json"
    path.write_bytes(content)
    registry = SessionRegistry(path)
    with caplog.at_level(logging.WARNING, logger="jlabgw.sessions.registry"):
        assert registry.load() == (None, [])
    assert not path.exists()
    [aside] = tmp_path.glob("slurm-x.json.corrupt-*")
    assert aside.read_bytes() == content  # kept for a person to look at
    assert any("set aside as slurm-x.json.corrupt-" in r.getMessage() for r in caplog.records)
    # and the registry works again from empty
    registry.save("slurm:1", [{"session_id": "s"}])
    registry.close()
    assert [r["session_id"] for r in registry.load()[1]] == ["s"]


def test_the_unversioned_file_of_an_older_server_is_handed_over(tmp_path: Path) -> None:
    path = tmp_path / "slurm-x.json"
    path.write_text(json.dumps({"identity": "slurm:7", "sessions": [{"session_id": "old"}]}))
    claimed = SessionRegistry(path).claim()
    assert [(r["session_id"], r["identity"]) for r in claimed] == [("old", "slurm:7")]
    assert claimed[0]["owner"] == this_owner()


def test_records_of_other_servers_survive_and_only_free_ones_are_claimed(tmp_path: Path) -> None:
    path = tmp_path / "slurm-x.json"
    host = socket.gethostname()
    alive = {"host": host, "process": this_owner()["process"]}
    other = SessionRegistry(path, owner={"host": "elsewhere", "process": "1:1"})  # unverifiable
    recycled = SessionRegistry(path, owner={"host": host, "process": f"{os.getpid()}:1"})
    me = SessionRegistry(path, owner=alive)
    other.save("slurm:1", [{"session_id": "o"}])
    other.close()
    recycled.save("slurm:1", [{"session_id": "r"}])
    recycled.close()
    me.save("slurm:1", [{"session_id": "m"}])
    me.close()
    assert sorted(r["session_id"] for r in me.load()[1]) == ["m", "o", "r"]
    # a second server claims the recycled pid's record only; then a third finds nothing left
    # (on other hosts, so that they count as alive: another host's pid cannot be checked)
    second = SessionRegistry(path, owner={"host": "second", "process": "2:2"})
    third = SessionRegistry(path, owner={"host": "third", "process": "3:3"})
    assert [r["session_id"] for r in second.claim()] == ["r"]
    assert third.claim() == []
    owners = {r["session_id"]: r["owner"] for r in me.load()[1]}
    assert owners["r"] == second.owner
    assert owners["m"] == alive
    # handing over clears the owner: the next server may take them
    me = SessionRegistry(path, owner=alive)  # (a closed registry writes no more)
    me.save("slurm:1", [{"session_id": "m"}], handed_over=True)
    me.close()
    record = next(r for r in me.load()[1] if r["session_id"] == "m")
    assert (record["owner"], record["handed_over"]) == (None, True)


def test_a_process_identity_tells_a_recycled_pid_apart() -> None:
    me = process_identity(os.getpid())
    assert me is not None
    assert me.startswith(f"{os.getpid()}:")
    assert identity_alive(me)
    assert not identity_alive(f"{os.getpid()}:1")  # the same pid, another process
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child = process_identity(proc.pid)
    proc.kill()
    proc.wait()
    assert child is not None
    assert not identity_alive(child)
    assert process_identity(proc.pid) is None
