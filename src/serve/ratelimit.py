"""Per-key rate limits and quotas, and the failed-authentication limit per client address, on
the ``limits`` library: its strategies (moving window, fixed window, sliding window counter) and
its storages (``memory://`` in the process; Redis with ``DFD_REDIS_URL``, so replicas enforce one
limit together).

A request's cost is in units: ``/infer`` charges 1, a video its frames, a batch its files
(:func:`charge`). Each key has a rate (``DFD_RATE_LIMIT`` or its own) and a quota (``DFD_QUOTA``
or its own); the quota always counts in fixed windows (a moving window would keep one entry per
unit for a day). The answer carries the IETF draft's ``RateLimit-Policy`` and ``RateLimit``
headers (draft-ietf-httpapi-ratelimit-headers, structured fields), errors included.

When the storage fails, the limiter stops asking it for :data:`STORAGE_RETRY_S` (so an outage
costs one failed call per interval, not one per request), counts and logs it once, and answers
as ``DFD_RATE_LIMIT_FAILURE_MODE`` says: ``open`` serves without limits, ``closed`` answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, TypeVar

from fastapi import Request
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import StorageError
from limits.util import WindowStats
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from src.core.errors import RateLimitedError, RateLimitStoreUnavailableError, TooMuchWorkError
from src.core.settings import Settings
from src.serve.auth import Caller
from src.serve.metrics import Metrics

logger = logging.getLogger(__name__)
T = TypeVar("T")

STORAGE_RETRY_S = 1.0
MAX_BLOCKED_ADDRESSES = 10_000
STRATEGIES: dict[str, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}
# What a storage call raises when Redis is away: limits' StorageError (wrapping redis-py's
# errors), the socket's own errors, and uvloop's RuntimeError for a write on a transport that
# was reset under it (seen when the connection is cut).
# What a storage call raises when the storage is away (a Redis storage adds redis-py's errors:
# redis is imported only when DFD_REDIS_URL is set; with its telemetry it costs ~0.2 s at start).
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    StorageError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,
)


def storage_errors(storage: Storage) -> tuple[type[BaseException], ...]:
    if isinstance(storage, MemoryStorage):
        return STORAGE_ERRORS
    from redis.exceptions import RedisError

    return (*STORAGE_ERRORS, RedisError)


UNLIMITED = "unlimited"
PolicyName = Literal["rate", "quota"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class StorageDown(Exception):
    """The rate-limit storage did not answer; the failure mode decides what happens."""


@lru_cache(maxsize=256)
def parse_limit(text: str) -> RateLimitItem:
    return parse(text)


# --- the answer's headers
@dataclass(frozen=True)
class PolicyState:
    """One policy of a key, as the answer reports it."""

    name: PolicyName
    limit: int
    window_s: int
    remaining: int
    reset_s: int


@dataclass(frozen=True)
class RateLimitStatus:
    policies: tuple[PolicyState, ...]

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``RateLimit-Policy: "rate";q=10;w=60`` and ``RateLimit: "rate";r=7;t=42`` (several
        policies are listed comma-separated, the rate first)."""
        if not self.policies:
            return []
        policy = ", ".join(f'"{p.name}";q={p.limit};w={p.window_s}' for p in self.policies)
        state = ", ".join(f'"{p.name}";r={p.remaining};t={p.reset_s}' for p in self.policies)
        return [(b"ratelimit-policy", policy.encode()), (b"ratelimit", state.encode())]


# --- storage and its health
def storage_from_settings(settings: Settings) -> Storage:
    """``memory://`` without ``DFD_REDIS_URL``; else Redis through redis-py's asyncio client,
    with short timeouts and one immediate retry: a pooled connection that died in an outage
    fails once and is replaced, instead of failing a request after Redis is back. Longer
    outages are the limiter's own back-off's business (:class:`GuardedStorage`)."""
    if not settings.redis_url:
        return MemoryStorage()
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    url = settings.redis_url
    if url.startswith("unix://"):
        url = "redis+" + url
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 30,
    }
    return RedisStorage(
        "async+" + url,
        implementation="redispy",
        key_prefix=f"{settings.rate_limit_key_prefix}:limits",
        wrap_exceptions=True,
        **options,
    )


