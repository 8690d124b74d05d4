"""upload_file and download_file over MCP stdio with a real kernel (local backend): the file
where the kernel's open() finds it (and back), the allowed places on each side, the size
cap, no overwrite unless asked, and no partial file left behind. One server for the module,
with a small cap, its own home directory and a transfer root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mcp import Client

from tests.mcp_client import call, new_session, serve_in, status, text_of

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

CAP = 1_000_000


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Server:
    client: Client
    root: Path
    sid: str
    workdir: Path  # the session kernel's working directory

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    root = tmp_path_factory.mktemp("files")
    (root / "home").mkdir()
    (root / "scratchfs").mkdir()
    (root / "work").mkdir()
    env = {
        "JLABGW_TRANSFER_MAX_BYTES": str(CAP),
        "JLABGW_TRANSFER_ROOT": str(root / "scratchfs"),
        "HOME": str(root / "home"),
    }
    with (root / "server.log").open("w") as log:
        async with serve_in(root / "work", root, log, **env) as client:
            sid = await new_session(client, "files")
            cwd = await call(client, "execute_code", session_id=sid, code="import os\nos.getcwd()")
            workdir = Path(text_of(cwd).strip().strip("'"))
            assert workdir == root / "work"  # the server's: the kernel writes nothing elsewhere
            yield Server(client, root, sid, workdir)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".jlabgw-part-" in p.name]


async def kernel_reads(server: Server, path: str) -> str:
    result = await call(
        server.client, "execute_code", session_id=server.sid, code=f"print(open({path!r}).read())"
    )
    assert not result.is_error, text_of(result)
    return text_of(result)[:-1]


async def test_upload_puts_the_file_where_the_kernel_opens_it(server: Server) -> None:
    client, sid = server.client, server.sid
    (server.notebooks / "data").mkdir()
    (server.notebooks / "data" / "in.csv").write_text("a,b\n1,2\n")
    up = await call(
        client, "upload_file", session_id=sid, local_path="data/in.csv", remote_path="in.csv"
    )
    assert not up.is_error, text_of(up)
    assert up.structured_content["bytes"] == 8
    assert up.structured_content["to"] == str(server.workdir / "in.csv")
    assert await kernel_reads(server, "in.csv") == "a,b\n1,2\n"

    (server.notebooks / "data" / "in.csv").write_text("a,b\n3,4\n")
    again = await call(
        client, "upload_file", session_id=sid, local_path="data/in.csv", remote_path="in.csv"
    )
    assert again.is_error
    assert "exists; pass overwrite=true to replace it" in text_of(again)
    assert await kernel_reads(server, "in.csv") == "a,b\n1,2\n"
    replaced = await call(
        client,
        "upload_file",
        session_id=sid,
        local_path="data/in.csv",
        remote_path="in.csv",
        overwrite=True,
    )
    assert not replaced.is_error, text_of(replaced)
    assert await kernel_reads(server, "in.csv") == "a,b\n3,4\n"

    # absolute paths: under the home directory and the transfer root, nowhere else
    for remote in ("~/sub/in.csv", str(server.root / "scratchfs" / "in.csv")):
        ok = await call(
            client, "upload_file", session_id=sid, local_path="data/in.csv", remote_path=remote
        )
        assert not ok.is_error, text_of(ok)
    assert (server.root / "home" / "sub" / "in.csv").read_text() == "a,b\n3,4\n"
    assert (server.root / "scratchfs" / "in.csv").read_text() == "a,b\n3,4\n"
    assert await kernel_reads(server, str(server.root / "scratchfs" / "in.csv")) == "a,b\n3,4\n"

    for args, message in (
        (
            {"local_path": "data/in.csv", "remote_path": "/etc/jlabgw-test"},
            "outside the places files may go",
        ),
        (
            {"local_path": "data/in.csv", "remote_path": "../../../x"},
            "outside the places files may go",
        ),
        (
            {"local_path": "../files0/server.log", "remote_path": "x"},
            "is outside the notebook directory",
        ),
        ({"local_path": "/etc/hostname", "remote_path": "x"}, "is outside the notebook directory"),
        ({"local_path": "data/missing.csv", "remote_path": "x"}, "no file at"),
        ({"local_path": "data", "remote_path": "x"}, "no file at"),
        ({"local_path": "data/in.csv", "remote_path": "."}, "outside the places files may go"),
    ):
        bad = await call(client, "upload_file", session_id=sid, **args)
        assert bad.is_error, args
        assert message in text_of(bad), (args, text_of(bad))
    assert not (server.workdir / "x").exists()
    bad = await call(
        client, "upload_file", session_id="nope", local_path="data/in.csv", remote_path="x"
    )
    assert "unknown session_id 'nope'" in text_of(bad)


async def test_a_file_over_the_cap_is_refused_and_nothing_is_left(server: Server) -> None:
    client, sid = server.client, server.sid
    (server.notebooks / "big.bin").write_bytes(b"\0" * (CAP + 1))
    bad = await call(
        client, "upload_file", session_id=sid, local_path="big.bin", remote_path="big.bin"
    )
    assert bad.is_error
    assert "over the transfer cap of 1,000,000 bytes (JLABGW_TRANSFER_MAX_BYTES)" in text_of(bad)
    assert not (server.workdir / "big.bin").exists()
    assert leftovers(server.workdir) == []

    code = f"open('big-out.bin', 'wb').write(b'x' * {CAP + 1})"
    await call(client, "execute_code", session_id=sid, code=code)
    bad = await call(
        client, "download_file", session_id=sid, remote_path="big-out.bin", local_path="big-out.bin"
    )
    assert bad.is_error
    assert "over the transfer cap" in text_of(bad)
    assert not (server.notebooks / "big-out.bin").exists()
    assert leftovers(server.notebooks) == []


async def test_download_brings_a_kernels_file_into_the_notebook_dir(server: Server) -> None:
    client, sid = server.client, server.sid
    await call(
        client, "execute_code", session_id=sid, code="open('out.txt', 'w').write('result 1')"
    )
    down = await call(
        client, "download_file", session_id=sid, remote_path="out.txt", local_path="results/out.txt"
    )
    assert not down.is_error, text_of(down)
    target = server.notebooks / "results" / "out.txt"
    assert target.read_text() == "result 1"
    assert down.structured_content["from"] == str(server.workdir / "out.txt")
    assert down.structured_content["bytes"] == 8

    await call(
        client, "execute_code", session_id=sid, code="open('out.txt', 'w').write('result 2')"
    )
    again = await call(
        client, "download_file", session_id=sid, remote_path="out.txt", local_path="results/out.txt"
    )
    assert again.is_error
    assert "exists; pass overwrite=true" in text_of(again)
    assert target.read_text() == "result 1"
    replaced = await call(
        client,
        "download_file",
        session_id=sid,
        remote_path="out.txt",
        local_path="results/out.txt",
        overwrite=True,
    )
    assert not replaced.is_error
    assert target.read_text() == "result 2"
    assert leftovers(target.parent) == []

    notebook = Path((await status(client))["sessions"][0]["notebook_path"])
    held = await call(
        client,
        "download_file",
        session_id=sid,
        remote_path="out.txt",
        local_path=notebook.name,
        overwrite=True,
    )
    assert held.is_error  # never over a notebook a session records into
    assert "already open in session" in text_of(held)
    for args, message in (
        ({"remote_path": "missing.txt", "local_path": "m.txt"}, "no file at"),
        (
            {"remote_path": "/etc/hostname", "local_path": "h.txt"},
            "outside the places files may go",
        ),
        (
            {"remote_path": "out.txt", "local_path": "../escape.txt"},
            "outside the notebook directory",
        ),
        ({"remote_path": "out.txt", "local_path": "results"}, "is a directory"),
    ):
        bad = await call(client, "download_file", session_id=sid, **args)
        assert bad.is_error, args
        assert message in text_of(bad), (args, text_of(bad))
    assert not (server.root / "escape.txt").exists()
