"""Serving state shared by the SDK and the proxy: a TTL cache, spend counters, budgets and the decision log.

One small interface, three implementations: ``MemoryStore`` (in-process, the default), ``RedisStore``
(``REDIS_URL``, shared by replicas) and ``FailoverStore`` (``router/failover.py``: Redis while it answers,
a bounded local journal while it does not). Spend counters hold integer nano-USD, so concurrent increments
add up exactly; counter names are ``model:<name>`` and ``key:<name>``. The interface is synchronous and
thread-safe so the sync SDK can use it directly; the async proxy calls it from a worker thread.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict, deque
from typing import Callable

import redis
from cachetools import TTLCache
from redis.backoff import NoBackoff
from redis.retry import Retry

from router.schemas import StoreHealth

NANO_PER_USD = 1_000_000_000
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)

# Reserve up to ARGV[1] nano-USD on KEYS[1] under the budget ARGV[2]: all of it when it fits, else what is left
# when that is at least ARGV[3]; nothing once the budget is reached. Returns {reserved or -1, total after}.
# Scripts run atomically in Redis, so replicas cannot overspend between the check and the increment.
_RESERVE_SCRIPT = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local want, budget, least = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local left = budget - spent
if spent >= budget or left < least then return {-1, spent} end
local amount = math.min(want, left)
return {amount, redis.call('INCRBY', KEYS[1], amount)}
"""


def to_nano(usd: float) -> int:
    return round(usd * NANO_PER_USD)


def model_counter(name: str) -> str:
    return f"model:{name}"


def key_counter(name: str) -> str:
    return f"key:{name}"


def grant(spent: int, want: int, budget: int, least: int) -> int | None:
    """The nano-USD a reservation gets: ``want`` if it fits, else what is left if at least ``least``, else None."""
    left = budget - spent
    if spent >= budget or left < least:
        return None
    return min(want, left)


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
    def reserve(self, counter: str, usd: float, budget_usd: float, least_usd: float | None = None) -> float | None:
        """Atomically add ``usd`` to a counter if that keeps it within ``budget_usd``; the USD reserved.

        With ``least_usd``, a counter that cannot take all of ``usd`` takes what is left of the budget, if
        that is at least ``least_usd``. None when refused (nothing is added); a reached budget refuses even 0.
        """

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


class BoundedLog:
    """A FIFO of serialized entries bounded both in count and in bytes; the oldest go first."""

    def __init__(self, max_len: int, max_bytes: int) -> None:
        self.max_len, self.max_bytes = max_len, max_bytes
        self._entries: deque[str] = deque()
        self.bytes = 0
        self.dropped = 0

    def append(self, entry: str) -> None:
        self._entries.append(entry)
        self.bytes += len(entry)
        while len(self._entries) > self.max_len or (self.bytes > self.max_bytes and len(self._entries) > 1):
            self.bytes -= len(self._entries.popleft())
            self.dropped += 1

    def newest(self, count: int) -> list[str]:
        return list(self._entries)[-count:] if count > 0 else []

    def drain(self) -> list[str]:
        entries, self._entries, self.bytes = list(self._entries), deque(), 0
        return entries

    def __len__(self) -> int:
        return len(self._entries)


