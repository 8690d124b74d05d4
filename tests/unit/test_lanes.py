"""Resource shapes: which requests share a job, and what a bad request says."""

from __future__ import annotations

from pathlib import Path

import pytest

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
