"""Dependency floors that keep known vulnerable releases out (issue 13)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

# package -> first release without the vulnerability, and which one
FLOORS = {
    "pillow": ("10.0.1", "CVE-2023-4863 (heap overflow in the bundled libwebp)"),
}


def test_dependency_floors_exclude_vulnerable_releases() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    requirements = {Requirement(d).name.lower(): Requirement(d) for d in deps}
    for name, (fixed, why) in FLOORS.items():
        spec = requirements[name].specifier
        floors = [Version(s.version) for s in spec if s.operator in (">=", "==", "~=")]
        assert floors, f"{name} has no lower bound; {why}"
        assert max(floors) >= Version(fixed), f"{name}{spec} admits releases with {why}"
