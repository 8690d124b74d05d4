"""Merging a person's saved edits with the session's changes, by nbformat 4.5 cell id.

Three versions of each cell: the *base* (its JSON as this process last wrote it, or read it
at the last merge), *theirs* (the file now, as a person's editor saved it) and *ours* (the
session's model). The person's version is the base of the result: their cells, sources,
deletions and order. On top go the session's changes since the base: its new cells go
where it put them (after the cell they follow), a cell it deleted stays deleted unless the
person changed it, its order wins if it moved cells, and a cell it changed (ran, edited)
keeps the fields it changed (outputs, execution count, source …). A cell still recording a
run (``held``) always keeps the session's outputs.

Refused (:class:`MergeConflict`), rather than losing someone's work: the person deleted a cell
the session changed or is still recording into; both changed the same field of a cell (its
source, a metadata key) in different ways; the person changed the type of such a cell. Once
the person deleted the conflict file (``theirs_win``), their version wins those instead.

The model's objects are updated in place (the running cell, its outputs) so that whoever holds
them (the recorder, the execution) keeps recording into the notebook.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nbformat import NotebookNode, from_dict

__all__ = ["MergeConflict", "merge_into"]

_MISSING: Any = object()
_RUN_FIELDS = ("outputs", "execution_count")
_MARK = "jlabgw"  # metadata key of a running cell (see recorder)


class MergeConflict(Exception):
    """The person's file and the session's changes cannot be merged without a loss."""


def merge_into(
    nb: NotebookNode,
    theirs: NotebookNode,
    *,
    base: dict[str, bytes],
    base_top: dict[str, bytes],
    current: Callable[[NotebookNode], bytes],
    held: set[int],
    theirs_win: bool = False,
) -> set[int]:
    """Make ``nb`` the merge of ``theirs`` and ``nb``'s changes since ``base``.

    ``current(cell)``: the cell's JSON in the same form as ``base``'s. ``held``: id() of the
    cells recording a run. ``theirs_win``: the person chose their version (by deleting the
    conflict file): what would conflict is theirs, a cell they deleted is dropped. Returns
    the id() of ``nb``'s cells that now differ from their
    version in ``theirs`` (the rest are exactly the person's); raises :class:`MergeConflict`
    with ``nb`` unchanged."""
    theirs_by_id = {str(c["id"]): c for c in theirs.cells}
    ours_by_id = {str(c.get("id")): c for c in nb.cells}

    def changed(cell: NotebookNode) -> bool:
        cid = str(cell.get("id"))
        return cid not in base or current(cell) != base[cid]

    for index, cell in enumerate(nb.cells):
        cid = str(cell.get("id"))
        if cid in theirs_by_id or cid not in base or theirs_win:
            continue  # kept, the session's new cell (appended below), or dropped
        if id(cell) in held:
            raise MergeConflict(
                f"cell {index} (id {cid}), which is still running and recording its output, "
                "was deleted from the file"
            )
        if changed(cell):
            raise MergeConflict(
                f"cell {index} (id {cid}) was deleted from the file while the session changed "
                "it (its new outputs or source would be lost)"
            )

    merged: dict[str, NotebookNode] = {}
    updates: list[tuple[NotebookNode, dict[str, Any]]] = []
    differ: set[int] = set()
    for index, mine in enumerate(theirs.cells):
        cid = str(mine["id"])
        cell = ours_by_id.get(cid)
        if cell is None and cid in base and current(mine) == base[cid]:
            continue  # the session deleted it, and the person did not change it
        if cell is None:  # the person's new cell (or one they brought back, or changed)
            merged[cid] = mine
            continue
        merged[cid] = cell
        if id(cell) not in held and not changed(cell):
            if dict(cell) != dict(mine):
                updates.append((cell, dict(mine)))
            continue
        old = json.loads(base[cid]) if cid in base else {}
        where = f"cell {index} (id {cid})"
        new = _merge_cell(cell, mine, old, id(cell) in held, where, theirs_win)
        updates.append((cell, new))
        if new != dict(mine):
            differ.add(id(cell))
    for cell in nb.cells:
        cid = str(cell.get("id"))
        if cid not in theirs_by_id and cid not in base:
            merged[cid] = cell  # the session's new cell
            differ.add(id(cell))
    ours_ids = [str(c.get("id")) for c in nb.cells if str(c.get("id")) in merged]
    theirs_ids = [cid for cid in theirs_by_id if cid in merged]
    order = _order(ours_ids, theirs_ids, list(base))

    top: dict[str, Any] = {}
    for key in {*nb, *theirs} - {"cells"}:
        old = json.loads(base_top[key]) if key in base_top else _MISSING
        ours, mine = nb.get(key, _MISSING), theirs.get(key, _MISSING)
        if key == "metadata" and isinstance(ours, dict) and isinstance(mine, dict):
            top[key] = _merge_metadata(ours, mine, old if isinstance(old, dict) else {})
        else:
            top[key] = mine if _eq(ours, old) else ours  # the side that changed it

    for cell, new in updates:  # nothing above raised: apply
        cell.clear()
        cell.update(from_dict(new))
    nb.cells[:] = [merged[cid] for cid in order]
    for key, value in top.items():
        if value is _MISSING:
            nb.pop(key, None)
        else:
            nb[key] = from_dict(value)
    return differ


def _order(ours: list[str], theirs: list[str], base: list[str]) -> list[str]:
    """The merged notebook's cell order, by id. The person's order, unless the session moved
    cells since the base (then the session's); the other side's new cells go after the cell
    they follow on their side (at the end if they end that side's notebook)."""
    shared = set(ours) & set(theirs)
    if [c for c in ours if c in shared] != [c for c in base if c in shared]:
        primary, other = ours, theirs  # the session moved cells (move_cell)
    else:
        primary, other = theirs, ours
    placed = list(primary)
    known = set(placed)
    new = [c for c in other if c not in known]
    fresh = set(new)
    for cid in new:
        at = other.index(cid)
        if all(c in fresh for c in other[at + 1 :]):
            placed.append(cid)  # at the end on its side: at the end here too
        else:
            after = next((c for c in reversed(other[:at]) if c in known), None)
            placed.insert(placed.index(after) + 1 if after is not None else 0, cid)
        known.add(cid)
    return placed


def _merge_cell(
    ours: NotebookNode,
    theirs: NotebookNode,
    base: dict[str, Any],
    live: bool,
    where: str,
    theirs_win: bool = False,
) -> dict[str, Any]:
    new: dict[str, Any] = {}
    for key in {*ours, *theirs, *base}:
        mine, old, value = (
            theirs.get(key, _MISSING),
            base.get(key, _MISSING),
            ours.get(key, _MISSING),
        )
        if live and key in _RUN_FIELDS:
            pass  # the session's, whatever a stale copy says
        elif _eq(mine, old) or _eq(value, mine):
            pass  # the person did not change it (or made the same change)
        elif _eq(value, old):
            value = mine  # only the person changed it
        elif key in _RUN_FIELDS:
            pass  # the session ran the cell: its outputs are the ones that go with it
        elif key == "metadata" and isinstance(value, dict) and isinstance(mine, dict):
            value = _merge_metadata(value, mine, old if isinstance(old, dict) else {}, where)
        elif theirs_win:
            value = mine
        else:
            raise MergeConflict(
                f"{where}: both the file and the session changed its {key.replace('_', ' ')}"
            )
        if value is not _MISSING:
            new[key] = value
    if new.get("cell_type") != "code" and any(k in new for k in _RUN_FIELDS):
        if theirs_win:
            return {k: v for k, v in new.items() if k not in _RUN_FIELDS}
        raise MergeConflict(
            f"{where} was made a {new.get('cell_type')} cell in the file while the session ran it"
        )
    return new


def _merge_metadata(
    ours: dict[str, Any], theirs: dict[str, Any], base: dict[str, Any], where: str = ""
) -> dict[str, Any]:
    """Key by key: the side that changed a key wins; for a key both changed, the session's
    run mark (cells) and the session's kernel description (top level) win, else a cell's
    metadata conflicts and the notebook's takes the person's."""
    new: dict[str, Any] = {}
    for key in {*ours, *theirs, *base}:
        value, mine, old = (
            ours.get(key, _MISSING),
            theirs.get(key, _MISSING),
            base.get(key, _MISSING),
        )
        if _eq(mine, old) or _eq(value, mine):
            pass
        elif _eq(value, old):
            value = mine
        elif key == _MARK or (not where and key in ("kernelspec", "language_info")):
            pass
        elif where:
            raise MergeConflict(
                f"{where}: both the file and the session changed its metadata {key!r}"
            )
        else:
            value = mine
        if value is not _MISSING:
            new[key] = value
    return new


def _eq(a: Any, b: Any) -> bool:
    if a is _MISSING or b is _MISSING:
        return a is b
    return bool(a == b)
