"""Lanes: one backend (a batch job) per resource shape, with its gateway client.

Sessions that ask for the same resources (partition, GPUs, CPUs, memory, time) share a job;
a new shape gets a job of its own, submitted under the configured job name plus a short hash
of the shape. The default lane (key "") is the configured backend itself, created by the caller;
the others are the session manager's own and end with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from jlabgw.cluster.backends import Backend, create_backend, scheduler_type
from jlabgw.config import Settings, profile_settings
from jlabgw.errors import ConfigError, JlabgwError
from jlabgw.jupyter.rest import GatewayClient
from jlabgw.progress import Progress
from jlabgw.sessions.status import LaneStatus

__all__ = ["RESOURCE_KEYS", "Lane", "Lanes", "shape_of"]

log = logging.getLogger(__name__)


# the tool's resource parameters; each scheduler maps them onto its settings
# (jlabgw.cluster.scheduler.Scheduler.resource_settings)
RESOURCE_KEYS = ("partition", "gpus", "cpus", "mem", "time")
_MEM = re.compile(r"^\d+[KMGT]?$")
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
_PARTITION = re.compile(r"^[A-Za-z0-9_.,-]+$")


class Lane:
    """A backend and the REST client for its gateway (started on first use)."""

    def __init__(self, backend: Backend, on_new_gateway: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self._gateway: GatewayClient | None = None
        self._lock = asyncio.Lock()
        self._kernelspecs: dict[str, Any] | None = None
        self._on_new_gateway = on_new_gateway or (lambda: None)

    async def gateway(self, progress: Progress | None = None) -> GatewayClient:
        async with self.backend.watching(progress), self._lock:
            endpoint = await self.backend.start()
            if self._gateway is None or self._gateway.endpoint != endpoint:
                if self._gateway is not None:
                    await self._gateway.aclose()
                self._gateway = GatewayClient(endpoint)
                self._kernelspecs = None
                self._on_new_gateway()
            return self._gateway

    async def kernelspecs(self) -> dict[str, Any]:
        gw = await self.gateway()
        if self._kernelspecs is None:
            self._kernelspecs = await gw.kernelspecs()
        return self._kernelspecs

    async def aclose_client(self) -> None:
        if self._gateway is not None:
            await self._gateway.aclose()
            self._gateway = None


def shape_of(settings: Settings, resources: Mapping[str, Any]) -> tuple[str, Settings]:
    """The lane key and the settings of a job with ``resources`` (tool parameter names).

    Values equal to the configured ones do not count: asking for the default partition is
    the default lane (key ""). Raises :class:`ConfigError` with what is wrong."""
    unknown = sorted(set(resources) - set(RESOURCE_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown resource(s) {', '.join(unknown)}; valid: {', '.join(RESOURCE_KEYS)}"
        )
    scheduler = scheduler_type(settings.backend)
    if scheduler is None:
        raise ConfigError(
            "resource requests (partition, gpus, cpus, mem, time) need a batch backend (slurm, "
            f"gridengine); this server uses {settings.backend!r} (JLABGW_BACKEND)"
        )
    wanted: dict[str, str] = {}
    for name in RESOURCE_KEYS:
        value = resources.get(name)
        if value is None:
            continue
        text = str(value).strip()
        if name in ("gpus", "cpus"):
            if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
                what = name[:-1].upper() + "s"
                raise ConfigError(f"{name}={value!r}: give a whole number of {what} (1, 2 ...)")
            text = str(int(text))
        elif name == "mem" and not _MEM.match(text):
            raise ConfigError(f"mem={value!r}: give a size such as 16G or 4000M")
        elif name == "time" and not _TIME.match(text):
            raise ConfigError(f"time={value!r}: give a walltime such as 04:00:00 or 1-00:00:00")
        elif name == "partition" and not _PARTITION.match(text):
            raise ConfigError(f"partition={value!r}: not a partition name")
        # a value the configured job has already does not count
        if _changes(settings, scheduler.resource_settings(settings, {name: text})):
            wanted[name] = text
    if not wanted:
        return "", settings
    overrides = _changes(settings, scheduler.resource_settings(settings, wanted))
    key = ",".join(f"{name}={_shown(name, text)}" for name, text in wanted.items())
    digest = hashlib.sha256(key.encode()).hexdigest()[:6]
    try:
        shaped = Settings.model_validate(
            {
                **settings.model_dump(),
                **overrides,
                "job_name": f"{settings.job_name}-{digest}",
                # a shaped job is this server's own: reattach knows the default job only
                "keep_job": False,
                "eager_start": False,
            }
        )
    except ValidationError as exc:
        raise ConfigError(f"resources {key}: {exc.errors()[0]['msg']}") from exc
    return key, shaped


def _changes(settings: Settings, overrides: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if getattr(settings, k) != v}


def _shown(name: str, text: str) -> str:
    return f"gpu:{text}" if name == "gpus" else text  # the lane's name, as status shows it


class Lanes:
    """A session manager's lanes by key: "" (the configured backend) and each shape asked for."""

    def __init__(
        self, settings: Settings, backend: Backend, on_new_gateway: Callable[[], None]
    ) -> None:
        self._settings = settings
        self._on_new_gateway = on_new_gateway
        self._lanes: dict[str, Lane] = {"": Lane(backend, on_new_gateway)}
        self._lock = asyncio.Lock()

    @property
    def settings(self) -> Settings:
        """The configured settings (a shaped lane's backend has its own)."""
        return self._settings

    def backend(self, lane: str = "") -> Backend:
        return self._lanes[lane].backend

    async def gateway(self, progress: Progress | None = None, lane: str = "") -> GatewayClient:
        """The REST client for a lane's gateway, starting the gateway (the job) if needed."""
        return await self._lanes[lane].gateway(progress)

    async def kernelspecs(self, lane: str = "") -> dict[str, Any]:
        return await self._lanes[lane].kernelspecs()

    async def lane_for(
        self, resources: Mapping[str, Any] | None, profile: str | None = None
    ) -> str:
        """The lane for a resource request on ``profile`` of the config file (another
        cluster; None or the server's own: the configured one), created (not started) if new.
        A profile's lane is ``@NAME``, a shape on it ``@NAME,partition=...``."""
        base, prefix = self._settings, ""
        if profile and profile != self._settings.profile:
            base, prefix = profile_settings(self._settings, profile), f"@{profile}"
        wanted = resources and any(v is not None for v in resources.values())
        key, shaped = shape_of(base, resources) if wanted and resources else ("", base)
        key = ",".join(k for k in (prefix, key) if k)
        if not key:
            return ""
        if prefix and shaped is base:  # the profile's own job: this server's, like a shape's
            shaped = Settings.model_validate(
                {**base.model_dump(), "keep_job": False, "eager_start": False}
            )
        async with self._lock:
            if key not in self._lanes:
                self._lanes[key] = Lane(create_backend(shaped), self._on_new_gateway)
                log.info("new lane %s: %s job %s", key, shaped.backend, shaped.job_name)
        return key

    def jobs(self, session_lanes: list[str]) -> list[LaneStatus]:
        """Each lane's job and how many sessions use it (``session_lanes``: one key per
        session); the batch lanes only (a local gateway has no job)."""
        return [
            LaneStatus(key or "default", lane.backend.describe().job, session_lanes.count(key))
            for key, lane in self._lanes.items()
            if lane.backend.supports_resources
        ]

    async def aclose(self) -> None:
        """Close the gateway clients and stop the shaped jobs (the default one is the
        caller's)."""
        for key, lane in list(self._lanes.items()):
            await lane.aclose_client()
            if key:
                try:
                    await lane.backend.aclose()
                except JlabgwError as exc:
                    log.warning("stopping the job for %s: %s", key, exc)
