"""Serving state shared by the SDK and the proxy: a TTL cache, spend counters, budgets and the decision log.

One small interface, three implementations: ``MemoryStore`` (in-process, the default), ``RedisStore``
(``REDIS_URL``, shared by replicas) and ``FailoverStore`` (Redis while it answers, memory while it does not).
Spend counters hold integer nano-USD, so concurrent increments add up exactly; counter names are
``model:<name>`` and ``key:<name>``. The interface is synchronous and thread-safe so the sync SDK can
use it directly; the async proxy calls it from a worker thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict, deque
from typing import Callable, TypeVar

import redis
from cachetools import TTLCache
from redis.backoff import NoBackoff
from redis.retry import Retry

from router.schemas import StoreHealth

log = logging.getLogger(__name__)
NANO_PER_USD = 1_000_000_000
T = TypeVar("T")

# Add ARGV[1] nano-USD to KEYS[1] unless it already reached the budget ARGV[2] or would go over it; -1 when
# refused. Scripts run atomically in Redis, so replicas cannot overspend between the check and the increment.
_RESERVE_SCRIPT = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local budget = tonumber(ARGV[2])
if spent >= budget or spent + tonumber(ARGV[1]) > budget then return -1 end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


def to_nano(usd: float) -> int:
    return round(usd * NANO_PER_USD)


def model_counter(name: str) -> str:
    return f"model:{name}"


def key_counter(name: str) -> str:
    return f"key:{name}"


class Store(ABC):
    """What serving keeps beyond one request; every method is safe to call from many threads."""

    @abstractmethod
    def get_cached(self, keys: list[str]) -> list[bytes | None]:
        """Cached values in the order of ``keys``; None where missing or expired."""

    @abstractmethod
    def put_cached(self, items: dict[str, bytes]) -> None:
        """Cache values for the store's TTL."""

    @abstractmethod
    def add_spend(self, increments: dict[str, float]) -> None:
        """Add USD amounts (negative to refund) to spend counters, each increment atomic."""

    @abstractmethod
    def reserve(self, counter: str, usd: float, budget_usd: float) -> bool:
        """Atomically add ``usd`` to a counter unless it reached ``budget_usd`` or would exceed it; False if refused."""

    @abstractmethod
    def spend(self, counter: str) -> float:
        """A spend counter's total in USD."""

    @abstractmethod
    def log_decision(self, entry: dict) -> None:
        """Append one request's routing record to the bounded decision log."""

    @abstractmethod
    def decisions(self, count: int) -> list[dict]:
        """The newest ``count`` decision-log entries, oldest first."""

    @abstractmethod
    def health(self) -> StoreHealth:
        """Which backend serves now and whether Redis answers."""


class MemoryStore(Store):
    """Per-process state: a bounded TTL cache, counters and a bounded log behind one lock."""

    def __init__(
        self,
        ttl_s: float = 3600,
        max_entries: int = 10_000,
        log_max_len: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._cache: TTLCache[str, bytes] = TTLCache(maxsize=max_entries, ttl=ttl_s, timer=clock)
        self._counters: defaultdict[str, int] = defaultdict(int)
        self._log: deque[dict] = deque(maxlen=log_max_len)

    def get_cached(self, keys: list[str]) -> list[bytes | None]:
        with self._lock:
            return [self._cache.get(key) for key in keys]

    def put_cached(self, items: dict[str, bytes]) -> None:
        with self._lock:
            self._cache.update(items)

    def add_spend(self, increments: dict[str, float]) -> None:
        with self._lock:
            for counter, usd in increments.items():
                self._counters[counter] += to_nano(usd)

    def reserve(self, counter: str, usd: float, budget_usd: float) -> bool:
        with self._lock:
            spent, budget = self._counters[counter], to_nano(budget_usd)
            if spent >= budget or spent + to_nano(usd) > budget:
                return False
            self._counters[counter] += to_nano(usd)
            return True

    def spend(self, counter: str) -> float:
        with self._lock:
            return self._counters[counter] / NANO_PER_USD

    def log_decision(self, entry: dict) -> None:
        with self._lock:
            self._log.append(entry)

    def decisions(self, count: int) -> list[dict]:
        with self._lock:
            return list(self._log)[-count:] if count > 0 else []

    def health(self) -> StoreHealth:
        return StoreHealth(backend="memory", redis="not configured")


class RedisStore(Store):
    """State in Redis, shared by every replica; raises redis errors (FailoverStore handles outages)."""

    def __init__(
        self,
        url: str,
        ttl_s: float = 3600,
        log_max_len: int = 100_000,
        prefix: str = "erp:",
        timeout_s: float = 0.5,
    ) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
        self.ttl_ms = int(ttl_s * 1000)
        self.log_max_len = log_max_len
        self.prefix = prefix
        self._reserve = self.client.register_script(_RESERVE_SCRIPT)

    @property
    def address(self) -> str:
        """host:port/db, for logs (no credentials)."""
        kwargs = self.client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}"

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def get_cached(self, keys: list[str]) -> list[bytes | None]:
        return self.client.mget([self._key("cache", key) for key in keys]) if keys else []

    def put_cached(self, items: dict[str, bytes]) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(self._key("cache", key), value, px=self.ttl_ms)
            pipe.execute()

    def add_spend(self, increments: dict[str, float]) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for counter, usd in increments.items():
                pipe.incrby(self._key("spend", counter), to_nano(usd))
            pipe.execute()

    def reserve(self, counter: str, usd: float, budget_usd: float) -> bool:
        result = self._reserve(keys=[self._key("spend", counter)], args=[to_nano(usd), to_nano(budget_usd)])
        return int(result) >= 0

    def spend(self, counter: str) -> float:
        return int(self.client.get(self._key("spend", counter)) or 0) / NANO_PER_USD

    def log_decision(self, entry: dict) -> None:
        fields = {"request_id": str(entry.get("request_id", "")), "record": json.dumps(entry)}
        self.client.xadd(self._key("log", "decisions"), fields, maxlen=self.log_max_len, approximate=False)

    def decisions(self, count: int) -> list[dict]:
        if count <= 0:
            return []
        entries = self.client.xrevrange(self._key("log", "decisions"), count=count)
        return [json.loads(fields[b"record"]) for _, fields in reversed(entries)]

    def ping(self) -> bool:
        return bool(self.client.ping())

    def health(self) -> StoreHealth:
        self.ping()
        return StoreHealth(backend="redis", redis="up")

    def delete_all(self) -> None:
        """Remove every key under this store's prefix (tests and resets)."""
        keys = list(self.client.scan_iter(match=f"{self.prefix}*", count=500))
        if keys:
            self.client.delete(*keys)


