"""Settings tests start from an environment without any DFD_* variable."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DFD_") or name == "MODEL_API_KEY":
            monkeypatch.delenv(name)
