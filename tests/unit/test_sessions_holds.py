"""A notebook is recorded into by one server's session at a time (issue 12): another live
server of the same user is refused with an error naming the holder; a holder that was
SIGKILLed holds nothing. Holders are real processes; managers run over tests/session_fakes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jlabgw.errors import SessionBusyError
from jlabgw.sessions import holds as holds_module
from jlabgw.sessions.holds import NotebookHolds
from jlabgw.sessions.manager import SessionManager
from tests.helpers import owner_of
from tests.session_fakes import FakeBackend, FakeGateway, FakeStarter, settings_for

pytestmark = pytest.mark.anyio


def test_a_live_holder_is_named_and_a_dead_one_holds_nothing(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    nb = tmp_path / "notebooks" / "exp.ipynb"
    theirs = NotebookHolds(tmp_path / "notebooks.json", owner_of(child.pid))
    mine = NotebookHolds(tmp_path / "notebooks.json")
    theirs.take(nb, "abc123")
    with pytest.raises(SessionBusyError) as refused:
        mine.take(nb, "def456")
    message = str(refused.value)
    assert "exp.ipynb" in message
    assert "abc123" in message
    assert f"pid {child.pid}" in message
    with pytest.raises(SessionBusyError):
        mine.refuse_if_held(nb)
    mine.release(nb)  # not ours: nothing happens
    assert mine.holder(nb) is not None

    child.kill()
    child.wait()
    assert mine.holder(nb) is None
    mine.take(nb, "def456")
    assert theirs.holder(nb) is not None  # ours now, as another server sees it
    mine.release_all()
    assert not (tmp_path / "notebooks.json").exists()


async def test_a_second_server_is_refused_a_notebook_the_first_records_into(
    tmp_path: Path, child: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path)
    gateway = FakeGateway()
    a = SessionManager(settings, FakeBackend(), starter=FakeStarter(gateway))
    info = await a.start_new("shared", notebook_path="shared.ipynb")
    monkeypatch.setattr(holds_module, "this_owner", lambda: owner_of(child.pid))
    b = SessionManager(settings, FakeBackend(), starter=FakeStarter(gateway))
    try:
        kernels_before = len(gateway.kernels)
        for start in (
            b.start_new("x", notebook_path="shared.ipynb"),
            b.resume("x", "shared.ipynb"),
        ):
            with pytest.raises(SessionBusyError, match=info["session_id"]):
                await start
        assert len(gateway.kernels) == kernels_before  # refused before any kernel started
        forked = await b.continue_("x", "shared.ipynb")  # a copy is always allowed
        assert forked["notebook_path"].endswith("shared_continued.ipynb")

        await a.shutdown(info["session_id"])  # A lets go: B may open it now
        resumed = await b.resume("x", "shared.ipynb")
        assert resumed["session_id"]
    finally:
        await b.aclose()
        await a.aclose()


async def test_two_starts_at_once_on_one_notebook_give_one_session(tmp_path: Path) -> None:
    """resume and resume (or start_notebook) racing on the same file: the session table
    itself refuses the second, so one notebook never gets two recorders."""
    import asyncio

    settings = settings_for(tmp_path)
    manager = SessionManager(settings, FakeBackend(), starter=FakeStarter(FakeGateway()))
    try:
        first = await manager.start_new("base", notebook_path="race.ipynb")
        await manager.shutdown(first["session_id"])
        results = await asyncio.gather(
            manager.resume("a", "race.ipynb"),
            manager.resume("b", "race.ipynb"),
            return_exceptions=True,
        )
        assert sum(isinstance(r, SessionBusyError) for r in results) == 1, results
        assert len(manager.list()) == 1
    finally:
        await manager.aclose()


async def test_a_notebook_dir_behind_a_symlink_is_one_notebook(tmp_path: Path) -> None:
    """~/nb -> /data/nb (macOS: /tmp -> /private/tmp): the paths are resolved, so the same
    file is recognised as held whichever way it was named."""
    real = tmp_path / "real-notebooks"
    real.mkdir()
    link = tmp_path / "nb-link"
    link.symlink_to(real)
    settings = settings_for(tmp_path, notebook_dir=str(link))
    assert settings.notebook_dir == real.resolve()
    manager = SessionManager(settings, FakeBackend(), starter=FakeStarter(FakeGateway()))
    try:
        info = await manager.start_new("exp")  # named after the experiment, in the dir
        assert Path(info["notebook_path"]).parent == real.resolve()
        with pytest.raises(SessionBusyError):
            await manager.resume("again", str(link / Path(info["notebook_path"]).name))
    finally:
        await manager.aclose()
