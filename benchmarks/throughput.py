"""Big outputs, parallel sessions, big notebooks and the server's memory, end to end over MCP.

(1) 10 MB print: jlabgw's ``execute_code`` over MCP stdio (local backend; with ``--slurm`` also
    the SLURM backend, whose gateway is reached through the SSH tunnel), against the floor:
    jupyter_client on a local ipykernel collecting the same output. Runs alternate.
(2) 8 sessions each running ``time.sleep(2)`` at once: wall time.
(3) ``1+1`` in a session whose notebook holds 500 cells with 30 MB of outputs, against ``1+1``
    in a fresh session of the same server, interleaved.
(4) The MCP server's peak RSS (VmHWM): after an ordinary session (100 small cells), after
    (1)-(2) (the notebook then holds 80 MB of output, in memory too), and after (3).

``--slurm`` needs root and tests/cluster/setup-system.sh (it starts the test SLURM and a
login-node sshd, as benchmarks/coldstart.py does).
Usage: python benchmarks/throughput.py [--n 5] [--n-small 100] [--slurm] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

BIG_PRINT = "print(('0123456789' * 10 + '\\n') * 100_000, end='')"  # 10.1 MB
BIG_BYTES = 101 * 100_000


def base_env(workdir: Path) -> dict[str, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "empty.toml").touch()
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(workdir)),
        "JLABGW_CONFIG": str(workdir / "empty.toml"),
        "JLABGW_STATE_DIR": str(workdir / "state"),
        "JLABGW_NOTEBOOK_DIR": str(workdir / "notebooks"),
        "JLABGW_LOG_LEVEL": "WARNING",
    }


@contextlib.asynccontextmanager
async def mcp_server(env: dict[str, str]) -> AsyncIterator[Any]:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "jlabgw"], env=env)
    async with Client(params, mode="legacy") as client:
        yield client


async def new_session(client: Any, name: str) -> str:
    started = await client.call_tool("start_new_session", {"experiment_name": name})
    assert not started.is_error, started
    return str(started.structured_content["session_id"])


async def server_pid(client: Any) -> int:
    contents = await client.read_resource("jlabgw://server/status")
    return int(json.loads(contents.contents[0].text)["server_pid"])


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def floor_big_print() -> float:
    """jupyter_client on a local ipykernel: execute, collect every stream chunk until idle."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        received: list[int] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                received.append(len(msg["content"]["text"]))

        t0 = time.perf_counter()
        kc.execute_interactive(BIG_PRINT, output_hook=hook, timeout=120)
        elapsed = time.perf_counter() - t0
        assert sum(received) == BIG_BYTES, sum(received)
        return elapsed
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


async def mcp_big_print(client: Any, sid: str) -> float:
    t0 = time.perf_counter()
    result = await client.call_tool("execute_code", {"session_id": sid, "code": BIG_PRINT})
    elapsed = time.perf_counter() - t0
    assert not result.is_error, result.content[0].text[:300]
    assert "characters cut here" in result.content[0].text
    return elapsed


async def big_print_runs(env: dict[str, str], n: int, label: str) -> dict[str, Any]:
    floor: list[float] = []
    ours: list[float] = []
    async with mcp_server(env) as client:
        sid = await new_session(client, f"big-print-{label}")
        await mcp_big_print(client, sid)  # warm-up
        for _ in range(n):
            floor.append(await asyncio.to_thread(floor_big_print))
            ours.append(await mcp_big_print(client, sid))
        parallel = await parallel_sleeps(client)
        rss = peak_rss_mib(await server_pid(client))
    f, o = statistics.median(floor), statistics.median(ours)
    return {
        "path": label,
        "floor_s": f,
        "jlabgw_s": o,
        "ratio": o / f,
        "parallel_8x2s_wall_s": parallel,
        "server_peak_rss_mib": rss,
    }


async def typical_rss(env: dict[str, str]) -> float:
    """Peak RSS of a server that ran one ordinary session: 100 small cells, a 100 kB print."""
    async with mcp_server(env) as client:
        sid = await new_session(client, "typical")
        for i in range(100):
            await client.call_tool("execute_code", {"session_id": sid, "code": f"x = {i}; x * 2"})
        await client.call_tool("execute_code", {"session_id": sid, "code": "print('y' * 100_000)"})
        return peak_rss_mib(await server_pid(client))


