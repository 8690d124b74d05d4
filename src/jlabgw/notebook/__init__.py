"""Notebooks: the in-memory document, its writer thread, IOPub-to-cell recording (recorder),
plain-text views (text) and paths."""
