"""Hostile images from a kernel, over MCP stdio (issue 13): a 65-byte PNG header claiming
30000x30000 px, a 13000x13000 palette PNG of a few hundred kB and a PNG sent as image/jpeg come
back as short notes within 10 s, the server's peak memory stays bounded, the cell's text comes
back, the notebook keeps the originals, and the session goes on."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from mcp.types import ImageContent

from tests.helpers import notebook_cells, pids_matching, process_environ
from tests.mcp_client import call, new_session, serve, text_of

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

HOSTILE_CODE = """
import base64, io, struct, zlib
from IPython.display import publish_display_data
from PIL import Image
def chunk(k, d):
    return struct.pack('>I', len(d)) + k + d + struct.pack('>I', zlib.crc32(k + d))
ihdr = struct.pack('>IIBBBBB', 30000, 30000, 8, 2, 0, 0, 0)
bomb = (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', ihdr)
        + chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b''))
im = Image.new('P', (13000, 13000), 0)
im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
buf = io.BytesIO(); im.save(buf, 'PNG', optimize=True); del im
palette = buf.getvalue()
buf = io.BytesIO(); Image.new('RGB', (8, 8), (9, 9, 9)).save(buf, 'PNG')
small = buf.getvalue()
b64 = lambda raw: base64.b64encode(raw).decode()
"""

SHOW_CODE = """
print('text before', len(bomb), len(palette) < 2_000_000)
publish_display_data({'image/png': b64(bomb), 'text/plain': '<bomb>'})
publish_display_data({'image/png': b64(palette), 'text/plain': '<palette>'})
publish_display_data({'image/jpeg': b64(small), 'text/plain': '<png as jpeg>'})
print('text after')
"""


def _peak_rss_kib(root: Path) -> int:
    """VmHWM of the jlabgw server serving ``root``."""
    for pid in pids_matching("jlabgw serve"):
        try:
            if f"JLABGW_STATE_DIR={root / 'state'}" in process_environ(pid):
                status = Path(f"/proc/{pid}/status").read_text()
                found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
                assert found
                return int(found.group(1))
        except OSError:
            continue
    raise AssertionError("the server process was not found")


async def test_hostile_images_come_back_as_notes(tmp_path: Path) -> None:
    with (tmp_path / "server.log").open("w") as log:
        async with serve(tmp_path, log, JLABGW_EXEC_WAIT="60") as client:
            sid = await new_session(client, "hostile")
            # the kernel builds the images (seconds), then a cell displays them: that one is timed
            built = await call(client, "execute_code", session_id=sid, code=HOSTILE_CODE)
            assert not built.is_error, text_of(built)
            before = _peak_rss_kib(tmp_path)
            started = time.monotonic()
            out = await call(client, "execute_code", session_id=sid, code=SHOW_CODE)
            took = time.monotonic() - started
            grown = (_peak_rss_kib(tmp_path) - before) // 1024
            text = text_of(out)
            print(f"hostile cell: {took:.1f} s, server peak RSS +{grown} MiB\n{text}")
            assert not out.is_error, text
            assert out.meta["status"] == "ok", text
            assert took < 10, took
            assert not any(isinstance(b, ImageContent) for b in out.content)
            assert text.startswith("text before 65 True\n"), text
            assert "text after\n" in text
            assert text.count("[image/png refused:") == 2, text
            assert "900,000,000 pixels" in text
            assert "169,000,000 pixels" in text
            assert "[image/jpeg refused: not a valid JPEG image" in text
            assert "<bomb>" in text
            assert "<png as jpeg>" in text
            assert grown < 100, grown

            nxt = await call(client, "execute_code", session_id=sid, code="1+1")
            assert not nxt.is_error
            assert text_of(nxt) == "2\n"
            notebook = Path(out.meta["notebook_path"])
    cells = notebook_cells(str(notebook), 3)
    kept = [o for o in cells[1].outputs if o.get("output_type") == "display_data"]
    assert [sorted(o.data) for o in kept] == [
        ["image/png", "text/plain"],
        ["image/png", "text/plain"],
        ["image/jpeg", "text/plain"],
    ]
