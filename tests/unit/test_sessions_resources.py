"""The node probe behind check_resources (sessions.node_probe): GPUs as nvidia-smi reports
them (a stand-in nvidia-smi on PATH), its failure said rather than raised, and the probe's
source runs on its own (as it does in a kernel on a cluster node)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jlabgw.sessions import node_probe


def fake_smi(tmp_path: Path, script: str) -> str:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n{script}\n")
    smi.chmod(0o755)
    return f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"


def test_gpus_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = "NVIDIA A100-SXM4-40GB, 40960, 1024, 37\\nTesla T4, 15360, [N/A], 0"
    monkeypatch.setenv("PATH", fake_smi(tmp_path, f'printf "{rows}\\n"'))
    info = node_probe.probe(str(tmp_path))
    assert info["gpus"] == [
        {
            "name": "NVIDIA A100-SXM4-40GB",
            "memory_total_mib": 40960.0,
            "memory_used_mib": 1024.0,
            "utilization_percent": 37.0,
        },
        {
            "name": "Tesla T4",
            "memory_total_mib": 15360.0,
            "memory_used_mib": None,
            "utilization_percent": 0.0,
        },
    ]
    assert info["disk"]["path"] == str(tmp_path)


def test_a_failing_nvidia_smi_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", fake_smi(tmp_path, "echo 'no devices' >&2; exit 9"))
    gpus = node_probe.probe()["gpus"]
    assert isinstance(gpus, dict)
    assert gpus["error"].startswith("nvidia-smi failed")


def test_the_probe_source_runs_on_its_own(tmp_path: Path) -> None:
    code = inspect.getsource(node_probe) + "\nimport json\nprint(json.dumps(probe()))\n"
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    info = json.loads(out)
    assert set(info) == {"host", "cpus", "memory", "gpus", "disk"}
    assert info["cpus"]["count"] == os.cpu_count()
