"""Helpers shared by the tests: imported by them, not provided by ``conftest``."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
