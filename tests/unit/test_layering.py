"""The package's folders are its layers, and imports point down only.

mcp, cli          faces (cli may start the MCP server; mcp never uses cli)
sessions          use cases, runner, reattach
notebook  jupyter  cluster   (cluster may use jupyter.endpoint only)
foundation        errors, config, log, fsutil, progress
node              runs on the compute node: imports nothing of jlabgw
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "jlabgw"
FOUNDATION = {"errors", "config", "log", "fsutil", "progress", "aio", "processes", ""}
ALLOWED: dict[str, set[str]] = {
    "": set(),  # foundation modules use each other only
    "node": set(),
    "notebook": {"notebook"},
    "jupyter": {"jupyter"},
    "cluster": {"cluster", "jupyter.endpoint"},
    "sessions": {"sessions", "notebook", "jupyter", "cluster"},
    "mcp": {"mcp", "sessions", "notebook", "jupyter", "cluster"},
    "cli": {"cli", "mcp", "sessions", "notebook", "jupyter", "cluster"},
}


def _layer(module: str) -> str:
    """``jlabgw.cluster.ssh.forward`` -> ``cluster``; a top-level module -> ``""``."""
    parts = module.split(".")[1:]
    return parts[0] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.lineno, f"(relative) {node.module}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
    return [(n, m) for n, m in found if m.split(".")[0] in ("jlabgw", "(relative) ")]


def _allowed(layer: str, target: str) -> bool:
    rest = target.split(".")[1:]  # without "jlabgw"
    if not rest or rest[0] in FOUNDATION or rest[0] == "__version__":
        return layer != "node"
    name = ".".join(rest)
    return any(name == a or name.startswith(a + ".") for a in ALLOWED[layer])


def test_imports_point_down_only() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(("jlabgw", *path.relative_to(SRC).with_suffix("").parts))
        if module == "jlabgw.__main__":
            continue  # the entry point runs the CLI
        layer = _layer(module)
        for line, target in _imports(path):
            if target.startswith("(relative)") or not _allowed(layer, target):
                wrong.append(f"{path.relative_to(SRC)}:{line}: {layer or 'foundation'} -> {target}")
    assert wrong == [], "imports against the layering:\n" + "\n".join(wrong)


def test_the_rules_catch_a_wrong_import() -> None:
    assert not _allowed("notebook", "jlabgw.jupyter.channels.Message")
    assert not _allowed("sessions", "jlabgw.mcp.content.Limits")
    assert not _allowed("cluster", "jlabgw.jupyter.rest.GatewayClient")
    assert not _allowed("node", "jlabgw.errors.JlabgwError")
    assert not _allowed("mcp", "jlabgw.cli.commands.main")
    assert _allowed("cluster", "jlabgw.jupyter.endpoint.GatewayEndpoint")
    assert _allowed("cli", "jlabgw.mcp.server.build_server")


@pytest.mark.parametrize(
    "modules",
    [
        ["jlabgw.sessions.manager"],
        # what `jlabgw run` imports: the CLI, the session layer, the local backend, text views
        ["jlabgw.cli.commands", "jlabgw.sessions.manager", "jlabgw.cluster.backends.local"],
    ],
)
def test_the_session_layer_pulls_in_no_mcp_framework(modules: list[str]) -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastmcp', 'mcp'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout
