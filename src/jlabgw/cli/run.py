"""``jlabgw run``: code through the same path as the MCP server (gateway, kernel, notebook),
outputs on stdout, progress and where the cell was recorded on stderr. No MCP framework here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jlabgw.cli.spinner import Spinner
from jlabgw.config import Settings
from jlabgw.errors import UsageError

__all__ = ["read_source", "run"]


def read_source(args: argparse.Namespace) -> tuple[str, str]:
    """The code to run and the experiment name for it."""
    if args.code is not None:
        return args.code, "run"
    if args.file == "-":
        return sys.stdin.read(), "stdin"
    path = Path(args.file)
    try:
        return path.read_text(), path.stem
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


async def run(settings: Settings, code: str, name: str, notebook: str | None) -> int:
    """Run ``code`` in a new session; the exit code is 1 if the cell raised."""
    # imported here: the session layer and nbformat take a good part of a second, and `serve`
    # (which imports this module with the parser) must reach Backend.begin() before paying
    from jlabgw.cluster.backends import create_backend
    from jlabgw.notebook.text import outputs_to_text
    from jlabgw.sessions.manager import SessionManager

    settings = settings.model_copy(update={"spare_kernel": False})  # one session, then exit
    backend = create_backend(settings)
    manager = SessionManager(settings, backend)
    spinner = Spinner()
    try:
        async with spinner.running():
            info = await manager.start_new(name, spinner.update, notebook_path=notebook)
            await spinner.update(0, None, "running")
            result = await manager.execute(info["session_id"], code, spinner.update)
        text = outputs_to_text(result.outputs)
        sys.stdout.write(text)
        sys.stdout.flush()
        for warning in result.warnings:
            print(f"jlabgw: warning: {warning}", file=sys.stderr)
        print(
            f"jlabgw: recorded in {result.notebook_path} (cell {result.cell_index})",
            file=sys.stderr,
        )
        return 1 if result.is_error else 0
    finally:
        try:
            await manager.aclose()
        finally:
            await backend.aclose()
