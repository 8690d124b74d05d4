"""Researchers' workloads over MCP stdio: long cells, big outputs, plots, tables, progress bars.

The MCP server runs as a subprocess driven by the mcp SDK client (as Claude Desktop/Code do),
with a real Kernel Gateway and ipykernel behind it.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import nbformat
import pytest
from mcp.types import ImageContent, TextContent
from PIL import Image

from tests.helpers import notebook_cells
from tests.mcp_client import body, call, new_session, poll_to_the_end, serve, text_of

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_a_90_second_cell_is_followed_to_the_end_with_nothing_lost(
    tmp_path: Path,
) -> None:
    code = (
        "import time\nfor i in range(90):\n    print(f'tick {i}', flush=True)\n    time.sleep(1)\n"
    )
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, JLABGW_EXEC_WAIT="5") as client:
            sid = await new_session(client, "ninety seconds")
            first = await call(client, "execute_code", session_id=sid, code=code)
            assert first.meta["status"] == "running"
            assert "get_execution" in text_of(first)
            reports = await poll_to_the_end(client, sid, first)
            notebook = first.meta["notebook_path"]
    assert len(reports) >= 15  # ~5 s per report over 90 s
    assert reports[-1].meta["status"] == "ok"
    assert reports[-1].meta["execution_count"] == 1  # it ran once
    assert "[finished after" in text_of(reports[-1])
    expected = "".join(f"tick {i}\n" for i in range(90))
    received = "".join(body(r) for r in reports)
    assert received == expected, [body(r) for r in reports]
    cells = notebook_cells(notebook, 1)
    assert cells[0].outputs[0].text == expected


async def test_ten_megabytes_of_output_are_capped_in_the_result_and_kept_in_the_notebook(
    tmp_path: Path,
) -> None:
    code = "print(('0123456789' * 10 + '\\n') * 100_000, end='')"  # 10.1 MB
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, JLABGW_OUTPUT_LIMIT="20000") as client:
            sid = await new_session(client, "big print")
            result = await call(client, "execute_code", session_id=sid, code=code)
            assert not result.is_error, text_of(result)[:500]
            text = text_of(result)
            assert len(text) <= 20000
            assert "characters cut here; the whole output is in cell 0 of big_print.ipynb" in text
            assert text.startswith("0123456789")
            assert text.endswith("0123456789\n")
            notebook = result.meta["notebook_path"]
    cells = notebook_cells(notebook, 1)
    assert len(cells[0].outputs[0].text) == 101 * 100_000  # no IOPub drop, nothing cut
    assert "IOPub data rate exceeded" not in cells[0].outputs[0].text


PLOTS = """
import matplotlib
matplotlib.use("module://matplotlib_inline.backend_inline")
import matplotlib.pyplot as plt
%config InlineBackend.figure_formats = {fmt!r}
fig, ax = plt.subplots(figsize=(4, 3))
ax.plot([1, 2, 3], [3, 1, 2])
plt.show()
"""


async def test_plots_tables_progress_bars_and_big_images(tmp_path: Path) -> None:
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, JLABGW_IMAGE_MAX_PX="800") as client:
            sid = await new_session(client, "rich")

            png = await call(client, "execute_code", session_id=sid, code=PLOTS.format(fmt=["png"]))
            images = [b for b in png.content if isinstance(b, ImageContent)]
            assert [i.mime_type for i in images] == ["image/png"], png.content

            svg = await call(client, "execute_code", session_id=sid, code=PLOTS.format(fmt=["svg"]))
            assert "[SVG image]" in text_of(svg)
            assert "<svg" in text_of(svg)

            table = await call(
                client,
                "execute_code",
                session_id=sid,
                code="import pandas as pd\npd.DataFrame({'loss': [0.5, 0.25], 'epoch': [1, 2]})",
            )
            lines = text_of(table).splitlines()
            assert lines[0].split() == ["loss", "epoch"]
            assert lines[1].split() == ["0", "0.50", "1"]

            bar = await call(
                client,
                "execute_code",
                session_id=sid,
                code="from tqdm.auto import tqdm\nimport sys\n"
                "for _ in tqdm(range(300), file=sys.stdout, ascii=True, mininterval=0): pass",
            )
            bar_lines = [line for line in text_of(bar).splitlines() if "/300" in line]
            assert len(bar_lines) == 1, bar_lines[:5]  # its last state, not 300 redraws
            assert "300/300" in bar_lines[0]
            assert "\r" not in text_of(bar)

            big = await call(
                client,
                "execute_code",
                session_id=sid,
                code="from PIL import Image as I\nfrom IPython.display import display\n"
                "import io\nbuf = io.BytesIO()\nI.new('RGB', (4000, 3000), (200, 30, 30))"
                ".save(buf, 'PNG')\ndisplay(I.open(buf))",
            )
            shown = next(b for b in big.content if isinstance(b, ImageContent))
            size = Image.open(io.BytesIO(base64.b64decode(shown.data))).size
            assert max(size) == 800
            assert size == (800, 600)
            notebook = big.meta["notebook_path"]
    cells = notebook_cells(notebook, 5)
    kept = cells[4].outputs[0]["data"]["image/png"]
    assert Image.open(io.BytesIO(base64.b64decode(kept))).size == (4000, 3000)  # the original
    assert "image/svg+xml" in cells[1].outputs[0]["data"]
    nbformat.validate(nbformat.read(notebook, as_version=4))
    assert not [b for b in bar.content if not isinstance(b, TextContent)]
