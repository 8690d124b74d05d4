"""The session layer: the use cases both faces share (start, run, follow, reattach, status)."""
