"""Where the tests' files are, computed once here: test modules sit at different depths under
tests/, so a path taken from their own __file__ would differ with their folder."""

from __future__ import annotations

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
REPO = SUPPORT.parents[1]
AGENTS = SUPPORT / "agents"  # fake agent CLIs and MCP servers, run as scripts
SNIPPETS = SUPPORT / "snippets"  # C programs and captured CLI output
