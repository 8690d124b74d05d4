"""read_notebook, list_notebooks and start_notebook over MCP stdio with real kernels (local
backend): pages within the budget, images as a note, any notebook held or not (reading takes
no hold), the holder of each notebook (this server's session, another server's), opening a
notebook with nothing re-run and start_notebook twice giving the same session. One server for
the module."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from mcp import Client
from mcp.types import ImageContent
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from jlabgw.sessions.holds import NotebookHolds
from tests.helpers import PNG_CODE, notebook_cells, owner_of
from tests.mcp_client import call, new_session, serve, text_of

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

LIMIT = 4000  # JLABGW_OUTPUT_LIMIT of the server: small, so that paging shows


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Server:
    client: Client
    root: Path

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    root = tmp_path_factory.mktemp("notebook-open")
    with (root / "server.log").open("w") as log:
        async with serve(root, log, JLABGW_OUTPUT_LIMIT=str(LIMIT)) as client:
            yield Server(client, root)


@pytest.fixture
def other_server() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of ours, standing for another jlabgw server of the user."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def saved_notebook(path: Path, cells: int = 3) -> None:
    """A notebook as another tool left it: run cells with outputs and counts."""
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells.append(new_markdown_cell("# saved earlier"))
    for i in range(1, cells):
        out = new_output("stream", name="stdout", text=f"out {i}\n")
        nb.cells.append(
            new_code_cell(f"v{i} = {i}\nprint('out {i}')", execution_count=i, outputs=[out])
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def holds(server: Server) -> dict[str, Any]:
    path = server.root / "state" / "notebooks.json"
    return json.loads(path.read_text()) if path.exists() else {}


async def test_read_notebook_pages_within_the_budget(server: Server) -> None:
    client = server.client
    sid = await new_session(client, "reading")
    await call(client, "execute_code", session_id=sid, code="print('hello')")
    await call(client, "execute_code", session_id=sid, code=PNG_CODE)
    await call(client, "add_markdown", session_id=sid, markdown="## a note")
    await call(client, "execute_code", session_id=sid, code="print('x' * 20000)")
    await call(client, "execute_code", session_id=sid, code="40 + 2")

    page = await call(client, "read_notebook", session_id=sid)
    assert not page.is_error, text_of(page)
    text = text_of(page)
    assert "--- cell 0 (code, [1]) ---\nprint('hello')\n--- output ---\nhello\n" in text
    assert "[image/png image, 0.1 KB, not shown: <IPython.core.display.Image object>]" in text
    assert "--- cell 2 (markdown) ---\n## a note\n" in text
    assert "characters cut here; the whole output is in cell 3 of reading.ipynb" in text
    assert len(text) < LIMIT + 500
    assert not [b for b in page.content if isinstance(b, ImageContent)]
    meta = page.meta
    assert (meta["start"], meta["total_cells"]) == (0, 5)
    if meta["next_start"] is None:
        assert "--- cell 4 (code, [4]) ---\n40 + 2\n--- output ---\n42\n" in text
        assert text.endswith("[cells 0..4 of 5: the end of the notebook]")
    else:  # the budget ran out: the next page has the rest
        rest = await call(client, "read_notebook", session_id=sid, start=meta["next_start"])
        assert "--- cell 4 (code, [4]) ---" in text_of(rest)

    two = await call(client, "read_notebook", session_id=sid, start=1, count=2)
    assert two.meta == {"start": 1, "end": 3, "total_cells": 5, "next_start": 3}
    assert "--- cell 1 " in text_of(two)
    assert "--- cell 2 " in text_of(two)
    assert "--- cell 0 " not in text_of(two)
    assert "--- cell 3 " not in text_of(two)
    assert text_of(two).endswith(
        "[cells 1..2 of 5; read_notebook with start=3 shows the next ones]"
    )
    shown = await call(client, "read_notebook", session_id=sid, start=1, count=1, images=True)
    assert "[image/png image, 0.1 KB, shown after the text" in text_of(shown)
    pictures = [b for b in shown.content if isinstance(b, ImageContent)]
    assert len(pictures) == 1
    assert base64.b64decode(pictures[0].data).startswith(b"\x89PNG\r\n\x1a\n")
    last = await call(client, "read_notebook", notebook_path="reading.ipynb", start=-1)
    assert text_of(last).startswith("--- cell 4 (code, [4]) ---\n40 + 2\n")

    for args, message in (
        ({}, "pass notebook_path (list_notebooks shows them) or session_id"),
        ({"session_id": sid, "start": 5}, "start 5 is out of range: the notebook has 5 cells"),
        ({"session_id": sid, "start": -6}, "valid: 0..4, or -1..-5 from the end"),
        ({"notebook_path": "../x.ipynb"}, "outside the notebook directory"),
        ({"notebook_path": "missing.ipynb"}, "no notebook at 'missing.ipynb'"),
        ({"session_id": "nope"}, "unknown session_id 'nope'"),
        ({"session_id": sid, "notebook_path": "other.ipynb"}, "records into reading.ipynb"),
        ({"session_id": sid, "count": 0}, "count"),
    ):
        bad = await call(client, "read_notebook", **args)
        assert bad.is_error, args
        assert message in text_of(bad), (args, text_of(bad))


async def test_reading_a_notebook_nobody_holds_takes_no_hold(server: Server) -> None:
    path = server.notebooks / "sub" / "earlier.ipynb"
    saved_notebook(path)
    before = path.read_bytes()
    page = await call(server.client, "read_notebook", notebook_path="sub/earlier.ipynb")
    assert not page.is_error, text_of(page)
    assert "--- cell 1 (code, [1]) ---\nv1 = 1\nprint('out 1')\n--- output ---\nout 1\n" in text_of(
        page
    )
    assert str(path.resolve()) not in holds(server)
    assert path.read_bytes() == before
    broken = server.notebooks / "broken.ipynb"
    broken.write_text('{"cells": [')
    bad = await call(server.client, "read_notebook", notebook_path="broken.ipynb")
    assert bad.is_error
    assert "broken.ipynb is not a valid notebook" in text_of(bad)
    broken.unlink()


async def test_list_notebooks_says_who_holds_each(
    server: Server, other_server: subprocess.Popen[bytes]
) -> None:
    client = server.client
    sid = await new_session(client, "listed")
    saved_notebook(server.notebooks / "deep" / "free.ipynb")
    saved_notebook(server.notebooks / "elsewhere.ipynb")
    saved_notebook(server.notebooks / ".ipynb_checkpoints" / "free-checkpoint.ipynb")
    saved_notebook(server.root / "outside.ipynb")
    (server.notebooks / "link.ipynb").symlink_to(server.root / "outside.ipynb")
    theirs = NotebookHolds(server.root / "state" / "notebooks.json", owner_of(other_server.pid))
    theirs.take((server.notebooks / "elsewhere.ipynb").resolve(), "0123456789ab")
    try:
        listed = await call(client, "list_notebooks")
        assert not listed.is_error, text_of(listed)
        by_path = {e["path"]: e for e in listed.structured_content["result"]}
        assert "deep/free.ipynb" in by_path
        assert "listed.ipynb" in by_path
        assert not [p for p in by_path if "checkpoint" in p]
        assert "link.ipynb" not in by_path  # a link out of the notebook dir is not read
        free = by_path["deep/free.ipynb"]
        assert free["cells"] == 3
        assert free["size"] == (server.notebooks / "deep" / "free.ipynb").stat().st_size
        assert free["modified"].endswith("Z")
        assert free["held_by"] is None
        assert by_path["listed.ipynb"]["held_by"] == {"session_id": sid, "server": "this server"}
        assert by_path["elsewhere.ipynb"]["held_by"] == {
            "session_id": "0123456789ab",
            "server": f"jlabgw server pid {other_server.pid}",
        }

        # another server's notebook: start_notebook refuses it
        bad = await call(client, "start_notebook", notebook_path="elsewhere.ipynb")
        assert bad.is_error
        assert "is in use by session 0123456789ab of another jlabgw server" in text_of(bad)
    finally:
        theirs.release((server.notebooks / "elsewhere.ipynb").resolve())


async def test_start_notebook_reopens_in_place_and_twice_is_the_same_session(
    server: Server,
) -> None:
    client = server.client
    path = server.notebooks / "saved.ipynb"
    saved_notebook(path)
    opened = await call(client, "start_notebook", notebook_path="saved.ipynb")
    assert not opened.is_error, text_of(opened)
    info = opened.structured_content
    sid = info["session_id"]
    assert info["notebook_path"] == str(path.resolve())
    assert (info["already_open"], info["cells"], info["kernel_name"]) == (False, 3, "python3")

    cells = notebook_cells(str(path), 3)  # nothing re-run: the old outputs and counts stay
    assert [c.get("execution_count") for c in cells] == [None, 1, 2]
    assert cells[2].outputs[0].text == "out 2\n"
    fresh = await call(client, "execute_code", session_id=sid, code="v1")
    assert fresh.is_error
    assert "NameError" in text_of(fresh)
    rerun = await call(client, "run_cell", session_id=sid, cell_index=1)
    assert text_of(rerun) == "out 1\n"
    await call(client, "execute_code", session_id=sid, code="v1 = 10")

    again = await call(client, "start_notebook", notebook_path=str(path))
    assert again.structured_content["session_id"] == sid
    assert again.structured_content["already_open"] is True
    value = await call(client, "execute_code", session_id=sid, code="v1")
    assert text_of(value) == "10\n"  # the same kernel: its state kept
    cells = notebook_cells(str(path), 6)
    assert [c.source for c in cells[3:]] == ["v1", "v1 = 10", "v1"]
    assert len(list(server.notebooks.glob("saved*.ipynb"))) == 1  # the same file, no copy
    held = holds(server)[str(path.resolve())]
    assert held["session_id"] == sid

    listed = await call(client, "list_sessions")
    assert [s["session_id"] for s in listed.structured_content["result"]].count(sid) == 1
    for args, message in (
        ({"notebook_path": "nothing.ipynb"}, "no notebook at 'nothing.ipynb'"),
        ({"notebook_path": "/etc/passwd"}, "outside the notebook directory"),
        ({"notebook_path": "saved.txt"}, "is not a .ipynb file"),
    ):
        bad = await call(client, "start_notebook", **args)
        assert bad.is_error
        assert message in text_of(bad)
    shut = await call(client, "shutdown_session", session_id=sid)
    assert not shut.is_error
    reopened = await call(client, "start_notebook", notebook_path="saved.ipynb")
    assert reopened.structured_content["session_id"] != sid
    assert reopened.structured_content["cells"] == 6
