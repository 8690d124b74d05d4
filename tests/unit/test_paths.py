from __future__ import annotations

import os
from pathlib import Path

import pytest

from jlabgw.errors import NotebookError, PathOutsideNotebookDirError
from jlabgw.notebook.paths import experiment_filename, resolve_notebook_path


@pytest.fixture
def nbdir(tmp_path: Path) -> Path:
    root = tmp_path / "nb"
    root.mkdir()
    (root / "a.ipynb").write_text("{}")
    (root / "sub").mkdir()
    (root / "sub" / "b.ipynb").write_text("{}")
    return root


def test_relative_and_absolute_inside(nbdir: Path) -> None:
    assert resolve_notebook_path(nbdir, "a.ipynb", must_exist=True) == nbdir / "a.ipynb"
    assert resolve_notebook_path(nbdir, "sub/b.ipynb", must_exist=True) == nbdir / "sub/b.ipynb"
    absolute = str(nbdir / "a.ipynb")
    assert resolve_notebook_path(nbdir, absolute, must_exist=True) == nbdir / "a.ipynb"
    # .. that stays inside is harmless
    inside = resolve_notebook_path(nbdir, "sub/../a.ipynb", must_exist=True)
    assert inside == nbdir / "a.ipynb"


@pytest.mark.parametrize("bad", ["../x.ipynb", "sub/../../x.ipynb", "/etc/passwd.ipynb"])
def test_escapes_rejected(nbdir: Path, bad: str) -> None:
    with pytest.raises(PathOutsideNotebookDirError, match="outside the notebook directory"):
        resolve_notebook_path(nbdir, bad, must_exist=False)


def test_prefix_trick_rejected(tmp_path: Path, nbdir: Path) -> None:
    sibling = tmp_path / "nb2"
    sibling.mkdir()
    (sibling / "x.ipynb").write_text("{}")
    with pytest.raises(PathOutsideNotebookDirError):
        resolve_notebook_path(nbdir, str(sibling / "x.ipynb"), must_exist=True)
    with pytest.raises(PathOutsideNotebookDirError):
        resolve_notebook_path(nbdir, "../nb2/x.ipynb", must_exist=True)


def test_symlink_out_rejected_symlink_in_allowed(tmp_path: Path, nbdir: Path) -> None:
    outside = tmp_path / "secret.ipynb"
    outside.write_text("{}")
    os.symlink(outside, nbdir / "link.ipynb")
    with pytest.raises(PathOutsideNotebookDirError):
        resolve_notebook_path(nbdir, "link.ipynb", must_exist=True)
    os.symlink(tmp_path, nbdir / "dirlink")
    with pytest.raises(PathOutsideNotebookDirError):
        resolve_notebook_path(nbdir, "dirlink/secret.ipynb", must_exist=True)
    os.symlink(nbdir / "a.ipynb", nbdir / "alias.ipynb")
    assert resolve_notebook_path(nbdir, "alias.ipynb", must_exist=True) == nbdir / "a.ipynb"


def test_notebook_dir_itself_and_wrong_suffix(nbdir: Path) -> None:
    with pytest.raises(PathOutsideNotebookDirError):
        resolve_notebook_path(nbdir, ".", must_exist=False)
    with pytest.raises(NotebookError, match=r"not a \.ipynb"):
        resolve_notebook_path(nbdir, "a.py", must_exist=False)
    with pytest.raises(NotebookError, match="NUL"):
        resolve_notebook_path(nbdir, "a\x00.ipynb", must_exist=False)


def test_missing_notebook_message(nbdir: Path) -> None:
    with pytest.raises(NotebookError, match=r"no notebook at 'nope\.ipynb'"):
        resolve_notebook_path(nbdir, "nope.ipynb", must_exist=True)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("my exp", "my_exp"),
        ("../../etc/passwd", "etc_passwd"),
        ("a/b", "a_b"),
        ("$(rm -rf ~)", "rm_-rf"),
        ('it\'s "quoted"', "it_s_quoted"),
        ("line\nbreak", "line_break"),
        ("...", "notebook"),
        ("", "notebook"),
        ("Über-Modell ①", "Über-Modell_1"),
    ],
)
def test_experiment_filename(name: str, expected: str) -> None:
    assert experiment_filename(name) == expected


def test_experiment_filename_is_bounded() -> None:
    stem = experiment_filename("x" * 10_000)
    assert len(stem) <= 80
    assert "/" not in stem
