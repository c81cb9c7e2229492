"""``python -m bench.hostile --checkpoint PATH``: hostile clients against the service.

Each scenario starts a fresh service (as ``python -m bench`` does), runs one attack for
``--duration`` seconds while a well-behaved "normal client" (``--normal-concurrency``
keep-alive connections sending real JPEG frames) measures what is left for everyone else, then
stops the attack, waits ``--settle`` seconds and reads the server's RSS and ``/metrics`` again.
Scenarios:

- ``baseline``: no attack, for comparison.
- ``slow_upload``: ``--slow-connections`` uploads with valid headers (API key, the
  Content-Length of a real frame) whose body then trickles at ``--slow-rate`` bytes per second.
- ``headers``: one client sending requests with a ``--huge-header-kib`` header line, repeatedly;
  ``--header-streams`` sockets streaming one endless header line at ``--header-stream-kibps``;
  ``--silent-connections`` sockets that connect and send nothing.
- ``bombs``: ``--large-uploads`` uploads of ``--large-upload-bytes`` first, then waves of
  ``--bomb-wave`` concurrent WebP "decode bombs" (a tiny file declaring ``--bomb-size`` pixels,
  inside the upload limits), one wave after the other.
- ``deadline``: the service with ``DFD_REQUEST_TIMEOUT_S=--deadline-timeout``; bomb waves whose
  requests the attacker abandons (closes) after ``--abandon-after`` seconds. Normal answers
  slower than the timeout count as deadline violations; ``/metrics`` tells how much work was
  done (images preprocessed, images scored) against the answers anyone received.

A measurement, not a gate: exit status 0 whatever the results, non-zero only when the harness
itself fails (a service that does not start, a bad flag). Loopback only; every socket has a
timeout and is closed at the end of its scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import shlex
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bench.frames import load_frames
from bench.loadgen import LOOPBACK, build_payloads, multipart_request, read_response, run_level
from bench.procs import (
    API_KEY,
    REPO_ROOT,
    RssSampler,
    ServerProcess,
    add_service_arguments,
    clean_environ,
    free_port,
    load_average,
    machine_busy_s,
    process_cpu_s,
    rss_mb,
    running,
    service_command,
    service_env,
    setting_default,
    stop_on_signals,
)
from bench.stats import LevelResult, percentile

SCENARIOS = ("baseline", "slow_upload", "headers", "bombs", "deadline")
CONNECT_TIMEOUT_S = 5.0
RECONNECT_PAUSE_S = 0.5
MIN_WAVE_S = 0.2  # a wave answered at once (all 503) does not turn into a connection flood
NO_ANSWER = "no answer"


# ---------------------------------------------------------------------------- payloads


def bomb_webp(width: int, height: int, colour: tuple[int, int, int] = (90, 120, 150)) -> bytes:
    """A lossless WebP of one colour: a few dozen bytes that decode to ``width x height`` RGB."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="WEBP", lossless=True, method=0)
    return buffer.getvalue()


def split_request(request: bytes) -> tuple[bytes, bytes]:
    """A raw HTTP request's head (through the blank line) and its body."""
    head, sep, body = request.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("not an HTTP request: no blank line after the headers")
    return head + sep, body


def with_header(request: bytes, name: str, value: bytes) -> bytes:
    """``request`` with one more header line right after the request line."""
    line, sep, rest = request.partition(b"\r\n")
    return line + sep + name.encode() + b": " + value + b"\r\n" + rest


def large_upload(port: int, size: int, seed: int = 0) -> bytes:
    """An upload of ``size`` bytes within the limits: a JPEG marker, then noise (not decodable)."""
    blob = b"\xff\xd8\xff\xe0" + np.random.default_rng(seed).bytes(max(0, size - 4))
    return multipart_request(LOOPBACK, port, "/infer", API_KEY, blob)


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        return int(width), int(height)
    except ValueError:
        message = f"expected WIDTHxHEIGHT like 12000x3333, not {text!r}"
        raise argparse.ArgumentTypeError(message) from None


