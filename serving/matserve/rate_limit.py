"""Per-client rate limiting of the public prediction routes: a token bucket per client, 429 when it is empty.

What is limited
    ``POST`` requests to :data:`LIMITED_PREFIXES` (and any route under them, e.g. a later
    ``/v1/formation-enthalpy/...``): one token per request, so a batch job counts once, however many inputs it
    has. Everything else is exempt: ``GET /v1/models``, the docs, the admin routes, polling, reading and
    cancelling jobs, and BentoML's ``/readyz``, ``/livez`` and ``/metrics`` (which never reach this app).

Who is a client
    The address the connection comes from (ASGI ``scope["client"]``; an IPv6 client by its /64 network, which
    one host can change at will). ``X-Forwarded-For`` is never read: behind a reverse proxy or an ingress every
    request comes from the proxy's address, so either rate-limit at the proxy or give callers API keys. A
    request with an API key known to ``MATSERVE_API_KEYS`` (``X-API-Key: K``, or ``Authorization: Bearer K``)
    is counted by key, with that key's limit. An unknown key is not an error: the routes are public, so a wrong
    key gets what no key gets (the address's bucket; the 429 message says the key was not recognised). A 401
    would make a bad key worse than none, and ``Authorization: Bearer`` also carries the admin token and
    tokens that gateways add.

The bucket
    Holds up to ``burst`` tokens (``MATSERVE_RATE_LIMIT_BURST``; 0: the per-minute limit) and refills at
    ``per_minute / 60`` tokens per second; a request takes one token, or gets 429 with ``Retry-After``: the
    whole seconds until a token will be there. An idle bucket is full again after ``burst / rate`` seconds;
    then it is deleted (a new one starts full).

Where buckets live
    With ``REDIS_URL``: in Redis, shared by every replica (one Lua script call per request, atomic, server
    clock, key TTL = refill time). If Redis fails or times out (``MATSERVE_REDIS_TIMEOUT_S``), the decision is
    taken by this process's in-memory buckets instead (each replica then limits on its own), a warning is
    logged once per outage and ``matserve_rate_limit_fallback_total`` counts it; a circuit breaker skips Redis
    for ``MATSERVE_REDIS_RETRY_AFTER_S`` seconds before probing it again. A Redis outage never causes a 5xx.
    Without ``REDIS_URL``: in memory (per process), bounded: full buckets are evicted, and at most
    :data:`MAX_MEMORY_BUCKETS` are kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
import redis.asyncio
from fastapi.responses import JSONResponse
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from matserve.breaker import CircuitBreaker
from matserve.errors import RateLimited
from matserve.metrics import RATE_LIMIT_FALLBACK, RATE_LIMITED
from matserve.settings import Settings

logger = logging.getLogger("matserve.rate_limit")

LIMITED_PREFIXES = (
    "/formation-enthalpy",
    "/xrd/phase",
    "/xrd/novelty",
    "/ebsd/index",
    "/ebsd/scan",
    "/scattering/sort",
    "/jobs",
)
"""Routes (inside the ``/v1`` app) whose ``POST`` requests are limited, with every route under them."""

MAX_MEMORY_BUCKETS = 100_000
"""Most in-memory buckets (~200 bytes each); past it the least recently used go first (they restart full)."""

KEY_PREFIX = "matserve:ratelimit:v1"
"""Prefix of the Redis keys of the buckets."""

# KEYS[1]: the bucket (a hash: tokens, ts). ARGV[1]: refill rate, tokens/s; ARGV[2]: capacity, tokens.
# Returns {1, 0} when a token was taken, else {0, ms until one is there}. The server's clock (TIME) is used so
# that replicas with skewed clocks agree; the key expires once the bucket would be full again.
_TAKE_LUA = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
if tokens < 1 then
  return {0, math.ceil((1 - tokens) / rate * 1000)}
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return {1, 0}
"""


@dataclass(frozen=True)
class Limit:
    """One client's allowance.

    Attributes
    ----------
    per_minute : int
        Sustained rate, requests per minute (0: unlimited).
    burst : int
        Bucket size: requests that may come at once after a quiet period.
    """

    per_minute: int
    burst: int

    @property
    def rate_per_s(self) -> float:
        """Refill rate, tokens per second."""
        return self.per_minute / 60.0


def make_limit(per_minute: int, burst: int = 0) -> Limit:
    """A :class:`Limit`; ``burst`` 0 means ``per_minute``. Raises ValueError on negative values."""
    if per_minute < 0 or burst < 0:
        raise ValueError(f"rate limits must be >= 0, got {per_minute}/min with burst {burst}")
    return Limit(per_minute=per_minute, burst=burst or per_minute)


