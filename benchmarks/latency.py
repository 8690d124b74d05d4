"""Round-trip latency of ``1+1``, measured in one run along three paths.

(a) floor:   jupyter_client straight to a local ipykernel (``execute_interactive``)
(b) gateway: jlabgw's gateway client (REST + one WebSocket) on the local Kernel Gateway
(c) mcp:     ``execute_code`` over MCP stdio, jlabgw started as a subprocess and driven by the
             ``mcp`` SDK client in the initialize-handshake mode Claude Desktop/Code use
(r) reference: a bare fastmcp tool that only does the gateway call (``bare_mcp_server.py``),
             same transport and client: what (c) would cost with no sessions or notebook
(t) tunnel:  with --tunnel, (b) through jlabgw's SSH forwarder and a real OpenSSH sshd on
             127.0.0.1 (the test suite's: needs root and tests/cluster/setup-system.sh)
(s) slurm:   with --slurm, (c) with the SLURM backend: sbatch over SSH as the test user, the
             gateway in the job, the kernel reached through the tunnel (root, as for (t)); the
             "login node" and the node are this machine: one SSH hop
(m) multi-host: with --topology (implies --slurm), (s) on tests/cluster/topology.sh's cluster:
             jlabgw here (the laptop, with the topology's config), sbatch over SSH on the login
             node, the kernel on compute node c1/c2 reached through the login node as a jump
             host: two SSH hops over veth links. The topology is brought up and down by this
             run, and only if nobody else's is up (--wait-topology SECONDS to wait for it)

--plot FILE writes a bar chart (PNG) of the medians with p90 whiskers; README embeds
benchmarks/latency.png.

The three paths are set up together and timed round-robin (one call each per round), so a
change in the machine's load affects all of them alike. Prints median and p90 per path and the
ratio of each median to the floor's.
Usage: python benchmarks/latency.py [--n 300] [--warmup 30] [--tunnel] [--slurm] [--topology]
                                   [--json] [--plot benchmarks/latency.png]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

CODE = "1+1"
REPO = Path(__file__).resolve().parent.parent  # for tests.sshd (the --tunnel path)
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1000,
        "n": len(ordered),
    }


class Floor:
    """(a) jupyter_client's blocking client on a local ipykernel."""

    def __enter__(self) -> Floor:
        from jupyter_client.manager import start_new_kernel

        self.km, self.kc = start_new_kernel(kernel_name="python3")
        return self

    def __exit__(self, *exc: object) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)

    async def once(self) -> None:
        reply = self.kc.execute_interactive(CODE, output_hook=lambda msg: None, timeout=30)
        assert reply["content"]["status"] == "ok", reply


@contextlib.asynccontextmanager
async def gateway_path(workdir: Path) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """(b) jlabgw's gateway client on a local Kernel Gateway."""
    from bare_mcp_server import local_kernel

    async with local_kernel(str(workdir / "state-gw")) as conn:

        async def once() -> None:
            reply = await conn.execute(CODE)
            assert reply["content"]["status"] == "ok", reply

        yield once


@contextlib.asynccontextmanager
async def mcp_path(
    workdir: Path, env: dict[str, str] | None = None
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """(c) execute_code over MCP stdio, initialize handshake (as Claude Desktop/Code); with
    ``env``, a server configured by it instead (the SLURM backend, for (s))."""
    from mcp import Client, StdioServerParameters

    env = env or {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "JLABGW_STATE_DIR": str(workdir / "state-mcp"),
        "JLABGW_NOTEBOOK_DIR": str(workdir / "notebooks"),
        "JLABGW_LOG_LEVEL": "WARNING",
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "jlabgw"], env=env)
    async with Client(params, mode="legacy") as client:
        started = await client.call_tool("start_new_session", {"experiment_name": "latency"})
        assert not started.is_error, started
        session_id = started.structured_content["session_id"]

        async def once() -> None:
            result = await client.call_tool(
                "execute_code", {"session_id": session_id, "code": CODE}
            )
            assert not result.is_error, result
            assert result.content[0].text.strip() == "2", result

        yield once


