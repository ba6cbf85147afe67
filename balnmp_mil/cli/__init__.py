"""The `balnmp-mil` command line: argument parsing only (`group.main` is the entry point)."""

from __future__ import annotations

from balnmp_mil.cli.group import main

__all__ = ["main"]