class FailoverStore(Store):
    """Redis while it answers, the in-process store while it does not.

    The outage is logged once; Redis is tried again at most every ``retry_s`` seconds and used as soon as it
    answers. Counters and log entries written during the outage stay in this process.
    """

    def __init__(self, primary: RedisStore, fallback: MemoryStore, retry_s: float = 2.0) -> None:
        self.primary = primary
        self.fallback = fallback
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._down = False
        self._last_failure = 0.0

    @property
    def degraded(self) -> bool:
        return self._down

    def _run(self, operation: Callable[[Store], T]) -> T:
        with self._lock:
            skip_primary = self._down and time.monotonic() - self._last_failure < self.retry_s
        if skip_primary:
            return operation(self.fallback)
        try:
            result = operation(self.primary)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._mark_down(exc)
            return operation(self.fallback)
        self._mark_up()
        return result

    def _mark_down(self, exc: Exception) -> None:
        with self._lock:
            self._last_failure = time.monotonic()
            if self._down:
                return
            self._down = True
        log.warning(
            "Redis at %s is unreachable (%s: %s); serving from the in-process store until it returns",
            self.primary.address,
            type(exc).__name__,
            exc,
        )

    def _mark_up(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
        log.warning("Redis at %s is reachable again; shared state resumed", self.primary.address)

    def get_cached(self, keys: list[str]) -> list[bytes | None]:
        return self._run(lambda store: store.get_cached(keys))

    def put_cached(self, items: dict[str, bytes]) -> None:
        self._run(lambda store: store.put_cached(items))

    def add_spend(self, increments: dict[str, float]) -> None:
        self._run(lambda store: store.add_spend(increments))

    def reserve(self, counter: str, usd: float, budget_usd: float) -> bool:
        return self._run(lambda store: store.reserve(counter, usd, budget_usd))

    def spend(self, counter: str) -> float:
        return self._run(lambda store: store.spend(counter))

    def log_decision(self, entry: dict) -> None:
        self._run(lambda store: store.log_decision(entry))

    def decisions(self, count: int) -> list[dict]:
        return self._run(lambda store: store.decisions(count))

    def health(self) -> StoreHealth:
        """Pings Redis now (regardless of the retry interval), so /healthz sees a recovery at once."""
        try:
            self.primary.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._mark_down(exc)
            return StoreHealth(backend="memory", redis="down")
        self._mark_up()
        return StoreHealth(backend="redis", redis="up")


def open_store(
    redis_url: str | None, ttl_s: float = 3600, max_entries: int = 10_000, log_max_len: int = 100_000
) -> Store:
    """Redis with in-process failover when a URL is given, else the in-process store."""
    memory = MemoryStore(ttl_s, max_entries, log_max_len)
    if not redis_url:
        return memory
    return FailoverStore(RedisStore(redis_url, ttl_s, log_max_len), memory)