# ---------------------------------------------------------------------------- attack plumbing


@dataclass
class AttackLog:
    """What the attacker saw: one outcome per connection or request, labelled ``kind:outcome``.

    An outcome is the HTTP status the server answered, ``closed`` (the server closed without an
    answer), ``open`` (still waiting when the attack ended), ``abandoned`` (the attacker gave up
    on purpose), ``timeout`` or ``error:<Type>``.
    """

    outcomes: Counter[str] = field(default_factory=Counter)
    held_s: dict[str, list[float]] = field(default_factory=dict)
    bytes_sent: int = 0
    connections: int = 0
    peak_connections: int = 0
    waves: int = 0

    def record(self, kind: str, outcome: str, held_s: float) -> None:
        self.outcomes[f"{kind}:{outcome}"] += 1
        self.held_s.setdefault(kind, []).append(held_s)


class Sockets:
    """Every attacker connection, bounded in number, so that all are closed at the end."""

    def __init__(self, port: int, log: AttackLog, limit: int) -> None:
        self.port, self.log, self.limit = port, log, limit
        self._open: set[asyncio.StreamWriter] = set()

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if len(self._open) >= self.limit:
            raise RuntimeError(f"more than {self.limit} attacker connections at once")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, self.port), CONNECT_TIMEOUT_S
        )
        self._open.add(writer)
        self.log.connections += 1
        self.log.peak_connections = max(self.log.peak_connections, len(self._open))
        return reader, writer

    def close(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        writer.close()

    def close_all(self) -> None:
        for writer in list(self._open):
            self.close(writer)


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.perf_counter())


async def answer(reader: asyncio.StreamReader, until: float) -> str:
    """The server's answer on this connection by ``until``: its status, ``closed``, or NO_ANSWER."""
    try:
        response = await asyncio.wait_for(read_response(reader), _remaining(until))
    except TimeoutError:
        return NO_ANSWER
    except (asyncio.IncompleteReadError, ConnectionError):
        return "closed"
    except (OSError, ValueError, IndexError, asyncio.LimitOverrunError) as exc:
        return f"error:{type(exc).__name__}"
    return str(response.status)