def key_digest(api_key: str) -> str:
    """How an API key is held and named (never in clear, neither in memory maps nor in Redis keys)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def parse_api_keys(text: str | None) -> dict[str, Limit]:
    """``MATSERVE_API_KEYS`` (``key1:600,key2:6000`` or ``key:per_minute:burst``) -> {sha256 of key: limit}.

    A key with limit 0 is not limited. Errors name the entry's position, never the key.
    """
    keys: dict[str, Limit] = {}
    for position, entry in enumerate((text or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        parts = entry.split(":")
        try:
            if len(parts) not in (2, 3) or not parts[0]:
                raise ValueError
            limit = make_limit(int(parts[1]), int(parts[2]) if len(parts) == 3 else 0)
        except ValueError:
            raise ValueError(
                f"MATSERVE_API_KEYS entry {position} is not KEY:PER_MINUTE or KEY:PER_MINUTE:BURST "
                "(non-negative integers), e.g. key1:600,key2:6000:100"
            ) from None
        keys[key_digest(parts[0])] = limit
    return keys


@dataclass(frozen=True)
class Decision:
    """A bucket's answer: ``allowed``, or the seconds until a token will be there."""

    allowed: bool
    retry_after_s: float = 0.0


@dataclass
class _Bucket:
    tokens: float
    updated_s: float  # monotonic
    full_s: float  # monotonic time from which the bucket is full again (then it may be dropped)


class MemoryBuckets:
    """Token buckets in this process's memory; thread-safe, bounded.

    Buckets are kept least recently used first; each call drops the oldest ones that are full again (an absent
    bucket is a full one), and never keeps more than ``max_buckets``.

    Parameters
    ----------
    max_buckets : int
        Most buckets kept.
    """

    backend = "memory"

    def __init__(self, max_buckets: int = MAX_MEMORY_BUCKETS) -> None:
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, limit: Limit) -> Decision:
        """Take one token from ``key``'s bucket if there is one."""
        now_s = time.monotonic()
        rate = limit.rate_per_s
        with self._lock:
            bucket = self._buckets.pop(key, None)
            tokens = float(limit.burst) if bucket is None else bucket.tokens
            if bucket is not None:
                tokens = min(float(limit.burst), tokens + (now_s - bucket.updated_s) * rate)
            if tokens >= 1:
                tokens -= 1
                decision = Decision(allowed=True)
            else:
                decision = Decision(allowed=False, retry_after_s=(1 - tokens) / rate)
            self._buckets[key] = _Bucket(tokens, now_s, now_s + (limit.burst - tokens) / rate)
            self._evict(now_s)
        return decision

    def _evict(self, now_s: float) -> None:
        """Drop the least recently used buckets that are full again, and any beyond ``max_buckets`` (lock held)."""
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if oldest.full_s > now_s and len(self._buckets) <= self.max_buckets:
                return
            self._buckets.popitem(last=False)

    @property
    def size(self) -> int:
        """Buckets held now."""
        return len(self._buckets)


class RedisBuckets:
    """Token buckets in Redis, shared by every replica; on any Redis failure, ``fallback`` decides instead.

    Parameters
    ----------
    url : str
        ``redis://[[user]:password@]host:port/db``.
    timeout_s : float
        Connect and read timeout of each call, in seconds; no retries.
    retry_after_s : float
        Seconds to skip Redis after a failure before probing it again.
    fallback : MemoryBuckets
        Used while Redis is unusable.
    """

    backend = "redis"

    def __init__(self, url: str, timeout_s: float, retry_after_s: float, fallback: MemoryBuckets) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.fallback = fallback
        self._client: redis.asyncio.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._take: AsyncScript | None = None
        location = urlsplit(url)
        self.breaker = CircuitBreaker(
            f"Redis rate limiter at {location.hostname}:{location.port or 6379} (meanwhile each process limits on "
            "its own)",
            retry_after_s,
        )

    def _script(self) -> AsyncScript:
        """The take script on a client of the running event loop (asyncio clients are bound to their loop)."""
        loop = asyncio.get_running_loop()
        if self._take is None or self._loop is not loop:
            self._client = redis.asyncio.Redis.from_url(
                self.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),
                client_name="matserve-rate-limit",
            )
            self._loop = loop
            self._take = self._client.register_script(_TAKE_LUA)
        return self._take

    async def take(self, key: str, limit: Limit) -> Decision:
        """Take one token from ``key``'s shared bucket (or from the fallback's if Redis is unusable)."""
        if not self.breaker.allow():
            RATE_LIMIT_FALLBACK.labels(reason="circuit_open").inc()
            return self.fallback.take(key, limit)
        try:
            allowed, wait_ms = await self._script()(keys=[f"{KEY_PREFIX}:{key}"], args=[limit.rate_per_s, limit.burst])
        except (redis.RedisError, OSError, TimeoutError) as error:
            RATE_LIMIT_FALLBACK.labels(reason="redis_error").inc()
            self.breaker.record_failure(error)
            return self.fallback.take(key, limit)
        self.breaker.record_success()
        return Decision(allowed=bool(allowed), retry_after_s=int(wait_ms) / 1000.0)


