"""jlabgw: notebook-recorded Jupyter sessions on HPC nodes for MCP clients.

The public surface is the CLI (`jlabgw`, `python -m jlabgw`) and the MCP server it serves;
the modules below are importable for embedding and tests.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