class GuardedStorage:
    """Runs storage calls, notices outages and recoveries, and stops calling while it is down."""

    def __init__(self, storage: Storage, metrics: Metrics, clock: Callable[[], float]) -> None:
        self.storage = storage
        self.errors = storage_errors(storage)
        self.metrics = metrics
        self.clock = clock
        self.down_until = 0.0
        self.up = True
        metrics.rate_limit_storage_up.set(1)

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        if not self.up and self.clock() < self.down_until:
            raise StorageDown()
        try:
            result = await operation()
        except self.errors as exc:
            self._failed(exc)
            raise StorageDown() from exc
        if not self.up:
            self.up = True
            self.metrics.rate_limit_storage_up.set(1)
            logger.warning("rate-limit storage reachable again; limits are enforced")
        return result

    def _failed(self, exc: BaseException) -> None:
        self.metrics.rate_limit_storage_errors.inc()
        self.down_until = self.clock() + STORAGE_RETRY_S
        if self.up:
            self.up = False
            self.metrics.rate_limit_storage_up.set(0)
            logger.error(
                "rate-limit storage unreachable (%s: %s); retrying every %.0f s",
                type(exc).__name__,
                exc,
                STORAGE_RETRY_S,
            )


# --- metric labels
class KeyLabels:
    """Bounded label values for key names: the first ``top_n`` names seen keep their own label,
    every later one is ``other`` (so a key file with thousands of keys cannot flood Prometheus)."""

    OTHER = "other"

    def __init__(self, top_n: int) -> None:
        self.top_n = top_n
        self.named: set[str] = set()

    def label(self, name: str) -> str:
        if name in self.named:
            return name
        if len(self.named) < self.top_n:
            self.named.add(name)
            return name
        return self.OTHER


# --- the key limiter
@dataclass(frozen=True)
class Policy:
    name: PolicyName
    item: RateLimitItem
    strategy: RateLimiter
    # The counter's namespace in the storage. Each strategy keeps its own kind of record (a list,
    # a counter, two counters), so the rate's namespace names its strategy: switching strategies
    # starts fresh counts instead of failing on the old records.
    namespace: str


@dataclass(frozen=True)
class Charged:
    """What a charge came to: the key's state for the headers, and the refusal if it was over."""

    status: RateLimitStatus | None
    refusal: RateLimitedError | None = None


