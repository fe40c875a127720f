"""Prediction cache: per-item results keyed by (model, version, normalised input), with a TTL.

Two backends with one interface (:class:`PredictionCache`):

* :class:`RedisCache` when ``REDIS_URL`` is set: shared by every replica and worker. A batch costs one round
  trip to read (``MGET``) and one to write (a pipeline of Lua calls doing ``SET ... EX``). Redis is optional at run time: a
  failed or slow call (connect and read timeouts of ``MATSERVE_REDIS_TIMEOUT_S``, 0.25 s) makes the request go
  on without the cache, and a :class:`CircuitBreaker` then skips Redis for ``MATSERVE_REDIS_RETRY_AFTER_S``
  seconds before one request probes it again, so a dead Redis adds no per-request delay and the cache comes
  back by itself. One warning is logged per outage, and every skipped call is counted in
  ``matserve_cache_bypass_total{reason}``.
* :class:`MemoryCache` otherwise: a bounded LRU with the same TTL, private to the process.

Values are JSON objects (what a model stores for one item, see
:meth:`matserve.models.base.ServedModel.cache_value`); keys are built by :func:`cache_key`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from matserve.breaker import CircuitBreaker
from matserve.metrics import CACHE_BYPASS
from matserve.settings import Settings

logger = logging.getLogger("matserve.cache")

KEY_PREFIX = "matserve:cache:v1"
"""Prefix of every cache key; bump the ``v1`` if the stored value format changes."""


def cache_key(model: str, version: str, item_key: str) -> str:
    """The cache key of one item: ``matserve:cache:v1:<model>:<version>:<item_key>``."""
    return f"{KEY_PREFIX}:{model}:{version}:{item_key}"


def _decode(raw: bytes | str) -> dict[str, Any] | None:
    """A stored value, or ``None`` (a miss) if it is not a JSON object."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class PredictionCache(ABC):
    """Per-item prediction results with a time to live.

    Parameters
    ----------
    ttl_s : int
        Lifetime of a stored value, in seconds.
    """

    backend: str = "none"
    durable: bool = False

    def __init__(self, ttl_s: int) -> None:
        self.ttl_s = ttl_s

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[dict[str, Any] | None] | None:
        """The stored value of each key (``None`` where absent), or ``None`` if the cache was bypassed."""

    @abstractmethod
    def set_many(self, values: Mapping[str, dict[str, Any]]) -> bool:
        """Store values with the cache's TTL; ``False`` if the cache was bypassed (nothing stored)."""

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says about the cache."""
        return {"backend": self.backend, "ttl_s": self.ttl_s, "shared": self.durable}

    @abstractmethod
    def clear(self, model: str | None = None, version: str | None = None) -> int:
        """Delete stored predictions (all, one model's, or one model version's); returns how many.

        Raises
        ------
        ConnectionError
            The backing store could not be reached (nothing, or only part, was deleted).
        """


def key_pattern(model: str | None, version: str | None) -> str:
    """Prefix of the keys :meth:`PredictionCache.clear` deletes (``model`` must be set if ``version`` is)."""
    if version is not None and model is None:
        raise ValueError("a version needs a model")
    parts = [KEY_PREFIX] + ([model] if model else []) + ([version] if version else [])
    return ":".join(parts) + ":"


class MemoryCache(PredictionCache):
    """In-process LRU with a TTL: used without Redis; thread-safe.

    Parameters
    ----------
    ttl_s : int
        Lifetime of a stored value, in seconds.
    max_items : int
        Most values kept; storing more evicts the least recently used.
    """

    backend = "memory"

    def __init__(self, ttl_s: int, max_items: int) -> None:
        super().__init__(ttl_s)
        self.max_items = max_items
        self._values: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key -> (expiry, monotonic s; JSON)
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        now_s = time.monotonic()
        found: list[str | None] = []
        with self._lock:
            for key in keys:
                entry = self._values.get(key)
                if entry is None:
                    found.append(None)
                elif entry[0] <= now_s:
                    del self._values[key]
                    found.append(None)
                else:
                    self._values.move_to_end(key)
                    found.append(entry[1])
        return [None if text is None else _decode(text) for text in found]

    def set_many(self, values: Mapping[str, dict[str, Any]]) -> bool:
        if self.max_items <= 0:
            return True
        expires_s = time.monotonic() + self.ttl_s
        encoded = [(key, json.dumps(value)) for key, value in values.items()]
        with self._lock:
            for key, text in encoded:
                self._values[key] = (expires_s, text)
                self._values.move_to_end(key)
            while len(self._values) > self.max_items:
                self._values.popitem(last=False)
        return True

    def clear(self, model: str | None = None, version: str | None = None) -> int:
        prefix = key_pattern(model, version)
        with self._lock:
            doomed = [key for key in self._values if key.startswith(prefix)]
            for key in doomed:
                del self._values[key]
        return len(doomed)

    @property
    def size(self) -> int:
        """Values held now (expired ones included until they are looked up or evicted)."""
        return len(self._values)


WRITE_BATCH_ITEMS = 1000
"""Keys per write script: short enough (a few ms in Redis) that no single reply approaches the read timeout."""

# KEYS: cache keys. ARGV: ttl_s, then one JSON value per key.
_SET_EX_LUA = """
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[1]) end
return #KEYS
"""


class RedisCache(PredictionCache):
    """Cache in Redis: one string key per item, ``MGET`` to read a batch and one pipelined round trip to write it.

    Writes go through a small Lua script (``SET key value EX ttl`` for up to :data:`WRITE_BATCH_ITEMS` keys per
    call): packing one command per thousand keys is several times cheaper for the client than one per key.

    Never raises on Redis failures: the call is bypassed (``get_many`` returns ``None``) and counted.

    Parameters
    ----------
    url : str
        ``redis://[[user]:password@]host:port/db``.
    ttl_s : int
        Lifetime of a stored value, in seconds.
    timeout_s : float
        Connect and read timeout, in seconds; no retries (the breaker handles failures).
    retry_after_s : float
        Seconds to bypass Redis after a failure before probing it again.
    """

    backend = "redis"
    durable = True

    def __init__(self, url: str, ttl_s: int, timeout_s: float, retry_after_s: float) -> None:
        super().__init__(ttl_s)
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            client_name="matserve-cache",
        )
        self._set_ex = self.client.register_script(_SET_EX_LUA)
        location = self.client.connection_pool.connection_kwargs
        self.breaker = CircuitBreaker(
            f"Redis cache at {location.get('host', '?')}:{location.get('port', '?')}", retry_after_s
        )

    def get_many(self, keys: Sequence[str]) -> list[dict[str, Any] | None] | None:
        if not keys:
            return []
        if not self.breaker.allow():
            CACHE_BYPASS.labels(reason="circuit_open").inc()
            return None
        try:
            found = self.client.mget(list(keys))
        except (redis.RedisError, OSError) as error:
            self._failed(error)
            return None
        self.breaker.record_success()
        return [None if raw is None else _decode(raw) for raw in found]

    def set_many(self, values: Mapping[str, dict[str, Any]]) -> bool:
        if not values:
            return True
        if not self.breaker.allow():
            CACHE_BYPASS.labels(reason="circuit_open").inc()
            return False
        items = [(key, json.dumps(value)) for key, value in values.items()]
        pipeline = self.client.pipeline(transaction=False)
        for start in range(0, len(items), WRITE_BATCH_ITEMS):
            batch = items[start : start + WRITE_BATCH_ITEMS]
            self._set_ex(keys=[key for key, _ in batch], args=[self.ttl_s, *(text for _, text in batch)],
                         client=pipeline)  # fmt: skip
        try:
            pipeline.execute()
        except (redis.RedisError, OSError) as error:
            self._failed(error)
            return False
        self.breaker.record_success()
        return True

    def clear(self, model: str | None = None, version: str | None = None) -> int:
        pattern = _glob_escape(key_pattern(model, version)) + "*"
        deleted = 0
        try:
            batch: list[bytes] = []
            for key in self.client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += self.client.unlink(*batch)
                    batch = []
            if batch:
                deleted += self.client.unlink(*batch)
        except (redis.RedisError, OSError) as error:
            raise ConnectionError(f"Redis cache unreachable after deleting {deleted} predictions: {error}") from None
        return deleted

    def _failed(self, error: BaseException) -> None:
        CACHE_BYPASS.labels(reason="redis_error").inc()
        self.breaker.record_failure(error)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "available": not self.breaker.failing}


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so that a model or version name matches only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def make_cache(settings: Settings) -> PredictionCache | None:
    """The cache the settings ask for: Redis if ``REDIS_URL`` is set, else in memory; ``None`` if disabled."""
    if not settings.cache_enabled:
        return None
    if settings.redis_url:
        return RedisCache(
            settings.redis_url,
            ttl_s=settings.cache_ttl_s,
            timeout_s=settings.redis_timeout_s,
            retry_after_s=settings.redis_retry_after_s,
        )
    return MemoryCache(ttl_s=settings.cache_ttl_s, max_items=settings.cache_max_items)