@contextlib.asynccontextmanager
async def reference_path() -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """(r) a bare fastmcp tool doing only the gateway call."""
    from mcp import Client, StdioServerParameters

    server = str(Path(__file__).with_name("bare_mcp_server.py"))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "")}
    params = StdioServerParameters(command=sys.executable, args=[server], env=env)
    async with Client(params, mode="legacy") as client:

        async def once() -> None:
            result = await client.call_tool("run", {"code": CODE})
            assert result.content[0].text == "2", result

        yield once


@contextlib.asynccontextmanager
async def tunnel_path(workdir: Path) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """(t) the gateway client through the SSH forwarder and a real sshd on 127.0.0.1."""
    from tests.sshd import SSHDServer, unavailable_reason

    from bare_mcp_server import local_kernel
    from jlabgw.cluster.ssh.connection import SSHConnection
    from jlabgw.cluster.ssh.forward import Forwarder
    from jlabgw.config import load_settings
    from jlabgw.jupyter.channels import KernelConnection
    from jlabgw.jupyter.endpoint import GatewayEndpoint

    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"--tunnel: {reason}")
    sshd = SSHDServer(workdir / "sshd")
    sshd.setup()
    sshd.start()
    settings = load_settings(
        environ={
            "JLABGW_STATE_DIR": str(workdir / "state-tunnel"),
            "JLABGW_SSH_KEY": str(sshd.client_key),
            "JLABGW_KNOWN_HOSTS": str(sshd.known_hosts),
            "JLABGW_SSH_CONFIG": str(workdir / "no-ssh-config"),
        }
    )
    connection = SSHConnection(f"{sshd.user}@{sshd.host}:{sshd.port}", settings)
    try:
        async with local_kernel(str(workdir / "state-tunnel-gw")) as direct:
            gw_port = int(direct.endpoint.url.rsplit(":", 1)[1])
            with Forwarder(connection, "127.0.0.1", gw_port) as forwarder:
                cert = direct.endpoint.cert  # TLS to the gateway's own certificate, if it has one
                url = forwarder.url.replace("http://", "https://", 1) if cert else forwarder.url
                endpoint = GatewayEndpoint(url=url, token=direct.endpoint.token, cert=cert)
                conn = KernelConnection(endpoint, direct.kernel_id)

                async def once() -> None:
                    reply = await conn.execute(CODE)
                    assert reply["content"]["status"] == "ok", reply

                yield once
                await conn.close()
    finally:
        connection.close()
        sshd.stop()


@contextlib.asynccontextmanager
async def slurm_path(workdir: Path) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """(s) execute_code over MCP stdio with the SLURM backend, through the tunnel."""
    import coldstart  # benchmarks/ is on sys.path (see the top of this file)

    with coldstart.cluster(workdir) as (slurm, sshd):
        env = coldstart.server_env(workdir, sshd, slurm, "ssh")
        async with mcp_path(workdir, env) as once:
            yield once


