"""``python -m bench.limits``: the server time the rate limiter adds to a request.

The same keyed route (authenticate, ``charge(request, 1)``, answer with the ``RateLimit``
headers) runs in one process, called directly through ASGI (no sockets, so the clock sees only
the app's own work), once per configuration in interleaved rounds: no limit (the baseline:
authentication and an empty charge), the memory backend, and Redis on loopback. The limiter's
added time is a configuration's median minus the baseline's. Targets (issue 15): at most
0.5 ms with the memory backend and 1.5 ms with Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request

from src.core.settings import DEFAULT_CHECKPOINT, Settings
from src.serve.app import create_app
from src.serve.deps import InferCallerDep
from src.serve.ratelimit import charge

KEY = "bench-key-0123456789"
CHECKPOINT = Path(__file__).resolve().parents[1] / DEFAULT_CHECKPOINT
TARGET_MS = {"memory": 0.5, "redis": 1.5}
HUGE = "1000000/minute"


@dataclass(frozen=True)
class Config:
    name: str
    backend: str  # "none", "memory" or "redis"
    settings: dict[str, Any]


def configs(redis_url: str) -> list[Config]:
    prefix = f"dfd-bench-{uuid.uuid4().hex[:8]}"
    redis = {"redis_url": redis_url, "rate_limit_key_prefix": prefix}
    return [
        Config("no limit (baseline)", "none", {}),
        Config("memory, moving window", "memory", {"rate_limit": HUGE}),
        Config(
            "memory, fixed window",
            "memory",
            {"rate_limit": HUGE, "rate_limit_strategy": "fixed-window"},
        ),
        Config("memory, rate + quota", "memory", {"rate_limit": HUGE, "quota": "100000000/day"}),
        Config("redis, moving window", "redis", {"rate_limit": HUGE, **redis}),
        Config(
            "redis, fixed window",
            "redis",
            {"rate_limit": HUGE, "rate_limit_strategy": "fixed-window", **redis},
        ),
        Config(
            "redis, rate + quota", "redis", {"rate_limit": HUGE, "quota": "100000000/day", **redis}
        ),
    ]


def build_app(config: Config) -> FastAPI:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        checkpoint_path=CHECKPOINT,
        api_keys=[KEY],
        log_level="WARNING",
        failed_auth_limit="off",
        **config.settings,
    )
    app = create_app(settings)
    router = APIRouter()

    @router.post("/charged")
    async def charged(request: Request, caller: InferCallerDep) -> dict[str, str]:
        await charge(request, 1)
        return {"name": caller.name}

    app.include_router(router)
    return app


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/charged",
        "raw_path": b"/charged",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"x-api-key", KEY.encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def one_request(app: FastAPI) -> tuple[float, int, dict[bytes, bytes]]:
    """Server time of one request (seconds), its status and headers."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    started = time.perf_counter()
    await app(_scope(), receive, send)
    elapsed = time.perf_counter() - started
    start = next(m for m in sent if m["type"] == "http.response.start")
    return elapsed, start["status"], dict(start["headers"])


async def measure(requests: int, rounds: int, redis_url: str) -> dict[str, Any]:
    chosen = configs(redis_url)
    apps = [build_app(c) for c in chosen]
    times: dict[str, list[float]] = {c.name: [] for c in chosen}
    for config, app in zip(chosen, apps, strict=True):  # warm-up, and a check of the answer
        for _ in range(50):
            _, status, headers = await one_request(app)
        assert status == 200, (config.name, status)
        assert (b"ratelimit" in headers) == (config.backend != "none"), config.name
    per_round = max(1, requests // rounds)
    for _ in range(rounds):
        for config, app in zip(chosen, apps, strict=True):
            for _ in range(per_round):
                elapsed, status, _ = await one_request(app)
                assert status == 200, (config.name, status)
                times[config.name].append(elapsed)
    for app in apps:
        await app.state.rate_limits.aclose()
    return summarize(chosen, times)


def summarize(chosen: list[Config], times: dict[str, list[float]]) -> dict[str, Any]:
    baseline = statistics.median(times[chosen[0].name]) * 1000
    rows = []
    for config in chosen:
        samples = sorted(t * 1000 for t in times[config.name])
        median = statistics.median(samples)
        added = median - baseline
        target = TARGET_MS.get(config.backend)
        rows.append(
            {
                "config": config.name,
                "backend": config.backend,
                "requests": len(samples),
                "median_ms": round(median, 4),
                "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 4),
                "added_ms": round(added, 4),
                "target_ms": target,
                "met": None if target is None else added <= target,
            }
        )
    return {"baseline_median_ms": round(baseline, 4), "rows": rows}


def table(results: dict[str, Any]) -> str:
    lines = [
        "| configuration | median ms | p99 ms | added ms (median - baseline) | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in results["rows"]:
        target = (
            "-"
            if row["target_ms"] is None
            else (f"<= {row['target_ms']} ms: {'met' if row['met'] else 'NOT met'}")
        )
        lines.append(
            f"| {row['config']} | {row['median_ms']:.3f} | {row['p99_ms']:.3f} | "
            f"{row['added_ms']:.3f} | {target} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="per configuration")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--out", type=Path, default=Path("bench/results/limits"))
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args.requests, args.rounds, args.redis_url))
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(table(results) + "\n")
    return 0 if all(row["met"] is not False for row in results["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
