"""Notebook paths: confined to the notebook directory, and safe file names from free text."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from jlabgw.errors import NotebookError, PathOutsideNotebookDirError

__all__ = ["confine", "experiment_filename", "resolve_notebook_path"]

_UNSAFE = re.compile(r"[^\w.\-]+")
_MAX_STEM = 80


def resolve_notebook_path(root: Path, user_path: str, *, must_exist: bool) -> Path:
    """Resolve ``user_path`` (relative to ``root`` or absolute) and confine it to ``root``.

    The check compares *resolved* paths (symlinks followed, ``..`` collapsed) by path
    components, so ``/nb2/x.ipynb`` is not inside ``/nb`` and a symlink pointing out of the
    notebook directory is rejected.
    """
    root_resolved = root.resolve()
    resolved = _inside(
        root,
        user_path,
        "notebook_path",
        f"{user_path!r} is outside the notebook directory {root_resolved}; pass a path "
        "relative to it (see notebook_path in list_sessions) or set JLABGW_NOTEBOOK_DIR",
    )
    if resolved.suffix != ".ipynb":
        raise NotebookError(f"{user_path!r} is not a .ipynb file")
    if must_exist and not resolved.is_file():
        raise NotebookError(
            f"no notebook at {user_path!r} in {root_resolved}; list_sessions shows the "
            "notebooks of running sessions"
        )
    return resolved


def confine(root: Path, user_path: str, what: str = "path") -> Path:
    """``user_path`` (relative to ``root`` or absolute) resolved, and inside ``root`` (any kind
    of file; see :func:`resolve_notebook_path` for how it is checked)."""
    return _inside(
        root,
        user_path,
        what,
        f"{what} {user_path!r} is outside the notebook directory {root.resolve()}; pass a "
        "path relative to it",
    )


def _inside(root: Path, user_path: str, what: str, outside: str) -> Path:
    """``user_path`` resolved against ``root``; :class:`PathOutsideNotebookDirError` with
    ``outside`` unless it lies strictly inside ``root`` (resolved paths, by components)."""
    if not user_path or "\x00" in user_path:
        raise NotebookError(f"{what} must be a non-empty path without NUL bytes")
    root_resolved = root.resolve()
    candidate = Path(user_path).expanduser()
    if not candidate.is_absolute():
        candidate = root_resolved / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root_resolved) or resolved == root_resolved:
        raise PathOutsideNotebookDirError(outside)
    return resolved


def experiment_filename(experiment_name: str) -> str:
    """A file stem from an experiment name: letters, digits, ``_ . -``; never hidden or empty."""
    text = unicodedata.normalize("NFKC", experiment_name)
    stem = _UNSAFE.sub("_", text).strip("._-")[:_MAX_STEM].rstrip("._-")
    return stem or "notebook"
