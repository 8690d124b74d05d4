"""The session registry file: private, atomic, and never fatal when unreadable."""

from __future__ import annotations

from pathlib import Path

import pytest

from jlabgw.sessions.registry import SessionRegistry


def test_round_trip_private_file(tmp_path: Path) -> None:
    registry = SessionRegistry(tmp_path / "state" / "sessions" / "slurm-x.json")
    assert registry.load() == (None, [])
    sessions = [{"session_id": "a1", "kernel_id": "k", "running": None}]
    registry.save("slurm:41", [])
    registry.save("slurm:42", sessions)  # the newest state wins
    registry.close()
    assert registry.load() == ("slurm:42", sessions)
    assert registry.path.stat().st_mode & 0o777 == 0o600
    assert registry.path.parent.stat().st_mode & 0o777 == 0o700
    again = SessionRegistry(registry.path)
    again.save("slurm:42", [])
    again.close()
    assert again.load() == ("slurm:42", [])


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"sessions": [1, {"a": 1}]}'])
def test_unreadable_or_odd_files_mean_nothing_to_take_back(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "slurm-x.json"
    path.write_bytes(content)
    identity, sessions = SessionRegistry(path).load()
    assert identity is None
    assert all(isinstance(s, dict) for s in sessions)
