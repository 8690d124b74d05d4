"""Helpers shared by tests and benchmarks: settings and server environments, process lookup
via /proc, bounded waiting, notebooks on disk. Fixtures live in conftest.py; the MCP-over-stdio
client helpers in mcp_client.py."""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat

from jlabgw.config import Settings, load_settings
from jlabgw.processes import process_identity

PYTHON = sys.executable

# a 1x1 PNG shown with IPython.display: an image output without matplotlib
PNG_CODE = """
import base64, struct, zlib
from IPython.display import Image, display
def chunk(k, d):
    return struct.pack('>I', len(d)) + k + d + struct.pack('>I', zlib.crc32(k + d))
png = (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 1, 1, 8, 2, 0, 0, 0))
       + chunk(b'IDAT', zlib.compress(b'\\x00\\xff\\x00\\x00')) + chunk(b'IEND', b''))
display(Image(data=png))
"""


def make_settings(root: Path, **extra: str) -> Settings:
    """Settings under ``root``; an empty config file so the user's own config never leaks in."""
    root.mkdir(parents=True, exist_ok=True)
    empty = root / "empty-config.toml"
    empty.touch()
    env = {
        "JLABGW_NOTEBOOK_DIR": str(root / "notebooks"),
        "JLABGW_STATE_DIR": str(root / "state"),
        "JLABGW_CONFIG": str(empty),
        **{f"JLABGW_{k.upper()}": v for k, v in extra.items()},
    }
    return load_settings(environ=env)


def server_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for a jlabgw server subprocess: a clean one, as MCP clients give."""
    empty = root / "empty-config.toml"
    empty.touch()
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(root)),
        "JLABGW_CONFIG": str(empty),
        "JLABGW_NOTEBOOK_DIR": str(root / "notebooks"),
        "JLABGW_STATE_DIR": str(root / "state"),
        "JLABGW_LOG_LEVEL": "INFO",
        **extra,
    }


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for daemons that cannot bind port 0 themselves)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cmdlines() -> dict[int, str]:
    """pid → command line of every process we can see."""
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            out[int(entry.name)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return out


def pids_matching(text: str) -> list[int]:
    return [pid for pid, cmd in cmdlines().items() if text in cmd]


def process_environ(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")


def wait_until(
    predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05
) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed (bounded in count and time)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return predicate()


def listening_addresses(port: int) -> set[str]:
    """Addresses with a TCP socket listening on ``port`` on this machine (from /proc/net)."""
    import ipaddress

    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            found.add(str(ipaddress.ip_address(words)))
    return found


def notebook_cells(path: str, count: int) -> list[Any]:
    """Cells on disk once the writer has caught up (it coalesces for a fraction of a second)."""

    def ready() -> bool:
        try:
            return len(nbformat.read(path, as_version=4).cells) >= count
        except (OSError, ValueError):
            return False

    assert wait_until(ready, timeout=10), f"{path} never reached {count} cells"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return list(nb.cells)


def owner_of(pid: int) -> dict[str, str]:
    """The owner record (jlabgw.processes.this_owner's shape) of process ``pid``, which runs."""
    identity = process_identity(pid)
    assert identity is not None, f"process {pid} does not run"
    return {"host": socket.gethostname(), "process": identity}


def gateway_base(info: Any) -> tuple[str, ssl.SSLContext | bool]:
    """A published gateway's base URL on this machine's 127.0.0.1 and how to verify it: its
    own certificate from the connection file (a dict or a GatewayInfo), pinned (issue 13)."""
    cert = info.get("cert") if isinstance(info, dict) else info.cert
    port = info["port"] if isinstance(info, dict) else info.port
    if cert:
        return f"https://127.0.0.1:{port}", ssl.create_default_context(cadata=cert)
    return f"http://127.0.0.1:{port}", True


async def gateway_kernel_ids(conn_file: Path) -> set[str]:
    """Kernel ids a job's gateway lists, through its published connection file (pinned TLS)."""
    import httpx

    info = json.loads(conn_file.read_text())
    base, verify = gateway_base(info)
    async with httpx.AsyncClient(verify=verify) as http:
        reply = await http.get(
            f"{base}/api/kernels", headers={"Authorization": f"token {info['token']}"}, timeout=10
        )
    reply.raise_for_status()
    return {k["id"] for k in reply.json()}
