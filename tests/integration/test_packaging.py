"""The wheel: built from this checkout, installed into a fresh venv, it runs.

Offline: the wheel is built without build isolation (hatchling comes from the test extras),
and installed with ``--no-deps --no-index``; the fresh venv finds the dependencies through
PYTHONPATH pointing at the test environment's site-packages, whose own jlabgw (an editable
install, a .pth file) does not load from there. The test checks that the jlabgw which runs is
the installed wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import jlabgw

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = dist.glob("jlabgw-*.whl")
    assert wheel.name.startswith(f"jlabgw-{jlabgw.__version__}-")  # version from one place
    names = zipfile.ZipFile(wheel).namelist()
    assert "jlabgw/batch_templates/slurm.sbatch" in names
    assert "jlabgw/node/job_supervisor.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    env = {
        "PATH": f"{env_dir / 'bin'}:{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "PYTHONPATH": sysconfig.get_paths()["purelib"],  # the dependencies, not jlabgw
        "JLABGW_CONFIG": str(tmp_path / "none.toml"),
        "JLABGW_NOTEBOOK_DIR": str(tmp_path / "notebooks"),
        "JLABGW_STATE_DIR": str(tmp_path / "state"),
    }
    (tmp_path / "none.toml").touch()

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path
        )

    where = run(
        str(python),
        "-c",
        "import jlabgw, jlabgw.cluster.slurm.batch as b; print(jlabgw.__file__); "
        "print(len(b.default_template()) > 0, b.__file__)",
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.splitlines()[0].startswith(str(env_dir))  # the wheel, not the checkout
    assert where.stdout.splitlines()[1].startswith("True")
    script = env_dir / "bin" / "jlabgw"
    helped = run(str(script), "--help")
    assert helped.returncode == 0, helped.stderr
    assert "doctor" in helped.stdout
    assert "tunnel" in helped.stdout
    version = run(str(script), "--version")
    assert version.stdout.strip() == f"jlabgw {jlabgw.__version__}"
    # the quickstart: code through a local gateway into a notebook
    quick = run(str(script), "run", "-c", "import sys; print(sys.prefix); 6 * 7")
    assert quick.returncode == 0, quick.stderr
    assert quick.stdout.splitlines() == [str(env_dir), "42"]
    assert (tmp_path / "notebooks" / "run.ipynb").exists()
