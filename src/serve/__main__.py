"""``python -m src.serve [--host H] [--port P]``: run the service with uvicorn."""

from __future__ import annotations

import argparse
import functools
import gc
import signal
import sys
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from src.core.errors import ConfigurationError
from src.core.settings import Settings, load_settings
from src.serve.memory import tune_allocator
from src.serve.protocol import LimitedHttpToolsProtocol


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m src.serve",
        description="Run the deepfake-detection service. Every other knob is a DFD_* setting "
        "(environment or .env; see .env.example).",
    )
    parser.add_argument("--host", help="interface to bind (overrides DFD_HOST)")
    parser.add_argument("--port", type=int, help="port to bind (overrides DFD_PORT)")
    return parser.parse_args(argv)


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # our logging config is already in place
        "access_log": False,  # the request middleware writes the access line
        "timeout_graceful_shutdown": settings.drain_timeout_s,
        "server_header": False,
        # X-Forwarded-For is believed only from DFD_TRUSTED_PROXIES, by the service itself
        # (src/serve/ratelimit.py client_address); uvicorn's own handling would believe it from
        # loopback and rewrite the client address first.
        "proxy_headers": False,
        # httptools (the fast parser) with a cap on the request head and a deadline for it; a
        # partial of a module-level class pickles, so it also reaches the workers of workers > 1.
        "http": functools.partial(
            LimitedHttpToolsProtocol,
            max_head_bytes=settings.max_header_bytes,
            head_timeout_s=settings.header_timeout_s,
        ),
        "timeout_keep_alive": settings.keepalive_timeout_s,
    }
    if settings.ssl_certfile and settings.ssl_keyfile:
        options["ssl_certfile"] = str(settings.ssl_certfile)
        options["ssl_keyfile"] = str(settings.ssl_keyfile)
    if settings.workers > 1:
        return uvicorn.Config(
            "src.serve.app:create_app", factory=True, workers=settings.workers, **options
        )
    from src.serve.app import create_app

    return uvicorn.Config(create_app(settings), **options)


def freeze_startup_objects() -> None:
    """Move what exists before serving (modules, classes, the app: ~150k objects) out of the
    collector's reach (``gc.freeze``), so that no full collection walks them again while
    requests are served (each walk measured ~70 ms on the event loop, a latency spike)."""
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        settings = load_settings(**overrides)
    except ConfigurationError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    tune_allocator()
    config = uvicorn_config(settings)
    server = uvicorn.Server(config)
    freeze_startup_objects()
    # uvicorn re-raises the signal it stopped on once it is done; a graceful stop should
    # exit 0, so the handler it restores and re-raises into is a no-op.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    if settings.workers > 1:
        sock = config.bind_socket()
        Multiprocess(config, sockets=[sock]).run()
        return 0
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
