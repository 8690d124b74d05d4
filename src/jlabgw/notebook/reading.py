"""A notebook's cells as text a model reads (``read_notebook``), and a notebook file's summary
(``list_notebooks``).

A page of cells fits in one result's text budget: each cell's source and outputs are capped
(the middle cut, as in a cell's result), images are a one-line note (their type and size; the
notebook keeps them), and cells are added until the budget is spent. The page says which
cells it holds and where the next page starts, so a big notebook is read in pieces.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbformat import NotebookNode

from jlabgw.errors import CellIndexError
from jlabgw.notebook.text import IMAGE_FORMATS, cap_text, joined, strip_ansi, text_of

__all__ = ["Page", "render_page", "summarize"]

_MIN_SHARE = 300  # characters a capped source or output keeps at least
_MAX_PARSE = 64 * 2**20  # bytes; bigger notebooks are listed without counting their cells


@dataclass(frozen=True)
class Page:
    """Cells ``start`` to ``end - 1`` of ``total``, rendered."""

    text: str
    start: int
    end: int
    total: int
    images: list[NotebookNode] = field(default_factory=list)  # the outputs, when asked

    def meta(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "total_cells": self.total,
            "next_start": self.end if self.end < self.total else None,
        }


def render_page(
    cells: list[NotebookNode],
    start: int,
    count: int | None,
    budget: int,
    where: str,
    images: bool = False,
) -> Page:
    """Cells from ``start`` (negative counts from the end) on: ``count`` of them at most, and
    no more than fit in ``budget`` characters (at least one, cut to fit). ``where``: the
    notebook's name, for the notes on what was cut. ``images``: the shown cells' image
    outputs go in :attr:`Page.images` (their notes say so), for the caller to show."""
    total = len(cells)
    if not (-total <= start < total or start == total == 0):
        valid = f"0..{total - 1}, or -1..-{total} from the end" if total else "0"
        raise CellIndexError(
            f"start {start} is out of range: the notebook has {total} cells (valid: {valid})"
        )
    if count is not None and count < 1:
        raise CellIndexError(f"count must be at least 1 (got {count}); omit it for a full page")
    first = start % total if total else 0
    last = total if count is None else min(total, first + count)
    parts: list[str] = []
    shown: list[NotebookNode] = []
    used = 0
    end = first
    for index in range(first, last):
        share = budget if index == first else budget - used
        piece = render_cell(cells[index], index, max(share, _MIN_SHARE), where, images)
        if parts and used + len(piece) > budget:
            break
        parts.append(piece)
        used += len(piece)
        end = index + 1
        if images and cells[index].get("cell_type") == "code":
            shown += [o for o in cells[index].get("outputs", []) if _image_note(o)]
    if total == 0:
        footer = "(the notebook has no cells)"
    elif end < total:
        footer = (
            f"[cells {first}..{end - 1} of {total}; read_notebook with start={end} shows "
            "the next ones]"
        )
    else:
        footer = f"[cells {first}..{end - 1} of {total}: the end of the notebook]"
    return Page("".join(parts) + footer, first, end, total, shown)


def render_cell(
    cell: NotebookNode, index: int, budget: int, where: str, images: bool = False
) -> str:
    """One cell: a header line, its source, and (code) its outputs, within ``budget``."""
    kind = cell.get("cell_type", "?")
    count = cell.get("execution_count")
    header = f"--- cell {index} ({kind}"
    if kind == "code":
        header += f", [{count if count is not None else ' '}]"
    header += ") ---\n"
    source = joined(cell.get("source", ""))
    outputs = outputs_text(cell.get("outputs", []), images) if kind == "code" else ""
    room = max(_MIN_SHARE, budget - len(header) - 40)
    at = f"cell {index} of {where}"
    if len(source) + len(outputs) > room:
        src_room = max(_MIN_SHARE, room // 2 if outputs else room)
        source = cap_text(source, src_room, at)
        outputs = cap_text(outputs, max(_MIN_SHARE, room - len(source)), at)
    text = header + source + ("\n" if not source.endswith("\n") else "")
    if outputs:
        text += "--- output ---\n" + outputs + ("\n" if not outputs.endswith("\n") else "")
    return text


def outputs_text(outputs: list[NotebookNode], images: bool = False) -> str:
    """A cell's outputs as text, ANSI-free; an image is a note of its type and size (that
    it is shown after the text, with ``images``)."""
    parts: list[str] = []
    for output in outputs:
        note = _image_note(output)
        if note is not None and images:
            note = note.replace("not shown", "shown after the text")
        piece = note if note is not None else text_of(output)
        if piece:
            parts.append(strip_ansi(piece))
    return "".join(parts)


def _image_note(output: NotebookNode) -> str | None:
    data: dict[str, Any] = output.get("data", {}) if output.get("output_type") != "stream" else {}
    for mime in IMAGE_FORMATS:
        if mime in data:
            try:
                size = len(base64.b64decode(joined(data[mime])))
            except (binascii.Error, ValueError):
                size = 0
            plain = joined(data.get("text/plain", "")).strip()
            alt = f": {plain[:200]}" if plain else ""
            return f"[{mime} image, {size / 1024:.1f} KB, not shown{alt}]\n"
    return None


def summarize(path: Path, root: Path) -> dict[str, Any]:
    """``list_notebooks``' entry for ``path``: relative path, size, modified (UTC), cells
    (None if the file is too big to count or not a notebook)."""
    st = path.stat()
    cells: int | None = None
    if st.st_size <= _MAX_PARSE:
        try:
            found = json.loads(path.read_bytes()).get("cells")
            cells = len(found) if isinstance(found, list) else None
        except (OSError, ValueError, AttributeError):
            cells = None
    return {
        "path": os.path.relpath(path, root),
        "size": st.st_size,
        "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)),
        "cells": cells,
    }
