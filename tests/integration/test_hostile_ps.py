"""Another user on the same machine reads every process's argv (``ps``): the curl line that
``jlabgw tunnel`` prints must keep the gateway token out of it (issue 13). The printed line is run
by bash with ``curl`` and ``python3`` shims on PATH that record their argv, then exec the real
programs against the real local gateway."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers import PYTHON, server_env

pytestmark = pytest.mark.integration

SHIM = """#!/bin/sh
printf '%s\\n' "$0 $*" >> {log}
exec {real} "$@"
"""


def _shims(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, log = tmp_path / "shims", tmp_path / "argv.log"
    bin_dir.mkdir()
    for name in ("curl", "python3"):
        real = shutil.which(name)
        assert real, f"{name} is not installed"
        shim = bin_dir / name
        shim.write_text(SHIM.format(log=log, real=real))
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return bin_dir, log


def test_the_printed_curl_keeps_the_token_out_of_argv(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    with subprocess.Popen(
        [PYTHON, "-m", "jlabgw", "tunnel"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=server_env(tmp_path),
        cwd=tmp_path,
    ) as proc:
        try:
            assert proc.stdout is not None
            lines: list[str] = []
            while not lines or "Ctrl-C" not in lines[-1]:  # bounded: a handful of lines
                lines.append(proc.stdout.readline())
                assert lines[-1], lines
                assert len(lines) < 40, lines
            printed = "".join(lines)
            token_file = Path(printed.split("token:   in ", 1)[1].split(" ", 1)[0])
            token = json.loads(token_file.read_text())["KernelGatewayApp"]["auth_token"]
            line = next(x for x in lines if x.startswith("try:")).removeprefix("try:").strip()
            bin_dir, log = _shims(tmp_path)
            env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
            done = subprocess.run(
                ["bash", "-c", line], capture_output=True, text=True, timeout=30, env=env
            )
            argv = log.read_text()
            print(f"printed: {line}\nargv seen:\n{argv}")
            assert '"kernelspecs"' in done.stdout, (line, done.stdout, done.stderr)
            assert "curl" in argv
            assert token not in argv
            assert token not in line
        finally:
            proc.send_signal(2)
            proc.wait(timeout=30)