class MemoryStore(Store):
    """Per-process state: a bounded TTL cache, counters and a log bounded in entries and bytes, behind one lock."""

    def __init__(
        self,
        ttl_s: float = 3600,
        max_entries: int = 10_000,
        log_max_len: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        log_max_bytes: int = 8 * 2**20,
    ) -> None:
        self._lock = threading.Lock()
        self._cache: TTLCache[str, bytes] = TTLCache(maxsize=max_entries, ttl=ttl_s, timer=clock)
        self._counters: defaultdict[str, int] = defaultdict(int)
        self._log = BoundedLog(log_max_len, log_max_bytes)

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

    def reserve(self, counter: str, usd: float, budget_usd: float, least_usd: float | None = None) -> float | None:
        least = to_nano(usd if least_usd is None else least_usd)
        with self._lock:
            granted = grant(self._counters[counter], to_nano(usd), to_nano(budget_usd), least)
            if granted is None:
                return None
            self._counters[counter] += granted
            return granted / NANO_PER_USD

    def spend(self, counter: str) -> float:
        with self._lock:
            return self._counters[counter] / NANO_PER_USD

    def log_decision(self, entry: dict) -> None:
        line = json.dumps(entry, separators=(",", ":"))
        with self._lock:
            self._log.append(line)

    def decisions(self, count: int) -> list[dict]:
        with self._lock:
            lines = self._log.newest(count)
        return [json.loads(line) for line in lines]

    @property
    def log_bytes(self) -> int:
        """Bytes held by the decision log (serialized entries)."""
        return self._log.bytes

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

    def key(self, kind: str, name: str) -> str:
        """The Redis key of a cache entry, spend counter or log under this store's prefix."""
        return f"{self.prefix}{kind}:{name}"

    @property
    def log_key(self) -> str:
        return self.key("log", "decisions")

    def get_cached(self, keys: list[str]) -> list[bytes | None]:
        return self.client.mget([self.key("cache", key) for key in keys]) if keys else []

    def put_cached(self, items: dict[str, bytes]) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(self.key("cache", key), value, px=self.ttl_ms)
            pipe.execute()

    def add_spend(self, increments: dict[str, float]) -> None:
        self.add_spend_totals({counter: to_nano(usd) for counter, usd in increments.items()})

    def add_spend_totals(self, increments: dict[str, int]) -> dict[str, int]:
        """Add nano-USD to counters in one MULTI/EXEC (all or none); the counters' totals after it."""
        with self.client.pipeline(transaction=True) as pipe:
            for counter, nano in increments.items():
                pipe.incrby(self.key("spend", counter), nano)
            return dict(zip(increments, map(int, pipe.execute()), strict=True))

    def reserve(self, counter: str, usd: float, budget_usd: float, least_usd: float | None = None) -> float | None:
        granted, _ = self.reserve_with_total(counter, usd, budget_usd, least_usd)
        return granted

    def reserve_with_total(
        self, counter: str, usd: float, budget_usd: float, least_usd: float | None = None
    ) -> tuple[float | None, int]:
        """``reserve``, plus the counter's total in nano-USD after it."""
        least = to_nano(usd if least_usd is None else least_usd)
        granted, total = self._reserve(keys=[self.key("spend", counter)], args=[to_nano(usd), to_nano(budget_usd), least])
        return (None if int(granted) < 0 else int(granted) / NANO_PER_USD), int(total)

    def spend(self, counter: str) -> float:
        return self.spend_nano(counter) / NANO_PER_USD

    def spend_nano(self, counter: str) -> int:
        return int(self.client.get(self.key("spend", counter)) or 0)

    def log_decision(self, entry: dict) -> None:
        fields = {"request_id": str(entry.get("request_id", "")), "record": json.dumps(entry, separators=(",", ":"))}
        self.client.xadd(self.log_key, fields, maxlen=self.log_max_len, approximate=False)

    def decisions(self, count: int) -> list[dict]:
        if count <= 0:
            return []
        entries = self.client.xrevrange(self.log_key, count=count)
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


def open_store(
    redis_url: str | None,
    ttl_s: float = 3600,
    max_entries: int = 10_000,
    log_max_len: int = 100_000,
    log_max_bytes: int = 8 * 2**20,
    outage_allowance_usd: float = 0.0,
) -> Store:
    """Redis with a failover journal when a URL is given, else the in-process store."""
    from router.failover import FailoverStore

    memory = MemoryStore(ttl_s, max_entries, log_max_len, log_max_bytes=log_max_bytes)
    if not redis_url:
        return memory
    return FailoverStore(
        RedisStore(redis_url, ttl_s, log_max_len),
        memory,
        outage_allowance_usd=outage_allowance_usd,
        journal_max_bytes=log_max_bytes,
    )
