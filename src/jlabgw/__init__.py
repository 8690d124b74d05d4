"""jlabgw: notebook-recorded Jupyter sessions on HPC nodes for MCP clients.

The public surface is the CLI (`jlabgw`, `python -m jlabgw`) and the MCP server it serves;
the modules below are importable for embedding and tests.
"""

import sys

__version__ = "0.1.0"

__all__ = ["__version__"]

# Start-up time: nbformat imports jsonschema, whose format checkers import rfc3987_syntax when
# it is installed (jupyter-events, pulled in by the gateway, installs it). That module builds
# ~35 Lark parsers at import: 1.2 s of a 2.2 s import here, for the "iri" formats that no
# notebook schema uses (python-jsonschema/jsonschema#1428). A None entry makes jsonschema's
# guarded import skip that one checker; every other format checker and all validation stay.
# Only when nothing has imported it already, so a host process that wants it keeps it.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
