"""Resource shapes: which requests share a job, and what a bad request says."""

from __future__ import annotations

from pathlib import Path

import pytest

from jlabgw.config import profile_settings
from jlabgw.errors import ConfigError
from jlabgw.sessions.lanes import shape_of
from tests.helpers import make_settings


def test_same_resources_same_shape_and_defaults_do_not_count(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, backend="slurm", slurm_partition="cpu", slurm_time="01:00:00"
    )
    assert shape_of(settings, {}) == ("", settings)
    assert shape_of(settings, {"partition": "cpu", "time": "01:00:00", "gpus": None})[0] == ""
    key, shaped = shape_of(settings, {"partition": "gpu", "gpus": 2, "time": "04:00:00"})
    assert key == "partition=gpu,gpus=gpu:2,time=04:00:00"
    assert (shaped.slurm_partition, shaped.slurm_gres, shaped.slurm_time) == (
        "gpu",
        "gpu:2",
        "04:00:00",
    )
    assert shaped.slurm_cpus == settings.slurm_cpus  # the rest as configured
    assert shaped.job_name.startswith("jlabgw-")
    assert len(shaped.job_name) == len("jlabgw-") + 6
    assert not shaped.keep_job
    # order and types of the request do not matter; another value is another job
    again = shape_of(settings, {"time": "04:00:00", "gpus": "2", "partition": "gpu"})
    assert again[0] == key
    assert again[1].job_name == shaped.job_name
    assert shape_of(settings, {"partition": "gpu", "gpus": 1})[1].job_name != shaped.job_name


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"gpus": 0}, "whole number of GPUs"),
        ({"gpus": True}, "whole number of GPUs"),
        ({"cpus": "two"}, "whole number of CPUs"),
        ({"mem": "lots"}, "such as 16G"),
        ({"time": "4 hours"}, "such as 04:00:00"),
        ({"partition": "gpu\n#SBATCH --account=x"}, "not a partition name"),
        ({"nodes": 4}, "unknown resource"),
    ],
)
def test_bad_requests_say_what_is_expected(
    tmp_path: Path, resources: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        shape_of(make_settings(tmp_path, backend="slurm"), resources)


def test_grid_engine_maps_a_request_onto_its_own_options(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, backend="gridengine", ge_pe="smp", ge_resources="arch=lx-amd64,h_vmem=2G"
    )
    key, shaped = shape_of(
        settings,
        {"partition": "gpu.q", "gpus": 1, "cpus": 4, "mem": "16G", "time": "1-02:00:00"},
    )
    assert key == "partition=gpu.q,gpus=gpu:1,cpus=4,mem=16G,time=1-02:00:00"
    assert shaped.ge_queue == "gpu.q"
    assert shaped.ge_h_rt == "26:00:00"  # days folded into hours
    assert shaped.ge_slots == 4
    # h_vmem is per slot: 16G over 4 slots; a bare flag resource stays bare
    assert shaped.ge_resources == "arch=lx-amd64,h_vmem=4096M,gpu=1"
    # what the configured job has already is the default lane
    assert shape_of(settings, {"mem": "2G"})[0] == ""


def test_grid_engine_cpus_need_a_parallel_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JLABGW_GE_PE"):
        shape_of(make_settings(tmp_path, backend="gridengine"), {"cpus": 2})


def test_the_local_backend_takes_no_resources(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="need a batch backend"):
        shape_of(make_settings(tmp_path), {"gpus": 1})


@pytest.mark.anyio
async def test_a_profile_is_a_lane_of_its_own_on_its_own_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start_new_session(profile=...) (issue 15): the profile's table of the config file wins
    over the server's settings (an environment aimed at one cluster does not leak into
    another's profile); the rest is the server's; an unknown profile names the known ones."""
    from jlabgw.cluster.backends.gridengine import GridEngineBackend
    from jlabgw.sessions.lanes import Lanes
    from tests.session_fakes import FakeBackend

    config = tmp_path / "config.toml"
    config.write_text(
        '[profiles.ge]\nbackend = "gridengine"\nssh_host = "alice@ge-login"\n'
        'ge_pe = "smp"\njob_name = "nb-ge"\n'
        '[profiles.other]\nbackend = "slurm"\nssh_host = "bob@other"\n'
    )
    monkeypatch.setenv("JLABGW_CONFIG", str(config))
    settings = make_settings(tmp_path, backend="slurm", ssh_host="me@main-login")
    lanes = Lanes(settings, FakeBackend(), lambda: None)
    assert await lanes.lane_for(None) == ""
    assert await lanes.lane_for(None, "ge") == "@ge"
    backend = lanes.backend("@ge")
    assert isinstance(backend, GridEngineBackend)
    ge = profile_settings(settings, "ge")
    assert (ge.ssh_host, ge.ge_pe, ge.job_name) == ("alice@ge-login", "smp", "nb-ge")
    assert ge.notebook_dir == settings.notebook_dir  # not in the profile: the server's
    shaped = await lanes.lane_for({"cpus": 2, "gpus": None}, "ge")
    assert shaped.startswith("@ge,cpus=2")
    assert await lanes.lane_for(None, "ge") == "@ge"  # the same lane again
    with pytest.raises(ConfigError, match=r"'nope' is not defined .*profiles there: ge, other"):
        await lanes.lane_for(None, "nope")


@pytest.mark.parametrize(
    ("time", "h_rt"),
    [
        ("30", "0:30:00"),  # a bare number is minutes, as sbatch --time reads it
        ("30:15", "0:30:15"),
        ("04:00:00", "4:00:00"),
        ("1-12", "36:00:00"),  # days-hours
        ("1-02:30", "26:30:00"),
        ("1-02:00:00", "26:00:00"),
    ],
)
def test_grid_engine_reads_a_walltime_as_slurm_does(tmp_path: Path, time: str, h_rt: str) -> None:
    settings = make_settings(tmp_path, backend="gridengine")
    assert shape_of(settings, {"time": time})[1].ge_h_rt == h_rt


def test_grid_engine_keeps_a_bare_flag_resource(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, backend="gridengine", ge_resources="exclusive,h_vmem=2G")
    assert shape_of(settings, {"gpus": 2})[1].ge_resources == "exclusive,h_vmem=2G,gpu=2"
