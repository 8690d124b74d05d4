"""``python -m jlabgw``: same as the ``jlabgw`` command."""

from __future__ import annotations

import sys

from jlabgw.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
