"""Settings that become parts of paths are validated (issue 13): ``job_name`` names the batch
script and the connection files on the cluster and the state file here."""

from __future__ import annotations

from pathlib import Path

import pytest

from jlabgw.config import load_settings
from jlabgw.errors import ConfigError


@pytest.mark.parametrize(
    "name",
    ["../../x", "a/b", ".hidden", "..", "x y", "x;rm -rf ~", "a\nb", "", "é", "j" * 129, "-x"],
)
def test_job_name_that_could_leave_its_directory_is_refused(tmp_path: Path, name: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"JLABGW_CONFIG": str(cfg), "JLABGW_JOB_NAME": name})
    message = str(info.value)
    assert message.startswith("invalid setting JLABGW_JOB_NAME="), message
    assert "(from environment)" in message


@pytest.mark.parametrize("name", ["jlabgw", "my-job_2.gpu", "J" * 128, "_x"])
def test_ordinary_job_names_pass(tmp_path: Path, name: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    assert (
        load_settings(environ={"JLABGW_CONFIG": str(cfg), "JLABGW_JOB_NAME": name}).job_name == name
    )
