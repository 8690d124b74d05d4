"""The SSH layer against a real OpenSSH sshd on 127.0.0.1 (tests/sshd.py)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jlabgw.cluster.backends import LocalBackend
from jlabgw.cluster.host import LocalHost, SSHHost
from jlabgw.cluster.ssh.connection import SSHConnection
from jlabgw.cluster.ssh.forward import Forwarder
from jlabgw.config import Settings
from jlabgw.errors import CommandError, HostKeyError, SSHAuthError, SSHConnectError
from jlabgw.jupyter.channels import KernelConnection
from jlabgw.jupyter.endpoint import GatewayEndpoint
from jlabgw.jupyter.rest import GatewayClient
from tests.helpers import make_settings, wait_until
from tests.sshd import SSHDServer

pytestmark = pytest.mark.integration


def ssh_settings(tmp_path: Path, sshd: SSHDServer, **extra: str) -> Settings:
    values = {
        "ssh_host": f"{sshd.user}@{sshd.host}:{sshd.port}",
        "ssh_key": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts),
        "ssh_config": str(tmp_path / "no-ssh-config"),
        "ssh_timeout": "5",
    }
    values.update(extra)
    return make_settings(tmp_path, **values)


@pytest.fixture
def conn(tmp_path: Path, sshd: SSHDServer) -> Iterator[SSHConnection]:
    settings = ssh_settings(tmp_path, sshd)
    connection = SSHConnection(settings.ssh_host, settings)
    yield connection
    connection.close()


def test_key_auth_quoting_exit_codes_and_stdin(conn: SSHConnection) -> None:
    assert conn.run(["whoami"]).stdout == "jlabgw-test\n"
    hostile = ["a b", "$(whoami)", "it's", "`id`", "; rm -rf ~", "\\n"]
    assert conn.run(["printf", "%s\\n", *hostile]).stdout.splitlines() == hostile
    result = conn.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    with pytest.raises(CommandError) as info:
        conn.run(["sh", "-c", "echo nope >&2; exit 7"])
    assert info.value.returncode == 7
    assert info.value.stderr == "nope\n"
    assert "exit code 7" in str(info.value)
    assert "jlabgw-test@127.0.0.1" in str(info.value)
    # secrets go through stdin, not argv
    assert conn.run(["cat"], input=b"s3cret-token").stdout == "s3cret-token"


def test_connection_is_primed_and_nodelay(conn: SSHConnection) -> None:
    import socket

    sock = conn.transport.sock
    assert isinstance(sock, socket.socket)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert conn.transport.is_active()


def test_unknown_host_key_is_refused_with_a_fix(tmp_path: Path, sshd: SSHDServer) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    settings = ssh_settings(tmp_path, sshd, known_hosts=str(empty))
    with pytest.raises(HostKeyError) as info:
        SSHConnection(settings.ssh_host, settings).run(["true"])
    message = str(info.value)
    assert "SHA256:" in message
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in message
    assert "never accepts host keys" in message
    assert empty.read_text() == ""  # nothing was added
    missing = ssh_settings(tmp_path, sshd, known_hosts=str(tmp_path / "absent"))
    with pytest.raises(HostKeyError, match="does not exist"):
        SSHConnection(missing.ssh_host, missing).run(["true"])


def test_changed_host_key_is_refused(tmp_path: Path, sshd: SSHDServer) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    settings = ssh_settings(tmp_path, sshd, known_hosts=str(wrong))
    with pytest.raises(HostKeyError, match=r"HOST KEY MISMATCH.*ssh-keygen -R"):
        SSHConnection(settings.ssh_host, settings).run(["true"])


def test_wrong_key_and_unreachable_host(tmp_path: Path, sshd: SSHDServer) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    settings = ssh_settings(tmp_path, sshd, ssh_key=str(stranger))
    with pytest.raises(SSHAuthError, match="accepted none of our keys"):
        SSHConnection(settings.ssh_host, settings).run(["true"])
    closed = ssh_settings(tmp_path, sshd, ssh_host=f"{sshd.user}@127.0.0.1:1")
    with pytest.raises(SSHConnectError, match=r"cannot connect to jlabgw-test@127\.0\.0\.1:1"):
        SSHConnection(closed.ssh_host, closed).run(["true"])


def write_ssh_config(path: Path, sshd: SSHDServer, target_extra: str) -> Path:
    path.write_text(
        f"""
