"""Fixtures of the session layer's unit tests: a fake gateway, the starter that hands out its
kernels, and a manager over them (tests/session_fakes.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jlabgw.sessions.manager import SessionManager
from tests.session_fakes import FakeBackend, FakeGateway, FakeStarter, settings_for


@pytest.fixture
async def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
async def starter(gateway: FakeGateway) -> FakeStarter:
    return FakeStarter(gateway)


@pytest.fixture
async def manager(tmp_path: Path, starter: FakeStarter) -> AsyncIterator[SessionManager]:
    m = SessionManager(settings_for(tmp_path), FakeBackend(), starter=starter)
    yield m
    await m.aclose()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of ours, to stand for another server (an owner that is alive)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()
