"""The files in examples/ work as shipped: configs load, templates render and parse."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from jlabgw.cluster.slurm.batch import render_batch_script
from jlabgw.config import load_settings, resolve_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_sample_config_loads_with_each_profile(tmp_path: Path) -> None:
    env = {"JLABGW_CONFIG": str(EXAMPLES / "config.toml"), "HOME": str(tmp_path)}
    resolved = resolve_settings(environ=env)
    assert resolved.profiles == ["cpu", "gpu", "laptop"]
    assert resolved.settings.backend == "slurm"
    gpu = load_settings({"profile": "gpu"}, environ=env)
    assert (gpu.slurm_partition, gpu.slurm_gres, gpu.slurm_time) == (
        "gpu",
        "gpu:a100:1",
        "08:00:00",
    )
    assert gpu.ssh_host == "hpc-login"
    assert load_settings({"profile": "laptop"}, environ=env).backend == "local"
    cpu = load_settings({"profile": "cpu"}, environ=env)
    script = render_batch_script(cpu)
    assert "#SBATCH --partition=standard" in script
    assert "source ~/envs/jlabgw/bin/activate" in script


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_site_template_renders_and_parses(tmp_path: Path) -> None:
    env = {
        "JLABGW_CONFIG": str(EXAMPLES / "config.toml"),
        "JLABGW_BATCH_TEMPLATE": str(EXAMPLES / "templates" / "conda-gpu.sbatch"),
    }
    settings = load_settings({"profile": "gpu"}, environ=env)
    script = render_batch_script(settings)
    assert "#SBATCH --gres=gpu:a100:1" in script
    assert "conda activate jlabgw-gpu" in script
    assert "{{" not in script
    parsed = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert parsed.returncode == 0, parsed.stderr


def test_client_configs_are_valid_json_with_the_server() -> None:
    for name in ("claude_desktop_config.json", "claude_desktop_config.local.json", ".mcp.json"):
        data = json.loads((EXAMPLES / name).read_text())
        server = data["mcpServers"]["jlabgw"]
        assert server["args"] == ["serve"]
        assert server["command"].endswith("jlabgw")
    desktop = json.loads((EXAMPLES / "claude_desktop_config.json").read_text())
    # Claude Desktop starts servers with a stripped environment: these must be explicit
    assert {"HOME", "SSH_AUTH_SOCK", "JLABGW_CONFIG"} <= set(desktop["mcpServers"]["jlabgw"]["env"])
