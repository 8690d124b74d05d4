"""README.md stays a reference: every setting, tool and command is documented there."""

from __future__ import annotations

import re
from pathlib import Path

from jlabgw.cli.commands import build_parser
from jlabgw.config import Settings
from jlabgw.mcp.server import TOOLS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_begins_with_the_two_set_up_commands() -> None:
    first_block = README.split("```", 2)[1]
    assert "pip install -e ." in first_block
    assert "jlabgw run -c" in first_block
    assert "bash .ci/run" in first_block


def test_every_setting_is_in_the_configuration_reference() -> None:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `JLABGW_([A-Z_]+)` / `([a-z_]+)`", section, re.MULTILINE))
    assert rows == {(k.upper(), k) for k in Settings.model_fields}


def test_every_tool_and_command_is_documented() -> None:
    for tool in TOOLS:
        assert f"`{tool.__name__}(" in README, tool.__name__
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in sub.choices:  # type: ignore[union-attr]
        assert f"jlabgw {command}" in README, command
