"""Produced notebooks open elsewhere: nbconvert renders them to HTML with every output.

JupyterLab and VS Code read the same nbformat 4 JSON that nbconvert does; what they need
beyond a valid file is the kernelspec and language_info metadata, checked here too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nbformat
import pytest

from jlabgw.cluster.backends import LocalBackend
from jlabgw.sessions.manager import SessionManager
from tests.helpers import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

CELLS = [
    "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9, 16]); plt.title('squares'); plt.show()",
    "import pandas as pd\npd.DataFrame({'sample': ['a', 'b'], 'value': [1.5, 2.5]})",
    "print('plain text line')",
    "from IPython.display import Markdown\nMarkdown('**bold result**')",
    "1 / 0",
]


@pytest.fixture
async def manager(tmp_path: Path, shared_backend: LocalBackend) -> AsyncIterator[SessionManager]:
    m = SessionManager(make_settings(tmp_path), shared_backend)
    yield m
    await m.aclose()


async def test_nbconvert_renders_every_output_to_html(
    manager: SessionManager, tmp_path: Path
) -> None:
    info = await manager.start_new("export me")
    sid = info["session_id"]
    await manager.add_markdown(sid, "# Results\nA plot, a table, text and an error.")
    for code in CELLS:
        await manager.execute(sid, code)
    manager.writer.flush()
    path = Path(info["notebook_path"])
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec == {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    assert nb.metadata.language_info.name == "python"
    assert nb.metadata.language_info.version.startswith(f"{sys.version_info.major}.")

    out_dir = tmp_path / "html"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbconvert",
            "--to",
            "html",
            "--output-dir",
            str(out_dir),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    html = (out_dir / "export_me.html").read_text()
    assert re.search(r"<h1[^>]*>Results", html)  # the markdown cell
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', html)) == 1  # the plot
    assert re.search(r"<table.*<td>2\.5</td>", html, re.DOTALL)  # the DataFrame's HTML
    assert "plain text line" in html
    assert "<strong>bold result</strong>" in html
    assert "ZeroDivisionError" in html
