"""The connection file reader against a fake Host (the one faked boundary: files on the
login node), and the names of a batch job's files."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from jlabgw.cluster.connection_file import GatewayInfo, JobFiles, read_connection_file
from jlabgw.cluster.host import FileStat, Host
from jlabgw.cluster.slurm.batch import default_template
from jlabgw.cluster.ssh.connection import CommandResult


class FilesOnly(Host):
    """A login node with files and no commands."""

    where = "fake login node"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        raise AssertionError(f"no command expected, got {argv}")

    def read_bytes(self, path: str) -> bytes:
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path]

    def write_bytes(self, path: str, data: bytes, mode: int = 0o600) -> None:
        self.files[path] = data

    def uid(self) -> int:
        return 1000  # the files' FileStat says no owner: only modes are checked

    def stat(self, path: str) -> FileStat | None:
        return FileStat(len(self.files[path]), 0o600, 0.0) if path in self.files else None


PUBLISHED = {
    "host": "node7",
    "port": 41234,
    "token": "s3cret-token-value",
    "job_id": "42",
    "pid": 100,
    "gateway_pid": 101,
    "started_at": 1700000000.5,
    "restarts": 1,
    "previous_exit": "the gateway was killed by SIGKILL at 10:00:00",
}


def test_a_published_file_is_read_into_typed_fields() -> None:
    files = JobFiles("/home/u/.jlabgw/connections")
    path = files.connection_file("42")
    host = FilesOnly({path: json.dumps(PUBLISHED).encode()})
    info = read_connection_file(host, path)
    assert info == GatewayInfo(
        host="node7",
        port=41234,
        token="s3cret-token-value",
        job_id="42",
        gateway_pid=101,
        started_at=1700000000.5,
        restarts=1,
        previous_exit="the gateway was killed by SIGKILL at 10:00:00",
    )
    assert info.key == (41234, 1700000000.5)
    assert "s3cret" not in repr(info)


def test_no_file_yet_is_none_and_a_foreign_file_is_a_value_error() -> None:
    host = FilesOnly({"/c/other.json": b'{"host": "x"}', "/c/junk.json": b"not json"})
    assert read_connection_file(host, "/c/jlabgw-1.json") is None
    with pytest.raises(ValueError, match="not a jlabgw connection file"):
        read_connection_file(host, "/c/other.json")
    with pytest.raises(json.JSONDecodeError):  # a ValueError
        read_connection_file(host, "/c/junk.json")


def test_a_malformed_field_is_a_value_error() -> None:
    bad = dict(PUBLISHED, port="not a port")
    with pytest.raises(ValueError, match="malformed"):
        GatewayInfo.parse(json.dumps(bad).encode())


def test_a_replacement_gateway_has_another_key() -> None:
    first = GatewayInfo.parse(json.dumps(PUBLISHED).encode())
    again = GatewayInfo.parse(json.dumps(PUBLISHED).encode())
    restarted = GatewayInfo.parse(json.dumps(dict(PUBLISHED, started_at=1700000099.0)).encode())
    assert first.key == again.key
    assert first.key != restarted.key


def test_job_file_names_match_the_batch_template() -> None:
    files = JobFiles("/c")
    assert files.connection_file("42") == "/c/jlabgw-42.json"
    assert files.log("42") == "/c/jlabgw-42.log"
    assert files.log("%j") == "/c/jlabgw-%j.log"  # sbatch --output
    assert files.script("jlabgw") == "/c/jlabgw.sbatch"
    # the job's side of the same name
    assert '"$connection_dir/jlabgw-${SLURM_JOB_ID:-nojob}.json"' in default_template()
