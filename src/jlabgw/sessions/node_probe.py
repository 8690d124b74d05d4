"""What a machine has (``check_resources``): CPUs and load, memory, GPUs, disk.

Standard library only, and nothing of jlabgw: on the local backend :func:`probe` is called
here; on a cluster this module's source runs on the node, with the job's Python over the SSH
connection to it (or, if that fails, in a throwaway kernel there; :mod:`.resources`), and
prints :func:`probe`'s answer as JSON. Every outside call is bounded (nvidia-smi: 10 s).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import Any

__all__ = ["kernel_cwd", "probe"]

_GIB = 2**30
_NVIDIA_TIMEOUT = 10.0


def probe(workdir: str | None = None) -> dict[str, Any]:
    """This machine's CPUs, memory, GPUs, and the disk that holds ``workdir`` (default: the
    current directory)."""
    where = workdir or os.getcwd()
    return {
        "host": socket.gethostname(),
        "cpus": _cpus(),
        "memory": _memory(),
        "gpus": _gpus(),
        "disk": _disk(where),
    }


def _cpus() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"count": os.cpu_count(), "usable": usable, "load_1_5_15_min": load}


def _memory() -> dict[str, Any]:
    info: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    info[key] = int(parts[0]) * 1024  # kB
    except OSError:
        return {"error": "no /proc/meminfo on this machine"}
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    if total is None or available is None:
        return {"error": "/proc/meminfo lacks MemTotal or MemAvailable"}
    memory: dict[str, Any] = {
        "total_gib": round(total / _GIB, 2),
        "used_gib": round((total - available) / _GIB, 2),
        "available_gib": round(available / _GIB, 2),
    }
    limit = _cgroup_limit()
    if limit is not None and limit < total:
        memory["limit_gib"] = round(limit / _GIB, 2)  # this job's (cgroup's) share
    return memory


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def _gpus() -> list[dict[str, Any]] | dict[str, str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    fields = "name,memory.total,memory.used,utilization.gpu"
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=_NVIDIA_TIMEOUT,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"nvidia-smi failed: {exc}"}
    gpus: list[dict[str, Any]] = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        name, total, used, util = parts
        gpus.append(
            {
                "name": name,
                "memory_total_mib": _number(total),
                "memory_used_mib": _number(used),
                "utilization_percent": _number(util),
            }
        )
    return gpus


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]"


def _disk(where: str) -> dict[str, Any]:
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return {"path": where, "error": exc.strerror or str(exc)}
    return {
        "path": where,
        "total_gib": round(usage.total / _GIB, 2),
        "free_gib": round(usage.free / _GIB, 2),
    }


def kernel_cwd(kernel_id: str) -> str | None:
    """The working directory of the kernel process whose command line names ``kernel_id``
    (its connection file), from ``/proc``, if it can be found; never this process's own."""
    if not kernel_id or not os.path.isdir("/proc"):
        return None
    needle, me = kernel_id.encode(), str(os.getpid())
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if needle in f.read():
                    return os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
    return None