Host jump
    HostName {sshd.host}
    Port {sshd.port}
    User {sshd.user}
    IdentityFile {sshd.client_key}

Host cluster
    HostName {sshd.host}
    Port {sshd.port}
    User {sshd.user}
    IdentityFile {sshd.client_key}
    ServerAliveInterval 7
{target_extra}
"""
    )
    return path


def test_proxyjump_through_a_second_hop(tmp_path: Path, sshd: SSHDServer) -> None:
    config = write_ssh_config(tmp_path / "ssh_config", sshd, "    ProxyJump jump")
    settings = make_settings(
        tmp_path, ssh_host="cluster", ssh_config=str(config), known_hosts=str(sshd.known_hosts)
    )
    connection = SSHConnection("cluster", settings)
    try:
        assert connection.spec.proxy_jump == ("jump",)
        assert connection.spec.keepalive == 7
        assert connection.run(["whoami"]).stdout == "jlabgw-test\n"
        assert len(connection._chain) == 2  # jump host, then the target through it
        # the target's socket is a direct-tcpip channel of the jump connection, not a TCP socket
        import paramiko

        assert isinstance(connection.transport.sock, paramiko.Channel)
    finally:
        connection.close()


def test_proxycommand(tmp_path: Path, sshd: SSHDServer) -> None:
    proxy = (
        f"    ProxyCommand ssh -q -W %h:%p -i {sshd.client_key} -p {sshd.port} "
        f"-o BatchMode=yes -o UserKnownHostsFile={sshd.known_hosts} "
        f"-o StrictHostKeyChecking=yes {sshd.user}@{sshd.host}"
    )
    config = write_ssh_config(tmp_path / "ssh_config", sshd, proxy)
    settings = make_settings(
        tmp_path, ssh_host="cluster", ssh_config=str(config), known_hosts=str(sshd.known_hosts)
    )
    connection = SSHConnection("cluster", settings)
    try:
        assert connection.spec.proxy_command is not None
        assert str(sshd.port) in connection.spec.proxy_command  # %p expanded
        assert connection.run(["echo", "via proxy"]).stdout == "via proxy\n"
    finally:
        connection.close()


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_files_over_sftp_and_locally(tmp_path: Path, conn: SSHConnection, mode: int) -> None:
    remote = SSHHost(conn)
    path = f"jlabgw-test-{mode:o}.json"
    remote.write_bytes(path, b'{"token": "x"}', mode=mode)
    st = remote.stat(path)
    assert st is not None
    assert st.mode == mode
    assert st.size == 14
    assert remote.read_bytes(f"~/{path}") == b'{"token": "x"}'
    assert remote.stat("does-not-exist") is None
    listing = conn.run(["ls", "-a"]).stdout.split()
    assert not [n for n in listing if n.endswith(".tmp")]
    conn.run(["rm", "-f", path])

    local = LocalHost()
    target = str(tmp_path / "local.json")
    local.write_bytes(target, b"{}", mode=mode)
    local_stat = local.stat(target)
    assert local_stat is not None
    assert local_stat.mode == mode
    assert local.run(["sh", "-c", "exit 4"], check=False).returncode == 4
    with pytest.raises(CommandError, match="command not found"):
        local.run(["definitely-not-a-command-jlabgw"])


async def _execute(conn: KernelConnection, code: str) -> str:
    out: list[dict[str, Any]] = []
    reply = await conn.execute(code, out.append)
    assert reply["content"]["status"] == "ok", reply
    texts = []
    for m in out:
        if m["msg_type"] == "stream":
            texts.append(m["content"]["text"])
        elif m["msg_type"] == "execute_result":
            texts.append(m["content"]["data"]["text/plain"])
    return "".join(texts)


@pytest.mark.anyio
async def test_forwarder_carries_a_gateway_websocket_across_faults(
    tmp_path: Path, sshd: SSHDServer, shared_backend: LocalBackend
) -> None:
    direct = await shared_backend.start()
    gw_port = int(direct.url.rsplit(":", 1)[1])
    settings = ssh_settings(tmp_path, sshd)
    connection = SSHConnection(settings.ssh_host, settings)
    forwarder = Forwarder(connection, "127.0.0.1", gw_port).start()
    try:
        local_port = forwarder.local_port
        # TLS to the gateway's own certificate, end to end through the forward
        url = forwarder.url.replace("http://", "https://", 1) if direct.cert else forwarder.url
        endpoint = GatewayEndpoint(url=url, token=direct.token, cert=direct.cert)
        gateway = GatewayClient(endpoint)
        kernel = await gateway.start_kernel("python3")
        kc = KernelConnection(endpoint, kernel["id"])
        assert await _execute(kc, "x = 20; x + 1") == "21"

        # 1. connection killed while idle: the next call reconnects, state is kept
        assert sshd.drop_connections() > 0
        assert await asyncio.to_thread(wait_until, lambda: not kc.connected, 10)
        assert await _execute(kc, "x + 2") == "22"
        assert connection.reconnects == 1
        assert forwarder.local_port == local_port

        # 2. connection killed while a cell runs: it completes, output whole, run once
        code = (
            "import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.5)\n"
            "runs = globals().get('runs', 0) + 1"
        )
        running = asyncio.create_task(_execute(kc, code))
        await asyncio.sleep(0.6)
        assert sshd.drop_connections() > 0
        assert await asyncio.wait_for(running, 60) == "0\n1\n2\n3\n"
        assert kc.reopens >= 1
        assert await _execute(kc, "runs") == "1"

        # 3. sshd restarted, down for a couple of seconds, while a cell runs
        running = asyncio.create_task(_execute(kc, "time.sleep(1.5); print('after restart')"))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(sshd.restart, 2.0)
        assert await asyncio.wait_for(running, 90) == "after restart\n"
        assert await _execute(kc, "runs") == "1"
        assert connection.reconnects >= 3

        await kc.close()
        await gateway.delete_kernel(kernel["id"])
        await gateway.aclose()
    finally:
        forwarder.stop()
        connection.close()


def test_tunnel_command_forwards_and_reports_reconnects(
    tmp_path: Path, sshd: SSHDServer, shared_backend: LocalBackend
) -> None:
    import anyio
    import httpx

    from tests.helpers import PYTHON, server_env

    endpoint = anyio.run(shared_backend.start)
    gw_port = endpoint.url.rsplit(":", 1)[1]
    env = server_env(
        tmp_path,
        JLABGW_SSH_HOST=f"{sshd.user}@{sshd.host}:{sshd.port}",
        JLABGW_SSH_KEY=str(sshd.client_key),
        JLABGW_KNOWN_HOSTS=str(sshd.known_hosts),
        JLABGW_SSH_CONFIG=str(tmp_path / "none"),
    )
    with subprocess.Popen(
        [PYTHON, "-m", "jlabgw", "tunnel", "--remote", f"127.0.0.1:{gw_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(6)]
            forwarding = next(line for line in lines if line.startswith("forwarding"))
            url = forwarding.split()[1]
            assert url.startswith("http://127.0.0.1:")
            assert endpoint.token not in "".join(lines)
            headers = {"Authorization": f"token {endpoint.token}"}
            # --remote forwards bytes: TLS to the gateway's own certificate goes through it
            url = url.replace("http://", "https://", 1)
            verify = endpoint.ssl_context or True
            ok = httpx.get(f"{url}/api/kernelspecs", headers=headers, verify=verify)
            assert ok.status_code == 200

            assert sshd.drop_connections() > 0

            def answers() -> bool:
                try:
                    response = httpx.get(
                        f"{url}/api/kernelspecs", headers=headers, timeout=5, verify=verify
                    )
                except httpx.HTTPError:
                    return False  # the first try may meet the dying connection
                return response.status_code == 200

            assert wait_until(answers, timeout=30)
            assert proc.stdout.readline().startswith("reconnected to jlabgw-test@127.0.0.1")
            proc.send_signal(2)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_passphrase_key_through_ssh_agent(
    tmp_path: Path, sshd: SSHDServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    locked = tmp_path / "locked_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "correct horse", "-f", str(locked)],
        check=True,
    )
    authorized = sshd.authorized_keys
    original = authorized.read_text()
    authorized.write_text(original + Path(f"{locked}.pub").read_text())
    settings = ssh_settings(tmp_path, sshd, ssh_key=str(locked))
    try:
        # without an agent: a clear message about the passphrase
        monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
        with pytest.raises(SSHAuthError, match=r"passphrase-protected.*ssh-add"):
            SSHConnection(settings.ssh_host, settings).run(["true"])

        # with the key unlocked in a real ssh-agent: works, no passphrase anywhere in jlabgw
        sock = tmp_path / "agent.sock"
        agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
        try:
            assert wait_until(sock.exists, timeout=10)
            askpass = tmp_path / "askpass.sh"
            askpass.write_text("#!/bin/sh\necho 'correct horse'\n")
            askpass.chmod(0o700)
            env = dict(
                os.environ,
                SSH_AUTH_SOCK=str(sock),
                SSH_ASKPASS=str(askpass),
                SSH_ASKPASS_REQUIRE="force",
                DISPLAY=":0",
            )
            subprocess.run(
                ["ssh-add", str(locked)],
                env=env,
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=20,
            )
            monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
            agent_only = ssh_settings(tmp_path, sshd, ssh_key="")
            connection = SSHConnection(agent_only.ssh_host, agent_only)
            try:
                assert connection.run(["whoami"]).stdout == "jlabgw-test\n"
            finally:
                connection.close()
        finally:
            agent.terminate()
            agent.wait(timeout=10)
    finally:
        authorized.write_text(original)


def test_the_controlmaster_recipe_in_examples_carries_our_connection(
    tmp_path: Path, sshd: SSHDServer
) -> None:
    """examples/ssh/ssh_config.2fa, filled in for the test sshd: once the master is up, our
    connection goes through it and the login node sees one login (ours, with our key) instead
    of two; so a cluster's 2FA prompt is answered once, in the terminal, by OpenSSH."""
    import tempfile

    recipe = (Path(__file__).parents[2] / "examples" / "ssh" / "ssh_config.2fa").read_text()
    config = tmp_path / "ssh_config"
    control = Path(tempfile.mkdtemp(prefix="cm", dir="/tmp"))  # socket paths must be short
    extra = (
        f"    Port {sshd.port}\n    IdentityFile {sshd.client_key}\n"
        f"    UserKnownHostsFile {sshd.known_hosts}\n    StrictHostKeyChecking yes\n"
    )
    text = (
        recipe.replace("login.cluster.example.org", sshd.host)
        .replace("myuser", sshd.user)
        .replace("~/.ssh/cm-", f"{control}/cm-")
        .replace("ProxyCommand ssh ", f"ProxyCommand ssh -F {config} ")
        .replace("    User " + sshd.user + "\n", "    User " + sshd.user + "\n" + extra)
    )
    config.write_text(text)
    master = ["ssh", "-F", str(config), "hpc-master"]
    settings = make_settings(
        tmp_path, ssh_host="hpc-login", ssh_config=str(config), known_hosts=str(sshd.known_hosts)
    )

    def logins() -> int:
        return sshd.log.read_text().count("Accepted publickey")

    try:
        subprocess.run([*master[:3], "-fN", master[3]], check=True, timeout=30)
        subprocess.run([*master[:3], "-O", "check", master[3]], check=True, timeout=30)
        before = logins()
        connection = SSHConnection("hpc-login", settings)
        try:
            assert connection.spec.proxy_command is not None
            assert connection.run(["echo", "through the master"]).stdout == "through the master\n"
        finally:
            connection.close()
        assert logins() - before == 1  # paramiko's own; the stream came from the master
    finally:
        subprocess.run([*master[:3], "-O", "exit", master[3]], timeout=30, check=False)
        shutil.rmtree(control, ignore_errors=True)


def test_sftp_from_many_threads_at_once(tmp_path: Path, conn: SSHConnection) -> None:
    """The SLURM backend reads connection files from several worker threads at once (a lost
    gateway is checked by every session on it). paramiko's SFTP client mixes up concurrent
    requests and one of them then waits forever; SSHHost serialises them."""
    from concurrent.futures import ThreadPoolExecutor

    remote = SSHHost(conn)
    paths = [f"jlabgw-test-threads-{i}.json" for i in range(4)]
    for i, path in enumerate(paths):
        remote.write_bytes(path, f'{{"n": {i}}}'.encode())

    def work(n: int) -> bool:
        for k in range(15):
            path = paths[(n + k) % len(paths)]
            assert remote.read_bytes(path) == f'{{"n": {(n + k) % len(paths)}}}'.encode()
            assert remote.stat(path) is not None
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(work, n) for n in range(8)]
        assert all(f.result(timeout=120) for f in futures)
    for path in paths:
        remote.run(["rm", "-f", path])
