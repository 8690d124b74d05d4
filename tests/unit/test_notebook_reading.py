"""read_notebook's pages (notebook.reading): within the budget, cut in the middle, images as
a note, paging and its errors."""

from __future__ import annotations

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_output

from jlabgw.errors import CellIndexError
from jlabgw.notebook.reading import render_page

PNG = "iVBORw0KGgo="  # 8 bytes: only the note's size is read


def cells(n: int, text: str = "out") -> list:
    return [
        new_code_cell(f"x{i}", execution_count=i, outputs=[new_output("stream", text=f"{text}\n")])
        for i in range(n)
    ]


def test_a_page_fits_the_budget_and_says_where_the_next_starts() -> None:
    many = cells(50, "y" * 300)
    page = render_page(many, 0, None, 2000, "nb.ipynb")
    assert 0 < page.end < 50
    assert len(page.text) <= 2000 + 200
    assert page.text.endswith(f"read_notebook with start={page.end} shows the next ones]")
    assert page.meta()["next_start"] == page.end
    rest = render_page(many, page.end, None, 100_000, "nb.ipynb")
    assert rest.end == 50
    assert rest.meta()["next_start"] is None
    assert rest.text.endswith(f"[cells {page.end}..49 of 50: the end of the notebook]")


def test_one_big_cell_is_cut_in_the_middle_not_dropped() -> None:
    big = cells(1, "z" * 50_000)
    page = render_page(big, 0, None, 2000, "nb.ipynb")
    assert page.end == 1
    assert "characters cut here; the whole output is in cell 0 of nb.ipynb" in page.text
    assert len(page.text) < 3000


def test_markdown_images_counts_and_negative_start() -> None:
    image = new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})
    nb = [new_markdown_cell("# title"), new_code_cell("plot()", outputs=[image])]
    text = render_page(nb, 0, None, 10_000, "nb.ipynb").text
    assert "--- cell 0 (markdown) ---\n# title\n" in text
    assert "--- cell 1 (code, [ ]) ---\nplot()\n--- output ---\n" in text
    assert "[image/png image, 0.0 KB, not shown: <Figure>]" in text
    shown = render_page(nb, -1, 1, 10_000, "nb.ipynb", images=True)
    assert shown.start == 1
    assert shown.images == [image]
    assert "shown after the text" in shown.text


@pytest.mark.parametrize(
    ("start", "count", "message"),
    [
        (3, None, r"start 3 is out of range: the notebook has 3 cells \(valid: 0\.\.2"),
        (-4, None, "start -4 is out of range"),
        (0, 0, "count must be at least 1"),
    ],
)
def test_bad_start_or_count(start: int, count: int | None, message: str) -> None:
    with pytest.raises(CellIndexError, match=message):
        render_page(cells(3), start, count, 10_000, "nb.ipynb")


def test_an_empty_notebook() -> None:
    page = render_page([], 0, None, 10_000, "nb.ipynb")
    assert page.text == "(the notebook has no cells)"
    assert (page.start, page.end, page.total) == (0, 0, 0)
