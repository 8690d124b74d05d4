"""The jlabgw command line, run as a user would."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import nbformat
import pytest

from tests.helpers import PYTHON, server_env, wait_until

pytestmark = pytest.mark.integration


def jlabgw(
    root: Path, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "jlabgw", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env=server_env(root, **env),
    )


def test_run_code_prints_outputs_and_records_a_notebook(tmp_path: Path) -> None:
    done = jlabgw(tmp_path, "run", "-c", "print('hello')\n6 * 7")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello\n42\n"
    assert "recorded in" in done.stderr
    nb = nbformat.read(tmp_path / "notebooks" / "run.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].source == "print('hello')\n6 * 7"
    assert nb.cells[0].execution_count == 1


def test_run_file_error_exit_code_and_notebook_append(tmp_path: Path) -> None:
    script = tmp_path / "analysis.py"
    script.write_text("import math\nprint(math.sqrt(16))\n")
    done = jlabgw(tmp_path, "run", str(script), "--notebook", "log.ipynb")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "4.0\n"
    failed = jlabgw(tmp_path, "run", "-c", "1/0", "--notebook", "log.ipynb")
    assert failed.returncode == 1
    assert "ZeroDivisionError" in failed.stdout
    nb = nbformat.read(tmp_path / "notebooks" / "log.ipynb", as_version=4)
    assert [c.source for c in nb.cells] == [script.read_text(), "1/0"]
    stdin_run = jlabgw(tmp_path, "run", "-", stdin="print('from stdin')")
    assert stdin_run.stdout == "from stdin\n"


def test_config_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    done = jlabgw(tmp_path, "status", JLABGW_PROGRESS_INTERVAL="-3")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "JLABGW_PROGRESS_INTERVAL='-3' (from environment)" in lines[0]
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text("backend = 'slurmish'\n")
    done = jlabgw(tmp_path, "--config", str(bad_file), "status")
    assert done.returncode == 2
    assert "JLABGW_BACKEND='slurmish' (from config file" in done.stderr


@pytest.mark.parametrize("command", [[], ["serve"], ["run"], ["status"], ["stop"]])
def test_help_everywhere(tmp_path: Path, command: list[str]) -> None:
    done = jlabgw(tmp_path, *command, "--help")
    assert done.returncode == 0
    assert "usage: jlabgw" in done.stdout


def test_status_and_stop_a_running_server(tmp_path: Path) -> None:
    assert "no jlabgw server running" in jlabgw(tmp_path, "status").stdout
    env = server_env(tmp_path)
    with (
        (tmp_path / "server.log").open("w") as log,
        subprocess.Popen(
            [PYTHON, "-m", "jlabgw", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            cwd=tmp_path,
        ) as server,
    ):
        try:
            _check_status_then_stop(tmp_path, server)
        finally:
            if server.poll() is None:  # a failed check: stop it the graceful way (no orphans)
                server.terminate()
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


def _check_status_then_stop(tmp_path: Path, server: subprocess.Popen[bytes]) -> None:
    def gateway_up() -> bool:
        states = json.loads(jlabgw(tmp_path, "status", "--json").stdout)
        return bool(states) and states[0]["gateway"]["state"] == "running"

    assert wait_until(gateway_up, timeout=30, interval=0.3)
    [state] = json.loads(jlabgw(tmp_path, "status", "--json").stdout)
    assert state["pid"] == server.pid
    # what scripts may read: the state file's keys, and where it is
    keys = (
        "pid started_at updated_at server_pid backend gateway notebook_dir spare_kernel "
        "sessions jobs"
    )
    assert set(state) >= {*keys.split(), "state_file"}
    assert set(state["gateway"]) >= {"state", "url", "pid", "token_file", "start_seconds"}
    token_file = Path(state["gateway"]["token_file"])
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = json.loads(token_file.read_text())["KernelGatewayApp"]["auth_token"]
    assert token not in json.dumps(state)  # where the token is, never the token
    human = jlabgw(tmp_path, "status").stdout
    assert f"server pid {server.pid}" in human
    assert "gateway: running https://127.0.0.1:" in human

    stopped = jlabgw(tmp_path, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped server pid {server.pid}" in stopped.stdout
    assert server.wait(timeout=30) == 0
    gateway_pid = state["gateway"]["pid"]
    assert not Path(f"/proc/{gateway_pid}").exists()
    assert "no jlabgw server running" in jlabgw(tmp_path, "status").stdout


def _read_until(proc: subprocess.Popen[str], marker: str, limit: int = 40) -> list[str]:
    lines: list[str] = []
    assert proc.stdout is not None
    for _ in range(limit):  # bounded: the command prints a handful of lines
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} not printed; got {lines}")


def _curl_line_works(lines: list[str]) -> None:
    curl = next(line for line in lines if line.startswith("try:")).removeprefix("try:").strip()
    done = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
    assert '"kernelspecs"' in done.stdout, (curl, done.stdout, done.stderr)


def test_tunnel_local_starts_a_gateway_and_prints_a_working_curl(tmp_path: Path) -> None:
    env = server_env(tmp_path)
    with subprocess.Popen(
        [PYTHON, "-m", "jlabgw", "tunnel"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp_path,
    ) as proc:
        try:
            lines = _read_until(proc, "Ctrl-C")
            printed = "".join(lines)
            assert "gateway: https://127.0.0.1:" in printed
            assert "--cacert" in printed  # the gateway's own certificate, pinned
            assert "mode 0600" in printed
            token_file = Path(printed.split("token:   in ", 1)[1].split(" ", 1)[0])
            token = json.loads(token_file.read_text())["KernelGatewayApp"]["auth_token"]
            assert token not in printed  # where the token is, never the token
            _curl_line_works(lines)
            proc.send_signal(2)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert not token_file.exists()  # the gateway and its secret file are gone


def test_config_shows_each_setting_with_its_source_and_masks_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        'exec_wait = 12\n[profiles.gpu]\nslurm_gres = "gpu:1"\n'
        'remote_setup = "module load cuda\\nexport HF_TOKEN=hf_abcdef123"\n'
    )
    done = jlabgw(
        tmp_path, "config", "--profile", "gpu", JLABGW_CONFIG=str(cfg), JLABGW_OUTPUT_LIMIT="5000"
    )
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("JL")}
    assert lines["JLABGW_EXEC_WAIT"].endswith(f"12.0  [config file {cfg}]")
    assert lines["JLABGW_SLURM_GRES"].endswith(f"gpu:1  [config file {cfg} [profiles.gpu]]")
    assert lines["JLABGW_OUTPUT_LIMIT"].endswith("5000  [environment]")
    assert lines["JLABGW_PROFILE"].endswith("gpu  [command line]")
    assert lines["JLABGW_KERNEL_NAME"].endswith("python3  [default]")
    assert "hf_abcdef123" not in done.stdout
    assert "HF_TOKEN=***" in done.stdout
    as_json = json.loads(
        jlabgw(tmp_path, "config", "--json", "--profile", "gpu", JLABGW_CONFIG=str(cfg)).stdout
    )
    assert as_json["slurm_gres"] == {
        "value": "gpu:1",
        "source": f"config file {cfg} [profiles.gpu]",
    }


def test_doctor_on_a_working_local_setup(tmp_path: Path) -> None:
    done = jlabgw(tmp_path, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    names = [line[2:].split("  ")[0].strip() for line in done.stdout.splitlines()[1:-1]]
    assert names == [
        "config",
        "notebook dir",
        "state dir",
        "jupyter packages",
        "kernel spec",
        "gateway start",
    ]
    assert all(line.startswith("✓") for line in done.stdout.splitlines()[1:-1]), done.stdout
    assert "a gateway started and answered in" in done.stdout
    assert done.stdout.splitlines()[-1] == "all checks passed"


def test_doctor_reports_what_is_broken_with_the_fix(tmp_path: Path) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("backend = slurm\n")
    done = jlabgw(tmp_path, "doctor", JLABGW_CONFIG=str(bad_toml))
    assert done.returncode == 1
    assert "✗ config" in done.stdout
    assert "is not valid TOML" in done.stdout
    assert "fix: " in done.stdout

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the notebook dir should be")
    done = jlabgw(
        tmp_path, "doctor", JLABGW_NOTEBOOK_DIR=str(blocked), JLABGW_KERNEL_NAME="julia-1.10"
    )
    assert done.returncode == 1
    out = re.sub(" {2,}", "  ", done.stdout)  # column padding aside
    assert f"✗ notebook dir  {blocked} is not writable" in out
    assert "fix: set JLABGW_NOTEBOOK_DIR" in out
    assert "✗ kernel spec  no kernel spec 'julia-1.10' here (available: python3" in out
    assert "– gateway start  skipped: needs kernel spec" in out
    assert out.splitlines()[-1] == "2 check(s) failed"
