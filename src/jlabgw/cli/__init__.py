"""The command-line face: ``jlabgw serve|run|status|stop|tunnel|doctor|config``."""

from jlabgw.cli.commands import main

__all__ = ["main"]