class KeyLimiter:
    """Charges units to a key against its rate and quota."""

    def __init__(
        self,
        guard: GuardedStorage,
        strategy: str,
        default_rate: str | None,
        default_quota: str | None,
        fail_open: bool,
        retry_after_s: float,
        metrics: Metrics,
        labels: KeyLabels,
    ) -> None:
        self.guard = guard
        self.strategy_name = strategy
        self.rate_strategy = STRATEGIES[strategy](guard.storage)
        self.quota_strategy = FixedWindowRateLimiter(guard.storage)
        self.default_rate = default_rate
        self.default_quota = default_quota
        self.fail_open = fail_open
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.labels = labels

    def policies(self, caller: Caller) -> list[Policy]:
        chosen: list[Policy] = []
        rate = caller.rate or self.default_rate
        if rate and rate != UNLIMITED:
            chosen.append(
                Policy("rate", parse_limit(rate), self.rate_strategy, f"rate-{self.strategy_name}")
            )
        quota = caller.quota or self.default_quota
        if quota and quota != UNLIMITED:
            chosen.append(Policy("quota", parse_limit(quota), self.quota_strategy, "quota"))
        return chosen

    async def charge(self, caller: Caller, units: int) -> Charged:
        """Take ``units`` from the key's rate and quota: the state for the answer's headers (None
        when the storage is down and the limiter fails open) and the refusal, if over."""
        policies = self.policies(caller)
        if not policies:
            return Charged(RateLimitStatus(()))
        for policy in policies:
            if units > policy.item.amount:
                raise TooMuchWorkError(
                    f"this request costs {units} units; this key's {policy.name} allows "
                    f"{policy.item.amount} per {_window_text(policy.item)}"
                )
        label = self.labels.label(caller.name or caller.key_id)
        try:
            refused = await self._take(caller, policies, units)
            status = await self._status(caller, policies)
        except StorageDown:
            return Charged(self._storage_down(label))
        if refused is not None:
            self.metrics.rate_limited(label, "limited", 0)
            state = next(p for p in status.policies if p.name == refused.name)
            refusal = RateLimitedError(
                f"this key's {refused.name} of {refused.item.amount} per "
                f"{_window_text(refused.item)} is used up",
                retry_after_s=max(1, state.reset_s),
            )
            return Charged(status, refusal)
        self.metrics.rate_limited(label, "allowed", units)
        return Charged(status)

    async def peek(self, caller: Caller) -> RateLimitStatus | None:
        """The key's state without charging (for answers of routes that charge nothing)."""
        policies = self.policies(caller)
        if not policies:
            return None
        try:
            return await self._status(caller, policies)
        except StorageDown:
            return None

    async def _take(self, caller: Caller, policies: Sequence[Policy], units: int) -> Policy | None:
        """The policy that refused, or None once every policy took ``units``. The quota is
        tested before the rate is taken and taken after it, so a refused request uses no quota
        (two replicas racing may overshoot it by one request's units)."""
        ident = caller.key_id
        quotas = [p for p in policies if p.name == "quota"]
        for policy in quotas:
            if not await self._test(policy, ident, units):
                return policy
        for policy in policies:
            if policy.name == "rate" and not await self._hit(policy, ident, units):
                return policy
        for policy in quotas:
            await self._hit(policy, ident, units)
        return None

    async def _test(self, policy: Policy, ident: str, units: int) -> bool:
        return await self.guard.call(
            lambda: policy.strategy.test(policy.item, policy.namespace, ident, cost=units)
        )

    async def _hit(self, policy: Policy, ident: str, units: int) -> bool:
        return await self.guard.call(
            lambda: policy.strategy.hit(policy.item, policy.namespace, ident, cost=units)
        )

    async def _stats(self, policy: Policy, ident: str) -> WindowStats:
        return await self.guard.call(
            lambda: policy.strategy.get_window_stats(policy.item, policy.namespace, ident)
        )

    async def _status(self, caller: Caller, policies: Sequence[Policy]) -> RateLimitStatus:
        states = []
        now = time.time()
        for policy in policies:
            stats = await self._stats(policy, caller.key_id)
            states.append(
                PolicyState(
                    name=policy.name,
                    limit=policy.item.amount,
                    window_s=policy.item.get_expiry(),
                    remaining=max(0, int(stats.remaining)),
                    reset_s=max(0, math.ceil(stats.reset_time - now)),
                )
            )
        return RateLimitStatus(tuple(states))

    def _storage_down(self, label: str) -> RateLimitStatus | None:
        self.metrics.rate_limited(label, "unchecked", 0)
        if self.fail_open:
            return None
        raise RateLimitStoreUnavailableError(
            "the rate-limit store is unreachable", retry_after_s=self.retry_after_s
        )


