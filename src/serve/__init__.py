"""The HTTP service: ``create_app(settings)`` and ``python -m src.serve``."""

from src.serve.app import create_app

__all__ = ["create_app"]