async def trickle(
    writer: asyncio.StreamWriter,
    data: bytes | memoryview,
    rate_bps: float,
    deadline: float,
    interval_s: float = 0.25,
) -> int:
    """Send ``data`` at ``rate_bps`` bytes per second (a chunk per ``interval_s``, the first at
    once) until it is all sent or ``deadline``; returns the bytes sent. Raises on socket errors."""
    chunk = max(1, round(rate_bps * interval_s))
    interval_s = chunk / rate_bps
    view = memoryview(data)
    started = time.perf_counter()
    sent = 0
    while sent < len(view):
        wake = started + (sent // chunk) * interval_s
        if wake >= deadline:
            break
        await asyncio.sleep(max(0.0, wake - time.perf_counter()))
        piece = view[sent : sent + chunk]
        writer.write(piece)
        await asyncio.wait_for(writer.drain(), max(0.001, _remaining(deadline)))
        sent += len(piece)
    return sent


async def _send_then_trickle(
    writer: asyncio.StreamWriter,
    head: bytes,
    body: bytes | memoryview,
    rate_bps: float,
    deadline: float,
    log: AttackLog,
) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        writer.write(head)
        await asyncio.wait_for(writer.drain(), max(0.001, _remaining(deadline)))
        log.bytes_sent += len(head)
        log.bytes_sent += await trickle(writer, body, rate_bps, deadline)


async def _exchange(
    sockets: Sockets,
    kind: str,
    head: bytes,
    body: bytes | memoryview,
    rate_bps: float | None,
    deadline: float,
    until: float,
    *,
    abandon: bool = False,
) -> None:
    """One connection: send ``head`` then ``body`` (at once, or at ``rate_bps``), wait for the
    answer until ``until`` (at most ``deadline``), record the outcome, close."""
    started = time.perf_counter()
    try:
        reader, writer = await sockets.open()
    except (OSError, TimeoutError) as exc:
        sockets.log.record(kind, f"error:{type(exc).__name__}", 0.0)
        return
    if rate_bps is None:
        sending = _send_all(writer, head + bytes(body), deadline, sockets.log)
    else:
        sending = _send_then_trickle(writer, head, body, rate_bps, deadline, sockets.log)
    sender = asyncio.create_task(sending)
    try:
        outcome = await answer(reader, min(until, deadline))
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        sockets.close(writer)
    if outcome == NO_ANSWER:
        # the attacker gave up on purpose, the attack ended, or the attacker's own timeout
        outcome = "abandoned" if abandon else "open" if until >= deadline else "timeout"
    sockets.log.record(kind, outcome, time.perf_counter() - started)


async def _send_all(
    writer: asyncio.StreamWriter, data: bytes, deadline: float, log: AttackLog
) -> None:
    with contextlib.suppress(OSError, TimeoutError):
        writer.write(data)
        await asyncio.wait_for(writer.drain(), max(0.001, _remaining(deadline)))
        log.bytes_sent += len(data)


async def _repeat(deadline: float, pause_s: float, once: Callable[[], Awaitable[None]]) -> None:
    """``once()`` again and again until ``deadline``, ``pause_s`` apart (a persistent attacker)."""
    while _remaining(deadline) > 0:
        await once()
        await asyncio.sleep(min(pause_s, _remaining(deadline)))


# ---------------------------------------------------------------------------- the attacks


@dataclass
class AttackPlan:
    """Everything an attack needs; built once per scenario."""

    port: int
    frame_request: bytes
    bomb_request: bytes
    args: argparse.Namespace


async def slow_upload_attack(plan: AttackPlan, sockets: Sockets, deadline: float) -> None:
    head, body = split_request(plan.frame_request)
    rate = plan.args.slow_rate

    async def once() -> None:
        await _exchange(sockets, "slow", head, body, rate, deadline, deadline)

    await asyncio.gather(
        *(_repeat(deadline, RECONNECT_PAUSE_S, once) for _ in range(plan.args.slow_connections))
    )


async def header_attack(plan: AttackPlan, sockets: Sockets, deadline: float) -> None:
    args = plan.args
    huge = with_header(plan.frame_request, "X-Filler", b"a" * (args.huge_header_kib * 1024))
    rate = args.header_stream_kibps * 1024
    stream_head = (
        f"POST /infer HTTP/1.1\r\nHost: {LOOPBACK}:{plan.port}\r\nX-API-Key: {API_KEY}\r\n"
        "X-Stream: "
    ).encode()
    endless = memoryview(b"a" * int(rate * (args.duration + 1)))

    async def huge_header() -> None:
        until = time.perf_counter() + args.client_timeout
        await _exchange(sockets, "huge_header", huge, b"", None, deadline, until)

    async def stream() -> None:
        await _exchange(sockets, "header_stream", stream_head, endless, rate, deadline, deadline)

    async def silent() -> None:
        await _exchange(sockets, "silent", b"", b"", None, deadline, deadline)

    await asyncio.gather(
        _repeat(deadline, 0.25, huge_header),
        *(_repeat(deadline, RECONNECT_PAUSE_S, stream) for _ in range(args.header_streams)),
        *(_repeat(deadline, RECONNECT_PAUSE_S, silent) for _ in range(args.silent_connections)),
    )


async def bomb_attack(
    plan: AttackPlan, sockets: Sockets, deadline: float, *, abandon_after_s: float | None = None
) -> None:
    """Large uploads first (``--large-uploads``, not when abandoning), then waves of bombs."""
    args = plan.args
    if abandon_after_s is None and args.large_uploads:
        large = large_upload(plan.port, args.large_upload_bytes)
        until = time.perf_counter() + args.client_timeout
        await asyncio.gather(
            *(
                _exchange(sockets, "large", large, b"", None, deadline, until)
                for _ in range(args.large_uploads)
            )
        )
    wait_s = abandon_after_s if abandon_after_s is not None else args.client_timeout
    while _remaining(deadline) > 0:
        started = time.perf_counter()
        until = started + wait_s
        await asyncio.gather(
            *(
                _exchange(
                    sockets,
                    "bomb",
                    plan.bomb_request,
                    b"",
                    None,
                    deadline,
                    until,
                    abandon=abandon_after_s is not None,
                )
                for _ in range(args.bomb_wave)
            )
        )
        sockets.log.waves += 1
        next_wave = started + MIN_WAVE_S
        await asyncio.sleep(min(_remaining(deadline), max(0.0, next_wave - time.perf_counter())))


async def no_attack(plan: AttackPlan, sockets: Sockets, deadline: float) -> None:
    await asyncio.sleep(_remaining(deadline))


def _attack_for(name: str, args: argparse.Namespace) -> Callable[..., Awaitable[None]]:
    if name == "deadline":

        async def deadline_attack(plan: AttackPlan, sockets: Sockets, deadline: float) -> None:
            await bomb_attack(plan, sockets, deadline, abandon_after_s=args.abandon_after)

        return deadline_attack
    return {
        "baseline": no_attack,
        "slow_upload": slow_upload_attack,
        "headers": header_attack,
        "bombs": bomb_attack,
    }[name]


def connection_limit(name: str, args: argparse.Namespace) -> int:
    return {
        "baseline": 0,
        "slow_upload": args.slow_connections,
        "headers": 1 + args.header_streams + args.silent_connections,
        "bombs": max(args.bomb_wave, args.large_uploads),
        "deadline": args.bomb_wave,
    }[name]


async def attack_and_measure(
    name: str, plan: AttackPlan, payloads: Sequence[bytes], args: argparse.Namespace
) -> tuple[LevelResult, AttackLog]:
    """The attack for ``--duration`` s; the normal client from ``--ramp`` s in until its end."""
    log = AttackLog()
    sockets = Sockets(plan.port, log, limit=connection_limit(name, args))
    deadline = time.perf_counter() + args.duration
    attack = asyncio.create_task(_attack_for(name, args)(plan, sockets, deadline))
    try:
        await asyncio.sleep(min(args.ramp, args.duration))
        normal = await run_level(
            plan.port,
            payloads,
            args.normal_concurrency,
            10**9,
            _remaining(deadline),
            args.client_timeout,
            retry_after_cap_s=1.0,  # a well-behaved client waits as told (at most 1 s) after 503
        )
        # every attacker wait ends at the deadline, give or take a connect timeout
        await asyncio.wait_for(attack, _remaining(deadline) + CONNECT_TIMEOUT_S + 5.0)
    finally:
        attack.cancel()
        await asyncio.gather(attack, return_exceptions=True)
        sockets.close_all()
        await asyncio.sleep(0)  # let the transports close
    return normal, log


# ---------------------------------------------------------------------------- the service side


def scrape_work(base_url: str) -> dict[str, Any] | None:
    """From /metrics: images preprocessed and scored, /infer answers by status, in flight."""
    try:
        text = httpx.get(f"{base_url}/metrics", timeout=5.0).text
    except httpx.HTTPError:
        return None
    work: dict[str, Any] = {"preprocessed": 0, "scored": 0, "infer_statuses": {}, "in_flight": 0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dfd_preprocess_seconds_count":
                work["preprocessed"] = int(sample.value)
            elif sample.name == "dfd_batch_size_sum":
                work["scored"] = int(sample.value)
            elif sample.name == "dfd_http_requests_in_flight":
                work["in_flight"] = int(sample.value)
            elif sample.name == "dfd_http_requests_total" and sample.labels.get("route") == (
                "/infer"
            ):
                status = sample.labels.get("status", "?")
                work["infer_statuses"][status] = int(sample.value)
    return work


def work_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    if before is None or after is None:
        return {}
    statuses = {
        status: count - before["infer_statuses"].get(status, 0)
        for status, count in after["infer_statuses"].items()
        if count - before["infer_statuses"].get(status, 0)
    }
    return {
        "preprocessed": after["preprocessed"] - before["preprocessed"],
        "scored": after["scored"] - before["scored"],
        "infer_statuses": dict(sorted(statuses.items())),
        "in_flight_after": after["in_flight"],
    }


def wait_idle(server: ServerProcess, timeout_s: float) -> float | None:
    """Seconds until the server has no request in flight but the scrape itself; None: never."""
    assert server.process is not None
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s and server.process.poll() is None:
        work = scrape_work(server.base_url)
        if work is not None and work["in_flight"] <= 1:
            return round(time.perf_counter() - started, 1)
        time.sleep(0.5)
    return None


class _CpuUsage:
    """CPU use from now on: the server's, this harness's (attacker and normal client), and the
    rest of the machine's (other processes: when not near 0 the run was disturbed)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.server, self.harness = process_cpu_s(pid), time.process_time()
        self.busy, self.started = machine_busy_s(), time.perf_counter()

    def percentages(self) -> dict[str, float | None]:
        wall = max(time.perf_counter() - self.started, 1e-9)
        harness = time.process_time() - self.harness
        busy = machine_busy_s() - self.busy
        try:
            server: float | None = process_cpu_s(self.pid) - self.server
        except OSError:
            server = None
        other = busy - harness - (server or 0.0)
        return {
            "server_pct": round(100 * server / wall, 1) if server is not None else None,
            "harness_pct": round(100 * harness / wall, 1),
            "other_pct": round(max(0.0, 100 * other / wall), 1) if server is not None else None,
            "load_avg_1m": load_average(),
        }


def _rss_or_none(pid: int) -> float | None:
    try:
        return round(rss_mb(pid), 1)
    except (OSError, RuntimeError):
        return None


# ---------------------------------------------------------------------------- results


def summarize_scenario(
    name: str,
    normal: LevelResult,
    log: AttackLog,
    timeout_s: float,
    *,
    rss: dict[str, float | None] | None = None,
    work: dict[str, Any] | None = None,
    server_exit: int | None = None,
    idle_after_s: float | None = None,
    cpu: dict[str, float | None] | None = None,
) -> dict[str, Any]:
    """One scenario's row: the normal client's success rate and latency, deadline violations
    (any normal request slower than ``timeout_s``), the attacker's outcomes, RSS and work."""
    normal_summary = normal.summary()
    requests = normal_summary["requests"]
    late = sum(1 for latency in normal.latencies_s if latency > timeout_s)
    answered = [
        latency
        for latency, status in zip(normal.latencies_s, normal.statuses, strict=True)
        if status.isdigit()
    ]
    attacker_200 = sum(n for label, n in log.outcomes.items() if label.endswith(":200"))
    answered_200 = normal_summary["ok"] + attacker_200
    work = dict(work or {})
    if "scored" in work:
        work["answered_200"] = answered_200
        work["scored_without_200"] = work["scored"] - answered_200
    held = {
        kind: {
            "n": len(values),
            "median_s": round(percentile(values, 50), 2),
            "max_s": round(max(values), 2),
        }
        for kind, values in sorted(log.held_s.items())
    }
    return {
        "scenario": name,
        "request_timeout_s": timeout_s,
        "normal": {
            **normal_summary,
            "success_rate": round(normal_summary["ok"] / requests, 4) if requests else None,
            "late": late,
            "slowest_answer_ms": round(max(answered) * 1000, 1) if answered else None,
        },
        "attacker": {
            "outcomes": dict(sorted(log.outcomes.items())),
            "connections": log.connections,
            "peak_connections": log.peak_connections,
            "bytes_sent": log.bytes_sent,
            "waves": log.waves,
            "held": held,
        },
        "rss_mb": rss or {},
        "work": work,
        "idle_after_s": idle_after_s,
        "cpu": cpu or {},
        "server_exit": server_exit,
    }


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}{suffix}" if abs(value) >= 10 else f"{value:.1f}{suffix}"
    return f"{value}{suffix}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{label} {n}" for label, n in counts.items()) or "-"