def client_address(scope: Scope) -> str:
    """The bucket name of the connection's address: ``ip:1.2.3.4``, or ``ip6:<its /64 network>``."""
    client = scope.get("client")
    host = client[0] if client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"host:{host or 'unknown'}"  # e.g. a Unix socket
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip6:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"ip:{address}"


def _route(scope: Scope) -> str:
    """The request's path inside this (mounted) app, without a trailing slash."""
    path = scope.get("path", "")
    root_path = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    return path.rstrip("/") or "/"


def limited_prefix(scope: Scope) -> str | None:
    """The entry of :data:`LIMITED_PREFIXES` that covers this request, or ``None`` if it is exempt."""
    if scope["type"] != "http" or scope.get("method") != "POST":
        return None
    route = _route(scope)
    for prefix in LIMITED_PREFIXES:
        if route == prefix or route.startswith(prefix + "/"):
            return prefix
    return None


def presented_keys(scope: Scope) -> list[str]:
    """API keys the request carries: ``X-API-Key``, then an ``Authorization: Bearer`` token."""
    keys: list[str] = []
    for name, value in scope.get("headers", []):
        if name == b"x-api-key":
            keys.insert(0, value.decode("latin-1").strip())
        elif name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                keys.append(token.strip())
    return [key for key in keys if key]


class RateLimit:
    """ASGI middleware: the per-client token bucket of the public prediction routes (see the module docstring).

    Parameters
    ----------
    app : ASGIApp
    settings : Settings
        ``rate_limit_per_minute`` (0 turns limiting off, API keys included), ``rate_limit_burst``, ``api_keys``,
        and ``redis_url``, ``redis_timeout_s``, ``redis_retry_after_s`` for the shared buckets.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.enabled = settings.rate_limit_per_minute > 0
        self.default_limit = make_limit(max(settings.rate_limit_per_minute, 0), max(settings.rate_limit_burst, 0))
        self.api_keys = parse_api_keys(settings.api_keys)
        self.memory = MemoryBuckets()
        self.buckets: MemoryBuckets | RedisBuckets = self.memory
        if self.enabled and settings.redis_url:
            self.buckets = RedisBuckets(
                settings.redis_url, settings.redis_timeout_s, settings.redis_retry_after_s, fallback=self.memory
            )
        if self.enabled:
            logger.info(
                "rate limit: %d requests/min per client (burst %d), %d API key(s) with their own limits; buckets in %s",
                self.default_limit.per_minute,
                self.default_limit.burst,
                len(self.api_keys),
                self.buckets.backend,
            )

    def client(self, scope: Scope) -> tuple[str, Limit, str, bool]:
        """(bucket name, its limit, ``"api_key"`` or ``"address"``, whether an unknown key was sent)."""
        presented = presented_keys(scope)
        for key in presented:
            digest = key_digest(key)
            if digest in self.api_keys:
                return f"key:{digest[:32]}", self.api_keys[digest], "api_key", False
        unknown_key = bool(self.api_keys) and any(name == b"x-api-key" for name, _ in scope.get("headers", []))
        return client_address(scope), self.default_limit, "address", unknown_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prefix = limited_prefix(scope) if self.enabled else None
        if prefix is None:
            await self.app(scope, receive, send)
            return
        bucket, limit, by, unknown_key = self.client(scope)
        if limit.per_minute == 0:  # an API key without a limit
            await self.app(scope, receive, send)
            return
        if isinstance(self.buckets, RedisBuckets):
            decision = await self.buckets.take(bucket, limit)
        else:
            decision = self.buckets.take(bucket, limit)
        if decision.allowed:
            await self.app(scope, receive, send)
            return
        RATE_LIMITED.labels(route=scope.get("root_path", "") + prefix, by=by).inc()  # e.g. /v1/jobs
        await _send_error(self._refusal(limit, by, unknown_key, decision.retry_after_s), send)

    def _refusal(self, limit: Limit, by: str, unknown_key: bool, retry_after_s: float) -> RateLimited:
        wait_s = max(1, math.ceil(retry_after_s))
        counted = "API key" if by == "api_key" else "client address"
        note = ""
        if unknown_key:
            note = " (the X-API-Key sent is not a known key, so the request was counted by address)"
        elif by == "address" and self.api_keys:
            note = " (an API key, sent as X-API-Key, has its own limit)"
        return RateLimited(
            f"rate limit exceeded: limit {limit.per_minute} requests per minute per {counted}, bursts of up to "
            f"{limit.burst}{note}; retry after {wait_s} s",
            retry_after_s=wait_s,
        )


async def _send_error(error: RateLimited, send: Send) -> None:
    response = JSONResponse(error.to_body(), status_code=error.status, headers=error.response_headers())
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - responses never read the body
    return {"type": "http.disconnect"}
