"""Rendering the Grid Engine job script (pure function) against golden files and hostile
values."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jlabgw.cluster.batch_script import package_source
from jlabgw.cluster.gridengine.batch import (
    PLACEHOLDERS,
    GridEngineOptions,
    ge_directives,
    render_batch_script,
)
from jlabgw.cluster.slurm.batch import render_batch_script as render_sbatch
from jlabgw.errors import ConfigError
from tests.helpers import make_settings

GOLDEN = Path(__file__).parent.parent / "golden"
UPDATE = False  # True once to rewrite the golden files after a deliberate change


def normalised(script: str) -> str:
    """The script with the embedded modules replaced by markers (they have their own tests)."""
    for module in ("gateway_ext.py", "job_supervisor.py"):
        script = script.replace(package_source(module), f"<embedded jlabgw/{module}>")
    return script


FULL = GridEngineOptions(
    queue="gpu.q@node1|long.q",
    h_rt="24:00:00",
    pe="smp",
    slots="16",
    resources="h_vmem=4G,gpu=1",
    project="proj-42",
    extra="#$ -m n\n\n#$ -l exclusive=true",
)


@pytest.mark.parametrize(
    ("name", "options", "extra"),
    [
        ("gridengine_default.sh", GridEngineOptions(), {}),
        (
            "gridengine_full.sh",
            FULL,
            {
                "remote_setup": "module load cuda/12\nsource ~/venvs/jg/bin/activate",
                "connection_dir": "/scratch/me/jlabgw",
                "kernel_idle_timeout": "600",
                "job_idle_timeout": "0",
            },
        ),
    ],
)
def test_golden(
    tmp_path: Path, name: str, options: GridEngineOptions, extra: dict[str, str]
) -> None:
    script = normalised(render_batch_script(make_settings(tmp_path, **extra), options))
    if UPDATE:
        (GOLDEN / name).write_text(script)
    assert script == (GOLDEN / name).read_text()


def test_same_job_code_as_the_sbatch_script(tmp_path: Path) -> None:
    """Everything after the directives is the SLURM script's, but for the job id variable."""
    settings = make_settings(tmp_path, remote_setup="echo hi")
    ge = normalised(render_batch_script(settings, GridEngineOptions()))
    slurm = normalised(render_sbatch(settings))
    tail = ge.split("set -eo pipefail", 1)[1]
    assert tail == slurm.split("set -eo pipefail", 1)[1].replace("SLURM_JOB_ID", "JOB_ID")
    assert package_source("job_supervisor.py") in render_batch_script(settings, GridEngineOptions())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("queue", "all.q -l h_rt=99:00:00"),
        ("queue", "a'b"),
        ("resources", "h_vmem=4G\n#$ -P steal"),
        ("project", "$(id)"),
        ("pe", "smp;rm"),
        ("queue", "a\tb"),
        ("project", "p#x"),
    ],
)
def test_unsafe_values_refused(tmp_path: Path, field: str, value: str) -> None:
    options = GridEngineOptions(**{field: value, **({"pe": "smp"} if field != "pe" else {})})
    with pytest.raises(ConfigError, match="Grid Engine directive values"):
        ge_directives(make_settings(tmp_path), options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (GridEngineOptions(h_rt="8h"), "not a Grid Engine time"),
        (GridEngineOptions(slots="4"), "needs a parallel environment"),
        (GridEngineOptions(pe="smp", slots="0"), "whole number"),
        (GridEngineOptions(pe="smp", slots="two"), "whole number"),
        (GridEngineOptions(extra="rm -rf ~"), "is not a '#\\$ -option' line"),
        (GridEngineOptions(extra="#$ -N x\x1b[31m"), "is not a '#\\$ -option' line"),
    ],
)
def test_bad_options_refused(tmp_path: Path, options: GridEngineOptions, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ge_directives(make_settings(tmp_path), options)


def test_job_name_must_not_start_with_a_digit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="start with a digit"):
        ge_directives(make_settings(tmp_path, job_name="1job"), GridEngineOptions())


def test_directive_order_and_defaults(tmp_path: Path) -> None:
    assert ge_directives(make_settings(tmp_path), GridEngineOptions(pe="mpi*")) == [
        "#$ -N jlabgw",
        "#$ -S /bin/bash",
        "#$ -j y",
        "#$ -pe mpi* 1",
    ]


def test_unknown_placeholder_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        render_batch_script(
            make_settings(tmp_path),
            GridEngineOptions(),
            "#!/bin/bash\n{{ge_directives}}\n{{sbatch_directives}}\n",
        )
    message = str(info.value)
    assert "{{sbatch_directives}}" in message
    assert all("{{" + p + "}}" in message for p in PLACEHOLDERS)


def test_rendered_script_is_valid_bash(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(render_batch_script(make_settings(tmp_path), FULL))
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
