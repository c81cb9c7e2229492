"""Pure-ASGI middleware of the HTTP service."""