def _window_text(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


# --- failed authentications
def client_address(scope: Scope, trusted: Sequence[Network]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the right-most
    ``X-Forwarded-For`` entry that is not itself a trusted proxy (entries further left were
    written by the client and could say anything)."""
    peer = (scope.get("client") or ("", 0))[0]
    if not trusted or not _is_trusted(peer, trusted):
        return str(peer)
    forwarded: list[str] = []
    for name, value in scope.get("headers", []):
        if name == b"x-forwarded-for":
            forwarded.extend(part.strip() for part in value.decode("latin-1").split(","))
    for hop in reversed(forwarded):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return str(peer)  # a garbled chain: trust nothing in it
        if not _is_trusted(hop, trusted):
            return hop
    return forwarded[0] if forwarded else str(peer)


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


class FailedAuthLimiter:
    """Failed authentications per client address. Past the limit, the address gets 429 for the
    rest of the window even with a valid key, or guessing would go on behind the 429s.

    The count is shared (the storage); whether an address is blocked is remembered in the
    process, so a valid request costs no storage call. Across N replicas a guesser gets at most
    N more answers than the limit per window: one per replica, which then blocks it too.
    """

    def __init__(
        self,
        guard: GuardedStorage,
        limit: str | None,
        trusted_proxies: list[str],
        fail_open: bool,
        retry_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.guard = guard
        self.item = parse_limit(limit) if limit else None
        self.strategy = FixedWindowRateLimiter(guard.storage)
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self.fail_open = fail_open
        self.retry_after_s = retry_after_s
        self.clock = clock
        self.blocked: dict[str, float] = {}

    def address(self, scope: Scope) -> str:
        return client_address(scope, self.trusted)

    def check(self, address: str) -> None:
        """Raise 429 if ``address`` is blocked; no storage call."""
        until = self.blocked.get(address)
        if until is None:
            return
        left = until - self.clock()
        if left <= 0:
            del self.blocked[address]
            return
        raise _too_many_failures(left)

    async def failed(self, address: str) -> None:
        """Count a failed authentication; raise 429 if the address is now over its limit."""
        if self.item is None:
            return
        item = self.item
        try:
            allowed = await self.guard.call(lambda: self.strategy.hit(item, "auth", address))
            if allowed:
                return
            stats = await self.guard.call(
                lambda: self.strategy.get_window_stats(item, "auth", address)
            )
        except StorageDown:
            if self.fail_open:
                return
            raise RateLimitStoreUnavailableError(
                "the rate-limit store is unreachable", retry_after_s=self.retry_after_s
            ) from None
        left = max(1.0, stats.reset_time - time.time())
        self._block(address, left)
        raise _too_many_failures(left)

    def _block(self, address: str, seconds: float) -> None:
        now = self.clock()
        if len(self.blocked) >= MAX_BLOCKED_ADDRESSES:
            self.blocked = {a: t for a, t in self.blocked.items() if t > now}
            if len(self.blocked) >= MAX_BLOCKED_ADDRESSES:
                self.blocked.pop(next(iter(self.blocked)))
        self.blocked[address] = now + seconds


def _too_many_failures(retry_after_s: float) -> RateLimitedError:
    return RateLimitedError(
        "too many failed authentications from this address; retry later",
        retry_after_s=max(1.0, retry_after_s),
    )


# --- the app's view
@dataclass
class RateLimits:
    """What ``app.state.rate_limits`` holds: the key limiter and the failed-auth limiter, on one
    storage."""

    keys: KeyLimiter
    failed_auth: FailedAuthLimiter

    @classmethod
    def from_settings(
        cls, settings: Settings, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ) -> RateLimits:
        guard = GuardedStorage(storage_from_settings(settings), metrics, clock)
        fail_open = settings.rate_limit_failure_mode == "open"
        keys = KeyLimiter(
            guard,
            settings.rate_limit_strategy,
            settings.rate_limit,
            settings.quota,
            fail_open,
            settings.retry_after_s,
            metrics,
            KeyLabels(settings.rate_limit_metric_keys),
        )
        failed_auth = FailedAuthLimiter(
            guard,
            settings.failed_auth_limit,
            settings.trusted_proxies,
            fail_open,
            settings.retry_after_s,
            clock,
        )
        return cls(keys, failed_auth)

    async def aclose(self) -> None:
        """Close Redis's connections (``limits`` has no close of its own: its redis-py client
        is reached through the storage's bridge)."""
        storage = self.keys.guard.storage
        client = getattr(getattr(storage, "bridge", None), "storage", None)
        if client is not None and hasattr(client, "aclose"):
            with contextlib.suppress(*self.keys.guard.errors):
                await client.aclose()


async def charge(request: Request, units: int) -> None:
    """Charge ``units`` to the request's caller (``request.state.caller``) against its rate and
    quota. Over either: :class:`RateLimitedError` (429 with ``Retry-After``). Either way the
    state is recorded for the answer's ``RateLimit`` headers."""
    limits: RateLimits = request.app.state.rate_limits
    charged = await limits.keys.charge(request.state.caller, units)
    request.state.rate_limit = charged.status
    if charged.refusal is not None:
        raise charged.refusal


class RateLimitHeadersMiddleware:
    """Adds ``RateLimit-Policy`` and ``RateLimit`` to every answer of an authenticated request,
    errors included: the state :func:`charge` recorded, or, for routes that charge nothing, the
    key's current state."""

    def __init__(self, app: ASGIApp, limiter: KeyLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = await self._status(state)
                if status is not None and status.policies:
                    headers = list(message.get("headers", []))
                    headers.extend(status.headers())
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _status(self, state: dict[str, Any]) -> RateLimitStatus | None:
        if "rate_limit" in state:
            status: RateLimitStatus | None = state["rate_limit"]
            return status
        caller = state.get("caller")
        return await self.limiter.peek(caller) if isinstance(caller, Caller) else None
