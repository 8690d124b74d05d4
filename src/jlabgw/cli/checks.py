"""The checks ``jlabgw doctor`` runs, as steps: ``step(settings, context) -> (mark, detail)``.

A step returns a mark (``"ok"``, or ``"warn"`` for something worth knowing) and what it found,
or raises :class:`Failed` with what is wrong and how to fix it. ``context`` carries what one
step leaves for the next (the login node's host, the remote Python). This module holds the
framework and the steps both backends share; :mod:`jlabgw.cli.local_checks` and
:mod:`jlabgw.cli.cluster_checks` the backends' own; :mod:`jlabgw.cli.doctor` runs them.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from jlabgw.config import Settings

__all__ = ["COMMON_STEPS", "Check", "Failed", "Mark", "Step", "Steps"]

Mark = Literal["ok", "warn", "fail", "skip"]


@dataclass
class Check:
    name: str
    mark: Mark
    detail: str
    fix: str = ""


class Failed(Exception):
    def __init__(self, detail: str, fix: str) -> None:
        super().__init__(detail)
        self.detail, self.fix = detail, fix


Step = Callable[[Settings, dict[str, Any]], tuple[Mark, str]]
Steps = list[tuple[str, Step, tuple[str, ...]]]  # (name, step, names of the steps it needs)


def _notebook_dir(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    path = settings.notebook_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".jlabgw-doctor-{os.getpid()}"
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as exc:
        raise Failed(
            f"{path} is not writable: {exc.strerror}",
            f"set JLABGW_NOTEBOOK_DIR to a directory you can write to, or fix the "
            f"permissions of {path}",
        ) from exc
    free = shutil.disk_usage(path).free
    if free < 100 * 2**20:
        return "warn", f"{path} is writable, but only {free // 2**20} MiB are free"
    return "ok", f"{path} is writable ({free // 2**30} GiB free)"


def _state_dir(settings: Settings, context: dict[str, Any]) -> tuple[Mark, str]:
    from jlabgw.fsutil import ensure_private_dir

    path = settings.state_dir
    try:
        ensure_private_dir(path)
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise Failed(
            f"cannot create {path}: {exc.strerror}",
            "set JLABGW_STATE_DIR to a directory of your own",
        ) from exc
    if mode & 0o077:
        raise Failed(
            f"{path} has mode {mode:o}: others could read gateway tokens there",
            f"chmod 700 {path}",
        )
    return "ok", f"{path} is private (mode {mode:o})"


COMMON_STEPS: Steps = [
    ("notebook dir", _notebook_dir, ()),
    ("state dir", _state_dir, ()),
]