@contextlib.asynccontextmanager
async def topology_path(
    workdir: Path, wait: float = 0.0
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """(m) (s) on the multi-host topology: laptop -> login node -> compute node."""
    import multihost  # benchmarks/ is on sys.path (see the top of this file)

    with multihost.cluster(wait) as cluster:
        env = multihost.server_env(workdir / "topology", cluster)
        async with mcp_path(workdir, env) as once:
            yield once


async def measure(
    n: int,
    warmup: int,
    workdir: Path,
    tunnel: bool,
    slurm: bool = False,
    topology: bool = False,
    wait_topology: float = 0.0,
) -> dict[str, list[float]]:
    """All paths set up at once and timed round-robin, so they share the machine's state."""
    slurm = slurm or topology
    names = list(PATHS) + ([TUNNEL] if tunnel else []) + ([SLURM] if slurm else [])
    names += [TOPOLOGY] if topology else []
    samples: dict[str, list[float]] = {name: [] for name in names}
    with Floor() as floor:
        async with contextlib.AsyncExitStack() as stack:
            runners = [
                floor.once,
                await stack.enter_async_context(gateway_path(workdir)),
                await stack.enter_async_context(mcp_path(workdir)),
                await stack.enter_async_context(reference_path()),
            ]
            if tunnel:
                runners.append(await stack.enter_async_context(tunnel_path(workdir)))
            if slurm:
                runners.append(await stack.enter_async_context(slurm_path(workdir)))
            if topology:
                runners.append(
                    await stack.enter_async_context(topology_path(workdir, wait_topology))
                )
            paths = dict(zip(names, runners, strict=True))
            for i in range(warmup + n):
                for name, once in paths.items():
                    t0 = time.perf_counter()
                    await once()
                    elapsed = time.perf_counter() - t0
                    if i >= warmup:
                        samples[name].append(elapsed)
    return samples


PATHS = (
    "floor (jupyter_client -> ipykernel)",
    "gateway client (jlabgw, local KG)",
    "execute_code over MCP stdio",
    "reference: bare fastmcp tool -> gateway",
)
TUNNEL = "gateway client through the SSH forwarder (sshd)"
SLURM = "execute_code over MCP stdio, SLURM backend + SSH tunnel"
TOPOLOGY = "execute_code over MCP stdio, SLURM backend, multi-host: laptop -> login -> node"


def plot(results: dict[str, dict[str, float]], path: Path) -> None:
    """Bar chart of the medians, p90 as whiskers, ratio to the floor after each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    medians = [results[k]["median_ms"] for k in names]
    p90 = [results[k]["p90_ms"] for k in names]
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(names) + 1.4), dpi=120)
    colors = ["#888888" if i == 0 else "#3b75af" for i in range(len(names))]
    whiskers = [[0] * len(names), [q - m for m, q in zip(medians, p90, strict=True)]]
    ax.barh(names, medians, xerr=whiskers, color=colors, capsize=3)
    right = max(p90)
    for i, name in enumerate(names):
        label = f"{medians[i]:.1f} ms  ({results[name]['ratio_to_floor']:.2f}x)"
        ax.text(p90[i] + right * 0.02, i, label, va="center")
    ax.invert_yaxis()
    ax.set_xlabel("1+1 round trip: median ms (whisker to p90); ratio to the floor")
    ax.set_xlim(0, right * 1.45)
    ax.set_title("jlabgw latency vs. the floor (jupyter_client -> ipykernel)", loc="left")
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="timed round trips per path")
    parser.add_argument("--warmup", type=int, default=30, help="untimed round trips first")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--tunnel", action="store_true", help="add path (t): through SSH (root + test sshd)"
    )
    parser.add_argument(
        "--slurm", action="store_true", help="add path (s): SLURM backend (root + test cluster)"
    )
    parser.add_argument(
        "--topology",
        action="store_true",
        help="add paths (s) and (m): SLURM on one host and on tests/cluster/topology.sh's "
        "laptop -> login -> compute node cluster (root; brought up and down by this run)",
    )
    parser.add_argument(
        "--wait-topology",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="if someone else's topology is up, wait for it to go down (checked every 30 s)",
    )
    parser.add_argument("--plot", type=Path, help="write a PNG bar chart here")
    parser.add_argument("--save", type=Path, help="also write the results as JSON here")
    parser.add_argument("--replot", type=Path, help="plot saved results (--save) instead")
    args = parser.parse_args()

    if args.replot:
        results = json.loads(args.replot.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="jlabgw-bench-") as tmp:
            samples = asyncio.run(
                measure(
                    args.n,
                    args.warmup,
                    Path(tmp),
                    args.tunnel,
                    args.slurm,
                    args.topology,
                    args.wait_topology,
                )
            )
        results = {name: summarize(values) for name, values in samples.items()}
        floor = next(iter(results.values()))["median_ms"]
        for row in results.values():
            row["ratio_to_floor"] = row["median_ms"] / floor
    if args.save:
        args.save.write_text(json.dumps(results, indent=1))
    if args.plot:
        plot(results, args.plot)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"1+1 round trip, n={args.n} per path (after {args.warmup} warm-up), this machine:")
    print("| path | median ms | p90 ms | median / floor |")
    print("| --- | ---: | ---: | ---: |")
    for name, row in results.items():
        print(
            f"| {name} | {row['median_ms']:.2f} | {row['p90_ms']:.2f} | "
            f"{row['ratio_to_floor']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