async def parallel_sleeps(client: Any) -> float:
    sids = [await new_session(client, f"parallel-{i}") for i in range(8)]
    code = "import time; time.sleep(2)"
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(client.call_tool("execute_code", {"session_id": s, "code": code}) for s in sids)
    )
    elapsed = time.perf_counter() - t0
    assert not any(r.is_error for r in results)
    for sid in sids:
        await client.call_tool("shutdown_session", {"session_id": sid})
    return elapsed


def write_big_notebook(path: Path, cells: int = 500, total_bytes: int = 30_000_000) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    per_cell = total_bytes // cells
    line = "x" * 99 + "\n"
    text = line * (per_cell // len(line))
    nb = new_notebook(
        cells=[
            new_code_cell(
                f"print('cell {i}')",
                execution_count=i + 1,
                outputs=[new_output("stream", name="stdout", text=text)],
            )
            for i in range(cells)
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


async def big_notebook_runs(env: dict[str, str], workdir: Path, n: int) -> dict[str, Any]:
    write_big_notebook(workdir / "notebooks" / "big.ipynb")
    fresh_t: list[float] = []
    big_t: list[float] = []
    async with mcp_server(env) as client:
        fresh = await new_session(client, "fresh")
        cont = await client.call_tool(
            "start_session_continue_notebook",
            {"experiment_name": "big", "notebook_path": "big.ipynb"},
        )
        assert not cont.is_error, cont
        big = str(cont.structured_content["session_id"])
        assert cont.structured_content["cells"] == 500
        for _ in range(5):  # warm-up
            for sid in (fresh, big):
                await client.call_tool("execute_code", {"session_id": sid, "code": "1+1"})
        for _ in range(n):
            for sid, samples in ((fresh, fresh_t), (big, big_t)):
                t0 = time.perf_counter()
                result = await client.call_tool("execute_code", {"session_id": sid, "code": "1+1"})
                samples.append(time.perf_counter() - t0)
                assert result.content[0].text == "2\n", result
        rss = peak_rss_mib(await server_pid(client))
    size = (workdir / "notebooks" / "big_continued.ipynb").stat().st_size
    f, b = statistics.median(fresh_t), statistics.median(big_t)
    return {
        "fresh_ms": f * 1000,
        "big_ms": b * 1000,
        "ratio": b / f,
        "big_file_mb": size / 1e6,
        "server_peak_rss_mib": rss,
    }


@contextlib.contextmanager
def slurm_env(workdir: Path) -> Iterator[dict[str, str]]:
    import coldstart

    with coldstart.cluster(workdir) as (slurm, sshd):
        env = coldstart.server_env(workdir / "slurm", sshd, slurm, "ssh")
        env["JLABGW_SLURM_CPUS"] = "2"
        yield env


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5, help="10 MB prints per path (default 5)")
    parser.add_argument("--n-small", type=int, default=100, help="1+1 pairs (default 100)")
    parser.add_argument("--slurm", action="store_true", help="also through the SLURM tunnel")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="jlabgw-throughput-"))
    results: dict[str, Any] = {}
    try:
        results["typical_rss_mib"] = await typical_rss(base_env(workdir / "typical"))
        results["local"] = await big_print_runs(base_env(workdir / "local"), args.n, "local")
        if args.slurm:
            with slurm_env(workdir) as env:
                results["slurm"] = await big_print_runs(env, args.n, "slurm tunnel")
        results["big_notebook"] = await big_notebook_runs(
            base_env(workdir / "nb"), workdir / "nb", args.n_small
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    for key in ("local", "slurm"):
        if key in results:
            r = results[key]
            print(
                f"10 MB print, {r['path']}: floor {r['floor_s']:.3f} s, "
                f"jlabgw {r['jlabgw_s']:.3f} s = {r['ratio']:.2f}x; "
                f"8 x sleep(2) in parallel: {r['parallel_8x2s_wall_s']:.2f} s; "
                f"server peak RSS {r['server_peak_rss_mib']:.0f} MiB"
            )
    print(
        f"server peak RSS after an ordinary session (100 small cells, a 100 kB print): "
        f"{results['typical_rss_mib']:.0f} MiB"
    )
    b = results["big_notebook"]
    print(
        f"1+1: fresh {b['fresh_ms']:.2f} ms, at 500 cells / {b['big_file_mb']:.0f} MB "
        f"{b['big_ms']:.2f} ms = {b['ratio']:.2f}x; server peak RSS {b['server_peak_rss_mib']:.0f}"
        " MiB"
    )


if __name__ == "__main__":
    asyncio.run(main())