def results_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "| scenario | normal ok | p50 ms | p99 ms | late (> timeout) | normal statuses "
        "| attacker outcomes | RSS before / peak / after MB | preprocessed / scored / 200s "
        "| idle after | CPU % server / harness / other (server after) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for row in rows:
        normal, rss, work, cpu = row["normal"], row["rss_mb"], row["work"], row["cpu"]
        rate = normal["success_rate"]
        ok = f"{100 * rate:.1f}% of {normal['requests']}" if rate is not None else "no requests"
        name = row["scenario"]
        if row["server_exit"] is not None:
            name += f" (server exited {row['server_exit']})"
        work_cell = (
            f"{work['preprocessed']} / {work['scored']} / {work['answered_200']}"
            if "scored" in work
            else "-"
        )
        lines.append(
            f"| {name} | {ok} | {_fmt(normal['p50_ms'])} | {_fmt(normal['p99_ms'])} "
            f"| {normal['late']} (> {row['request_timeout_s']:g} s; slowest answer "
            f"{_fmt(normal['slowest_answer_ms'], ' ms')}) "
            f"| {_counts(normal['statuses'])} "
            f"| {_counts(row['attacker']['outcomes'])} "
            f"| {_fmt(rss.get('before'))} / {_fmt(rss.get('peak'))} / {_fmt(rss.get('after'))} "
            f"| {work_cell} | {_fmt(row['idle_after_s'], ' s')} "
            f"| {_fmt(cpu.get('server_pct'))} / {_fmt(cpu.get('harness_pct'))} "
            f"/ {_fmt(cpu.get('other_pct'))} ({_fmt(cpu.get('settle_server_pct'))}) |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- orchestration


def _scenarios(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scenarios are {', '.join(SCENARIOS)}; not {unknown}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hostile",
        description="Hostile clients (slow uploads, huge headers, silent sockets, decode bombs, "
        "deadlines) against a fresh service each, with a normal client measuring what is left. "
        "Writes results.json and results.md to --out. Exit 0 whatever the results.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a dfd checkpoint (.pt)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "hostile")
    parser.add_argument("--scenarios", type=_scenarios, default=list(SCENARIOS))
    parser.add_argument("--duration", type=float, default=20.0, help="attack seconds, each")
    parser.add_argument("--ramp", type=float, default=1.0, help="attack head start, seconds")
    parser.add_argument("--settle", type=float, default=5.0, help="s after the attack: RSS after")
    parser.add_argument("--idle-wait", type=float, default=30.0, help="max s to wait for idle")
    parser.add_argument("--normal-concurrency", type=int, default=2)
    parser.add_argument("--client-timeout", type=float, default=10.0, help="s per request")
    parser.add_argument("--frames", type=int, default=16, help="distinct JPEG frames to send")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="s per server")
    add_service_arguments(parser)
    attack = parser.add_argument_group("attacks")
    attack.add_argument("--slow-connections", type=int, default=66)
    attack.add_argument("--slow-rate", type=float, default=4.0, help="body bytes per second")
    attack.add_argument("--huge-header-kib", type=int, default=1024)
    attack.add_argument("--header-streams", type=int, default=8)
    attack.add_argument("--header-stream-kibps", type=float, default=1024.0, help="per stream")
    attack.add_argument("--silent-connections", type=int, default=128)
    attack.add_argument("--bomb-size", type=_size, default=(12000, 3333), help="WIDTHxHEIGHT")
    attack.add_argument("--bomb-wave", type=int, default=64, help="bombs sent at once")
    attack.add_argument("--large-uploads", type=int, default=8, help="before the bombs; 0: none")
    attack.add_argument("--large-upload-bytes", type=int, default=10 * 2**20 - 1024)
    attack.add_argument("--deadline-timeout", type=float, default=2.0, help="DFD_REQUEST_TIMEOUT_S")
    attack.add_argument("--abandon-after", type=float, default=1.0, help="s (deadline scenario)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.normal_concurrency < 1:
        parser.error("--duration must be > 0 and --normal-concurrency >= 1")
    return args


def run_scenario(
    name: str,
    args: argparse.Namespace,
    checkpoint: Path,
    frames: Sequence[bytes],
    bomb: bytes,
    log_dir: Path,
) -> dict[str, Any]:
    env = service_env(args, checkpoint, free_port(), args.max_queue_size)
    if name == "deadline":
        env["DFD_REQUEST_TIMEOUT_S"] = str(args.deadline_timeout)
    timeout_s = float(env.get("DFD_REQUEST_TIMEOUT_S", setting_default("request_timeout_s")))
    server = ServerProcess(f"hostile-{name}", service_command(), env, log_dir)
    with running(server, args.ready_timeout):
        assert server.process is not None
        payloads = build_payloads(server.port, API_KEY, frames)
        asyncio.run(run_level(server.port, payloads, 4, 16, 120.0, args.client_timeout))
        plan = AttackPlan(
            port=server.port,
            frame_request=payloads[0],
            bomb_request=multipart_request(LOOPBACK, server.port, "/infer", API_KEY, bomb),
            args=args,
        )
        before = scrape_work(server.base_url)
        rss_before = _rss_or_none(server.pid)
        with RssSampler(server.pid) as sampler:
            usage = _CpuUsage(server.pid)
            normal, log = asyncio.run(attack_and_measure(name, plan, payloads, args))
            cpu = usage.percentages()
            settling = _CpuUsage(server.pid)
            time.sleep(args.settle)
            cpu["settle_server_pct"] = settling.percentages()["server_pct"]
            rss_after = _rss_or_none(server.pid)
        idle_after = wait_idle(server, args.idle_wait)
        after = scrape_work(server.base_url)
        row = summarize_scenario(
            name,
            normal,
            log,
            timeout_s,
            rss={"before": rss_before, "peak": round(sampler.peak_mb, 1), "after": rss_after},
            work=work_delta(before, after),
            server_exit=server.process.poll(),
            idle_after_s=idle_after,
            cpu=cpu,
        )
    normal_row = row["normal"]
    print(
        f"  {name:<12} normal ok {normal_row['ok']}/{normal_row['requests']}  "
        f"p50 {normal_row['p50_ms']} ms  p99 {normal_row['p99_ms']} ms  "
        f"{normal_row['statuses']}  attacker {row['attacker']['outcomes']}  RSS {row['rss_mb']}",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    clean_environ()
    command_line = "python -m bench.hostile " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    checkpoint = args.checkpoint.resolve()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    frames = load_frames(REPO_ROOT / "examples", count=args.frames)
    width, height = args.bomb_size
    bomb = bomb_webp(width, height)
    max_pixels = setting_default("max_image_pixels")
    print(
        f"bomb: {len(bomb)} B WebP declaring {width}x{height} = {width * height / 1e6:.1f} MP "
        f"(default limit {max_pixels / 1e6:.0f} MP); {len(frames)} frames; "
        f"{args.duration:g} s per scenario",
        flush=True,
    )
    started = time.time()
    rows = [
        run_scenario(name, args, checkpoint, frames, bomb, out / "logs") for name in args.scenarios
    ]
    table = results_table(rows)
    results = {
        "meta": {
            "command": command_line,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "checkpoint": str(checkpoint),
            "bomb_bytes": len(bomb),
            "bomb_size": [width, height],
            "settings": {
                k: (v if isinstance(v, (int, float, str, list)) else str(v))
                for k, v in vars(args).items()
            },
        },
        "scenarios": rows,
    }
    print("\n" + table)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(table + "\n")
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
