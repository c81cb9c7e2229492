"""Model runtimes behind one ``Backend`` protocol, found by name (as timm finds models)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path

from src.core.errors import ConfigurationError
from src.models.backends.base import Backend, BackendInfo, FrameScore

# name -> module with ``load(path, device, *, threads)``; imported only when chosen, so a
# runtime that is not used is never imported.
BACKEND_MODULES = {"torch": "src.models.backends.torch"}


def load_backend(
    name: str, path: str | Path, *, device: str = "cpu", threads: int | None = None
) -> Backend:
    """Load the checkpoint at ``path`` with the backend called ``name``."""
    try:
        module = import_module(BACKEND_MODULES[name])
    except KeyError:
        raise ConfigurationError(
            f"unknown backend {name!r}; known: {', '.join(sorted(BACKEND_MODULES))}"
        ) from None
    loader: Callable[..., Backend] = module.load
    return loader(path, device, threads=threads)


__all__ = ["BACKEND_MODULES", "Backend", "BackendInfo", "FrameScore", "load_backend"]
