"""``jlabgw doctor`` for the local backend: Kernel Gateway and ipykernel are importable, the
kernel spec is installed, and a gateway starts and answers."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import sys
import time
from typing import Any

from jlabgw.cli.checks import Failed, Mark, Steps
from jlabgw.config import Settings

__all__ = ["LOCAL_STEPS"]


def _local_packages(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    missing = [m for m in ("kernel_gateway", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        raise Failed(
            f"{', '.join(missing)} not importable by {sys.executable}",
            f"{sys.executable} -m pip install jupyter-kernel-gateway ipykernel",
        )
    versions = ", ".join(
        f"{dist} {importlib.metadata.version(dist)}"
        for dist in ("jupyter-kernel-gateway", "ipykernel")
    )
    return "ok", versions


def _local_kernelspec(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        spec = manager.get_kernel_spec(settings.kernel_name)
    except NoSuchKernel as exc:
        available = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise Failed(
            f"no kernel spec {settings.kernel_name!r} here (available: {available})",
            "set JLABGW_KERNEL_NAME to one of those, or install it (for Python: "
            f"{sys.executable} -m ipykernel install --user --name {settings.kernel_name})",
        ) from exc
    return "ok", f"{settings.kernel_name}: {spec.display_name} ({spec.argv[0]})"


def _local_gateway(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jlabgw.cluster.backends import LocalBackend
    from jlabgw.jupyter.rest import GatewayClient

    async def start_and_ask() -> tuple[float, int]:
        backend = LocalBackend(settings.model_copy(update={"spare_kernel": False}))
        t0 = time.monotonic()
        try:
            endpoint = await backend.start()
            client = GatewayClient(endpoint)
            try:
                specs = await client.kernelspecs()
            finally:
                await client.aclose()
            return time.monotonic() - t0, len(specs.get("kernelspecs", {}))
        finally:
            await backend.aclose()

    seconds, count = asyncio.run(start_and_ask())
    return "ok", f"a gateway started and answered in {seconds:.1f} s ({count} kernel spec(s))"


LOCAL_STEPS: Steps = [
    ("jupyter packages", _local_packages, ()),
    ("kernel spec", _local_kernelspec, ("jupyter packages",)),
    ("gateway start", _local_gateway, ("state dir", "jupyter packages", "kernel spec")),
]
