"""Rendering the sbatch script (pure function) against golden files and hostile values."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jlabgw.cluster.batch_script import package_source
from jlabgw.cluster.slurm.batch import (
    PLACEHOLDERS,
    render_batch_script,
    sbatch_directives,
)
from jlabgw.config import Settings
from jlabgw.errors import ConfigError
from tests.helpers import make_settings

GOLDEN = Path(__file__).parent.parent / "golden"


def normalised(script: str) -> str:
    """The script with the embedded modules replaced by markers (they have their own tests)."""
    for module in ("gateway_ext.py", "job_supervisor.py"):
        script = script.replace(package_source(module), f"<embedded jlabgw/{module}>")
    return script


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("slurm_default.sbatch", {}),
        (
            "slurm_gpu.sbatch",
            {
                "slurm_partition": "gpu",
                "slurm_time": "1-00:00:00",
                "slurm_cpus": "16",
                "slurm_mem": "64G",
                "slurm_gres": "gpu:a100:1",
                "slurm_account": "proj-42",
                "slurm_qos": "normal",
                "slurm_constraint": "a100&ib",
                "slurm_extra": "#SBATCH --exclusive\n\n#SBATCH --mail-type=END",
                "remote_setup": "module load cuda/12\nsource ~/venvs/jg/bin/activate",
                "connection_dir": "/scratch/me/jlabgw",
                "kernel_idle_timeout": "600",
                "job_idle_timeout": "0",
            },
        ),
    ],
)
def test_golden(tmp_path: Path, name: str, extra: dict[str, str]) -> None:
    script = normalised(render_batch_script(make_settings(tmp_path, **extra)))
    assert script == (GOLDEN / name).read_text()


def test_every_value_is_quoted(tmp_path: Path) -> None:
    hostile = "gpu'; touch /tmp/pwned; echo '$(id)"
    settings = make_settings(
        tmp_path,
        slurm_partition=hostile,
        slurm_account="my job $(x)",  # job_name itself is refused by Settings
        connection_dir="~/dir with space/'q'",
    )
    lines = sbatch_directives(settings)
    assert "#SBATCH --account='my job $(x)'" in lines
    assert lines[1] == "#SBATCH --partition='gpu'\"'\"'; touch /tmp/pwned; echo '\"'\"'$(id)'"
    script = render_batch_script(settings)
    assert "connection_dir=\"$HOME\"/'dir with space/'\"'\"'q'\"'\"''" in script
    # bash reads it back as exactly the value given
    line = next(x for x in script.splitlines() if x.startswith("connection_dir="))
    printed = subprocess.run(
        ["bash", "-c", f'HOME=/h; {line}; printf %s "$connection_dir"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == "/h/dir with space/'q'"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("slurm_partition", "gpu\n#SBATCH --account=steal"),
        ("slurm_mem", "4G\r"),
        ("slurm_qos", "a\tb"),
    ],
)
def test_control_characters_refused(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match="control character"):
        sbatch_directives(make_settings(tmp_path, **{key: value}))


def test_extra_lines_must_be_directives(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is not an '#SBATCH --option' line"):
        sbatch_directives(make_settings(tmp_path, slurm_extra="rm -rf ~"))


def test_unknown_placeholder_lists_valid_ones(tmp_path: Path) -> None:
    settings: Settings = make_settings(tmp_path)
    with pytest.raises(ConfigError) as info:
        render_batch_script(settings, "#!/bin/bash\n{{sbatch_directives}}\n{{partiton}}\n")
    message = str(info.value)
    assert "{{partiton}}" in message
    assert all("{{" + p + "}}" in message for p in PLACEHOLDERS)


def test_user_template_from_settings(tmp_path: Path) -> None:
    template = tmp_path / "site.sbatch"
    template.write_text(
        "#!/bin/bash\n{{sbatch_directives}}\n#SBATCH --reservation=lab\n"
        "echo ${HOME} {{ job_idle }}\n"
    )
    settings = make_settings(tmp_path, batch_template=str(template), job_idle_timeout="77")
    script = render_batch_script(settings)
    assert script.endswith("#SBATCH --reservation=lab\necho ${HOME} 77\n")
    missing = make_settings(tmp_path, batch_template=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="JLABGW_BATCH_TEMPLATE"):
        render_batch_script(missing)


def test_rendered_script_is_valid_bash(tmp_path: Path) -> None:
    script = tmp_path / "job.sbatch"
    script.write_text(render_batch_script(make_settings(tmp_path, remote_setup="echo hi")))
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
