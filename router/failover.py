"""Redis while it answers; a bounded local journal, replayed exactly once, while it does not.

During an outage:

- cached embeddings and predictions come from the in-process store;
- spend increments are summed per counter in the journal (their size grows with the number of counters,
  not with traffic) and decision-log entries are queued, bounded in bytes (the oldest are dropped, counted
  and logged once, if an outage outlasts the bound);
- budgets are still enforced: a replica may reserve at most ``outage_allowance_usd`` per budgeted counter
  beyond the last total it saw in Redis, and never past the budget itself. The default allowance is 0,
  so budgeted requests are refused (fail closed) until Redis returns.

When Redis answers again the journal is replayed in batches, each one Lua script that first sets a marker
key unique to the batch: a batch whose reply is lost is sent again and applies nothing the second time, so
every increment and entry reaches Redis exactly once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from router.schemas import StoreHealth
from router.store import (
    NANO_PER_USD,
    REDIS_ERRORS,
    BoundedLog,
    MemoryStore,
    RedisStore,
    Store,
    grant,
    to_nano,
)

log = logging.getLogger("router.store")
T = TypeVar("T")
_REPLAY_BATCH = 500
_MARKER_TTL_MS = 24 * 3600 * 1000

# KEYS: marker, log stream, counters...; ARGV: maxlen, counter count, nano per counter..., then
# (request_id, record) pairs. Nothing is applied when the marker already exists (a batch sent twice).
_REPLAY_SCRIPT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
local counters = tonumber(ARGV[3])
for i = 1, counters do redis.call('INCRBY', KEYS[2 + i], ARGV[3 + i]) end
for i = 4 + counters, #ARGV, 2 do
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'request_id', ARGV[i], 'record', ARGV[i + 1])
end
return 1
"""


@dataclass
class _Batch:
    """One replay unit: its marker id, summed increments and queued log entries."""

    marker: str
    spend: dict[str, int] = field(default_factory=dict)
    entries: list[str] = field(default_factory=list)


class FailoverStore(Store):
    """Redis while it answers, the in-process store and a replayable journal while it does not.

    The outage is logged once; Redis is tried again at most every ``retry_s`` seconds and used as soon as
    it answers, after the journal has been replayed.
    """

    def __init__(
        self,
        primary: RedisStore,
        fallback: MemoryStore,
        retry_s: float = 2.0,
        outage_allowance_usd: float = 0.0,
        journal_max_bytes: int = 16 * 2**20,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.retry_s = retry_s
        self.outage_allowance = to_nano(outage_allowance_usd)
        self._lock = threading.Lock()
        self._replay_lock = threading.Lock()
        self._down = False
        self._last_failure = 0.0
        self._last_seen: dict[str, int] = {}
        self._pending_spend: defaultdict[str, int] = defaultdict(int)
        self._outage_reserved: defaultdict[str, int] = defaultdict(int)
        self._pending_log = BoundedLog(10**9, journal_max_bytes)
        self._inflight: list[_Batch] = []
        self._script = primary.client.register_script(_REPLAY_SCRIPT)

    @property
    def degraded(self) -> bool:
        return self._down

    @property
    def pending(self) -> tuple[int, int]:
        """(counters with unreplayed increments, unreplayed log entries): what an outage still owes Redis."""
        with self._lock:
            spend = set(self._pending_spend) | {c for b in self._inflight for c in b.spend}
            return len(spend), len(self._pending_log) + sum(len(b.entries) for b in self._inflight)

    def _primary(self, operation: Callable[[RedisStore], T]) -> tuple[bool, T | None]:
        """Run on Redis unless it is down and not due for a retry; (answered, result).

        A due retry first replays the journal, so Redis never answers from totals that miss outage spend.
        """
        with self._lock:
            down = self._down
            if down and time.monotonic() - self._last_failure < self.retry_s:
                return False, None
        if down and not self._recover():
            return False, None
        try:
            result = operation(self.primary)
        except REDIS_ERRORS as exc:
            self._mark_down(exc)
            return False, None
        return True, result

    def _mark_down(self, exc: Exception) -> None:
        with self._lock:
            self._last_failure = time.monotonic()
            if self._down:
                return
            self._down = True
        log.warning(
            "Redis at %s is unreachable (%s: %s); journaling spend and the decision log in process until it returns",
            self.primary.address,
            type(exc).__name__,
            exc,
        )

    def _recover(self) -> bool:
        """Ping, replay the journal and resume Redis; False (and down) if Redis fails meanwhile."""
        with self._replay_lock:
            try:
                self.primary.ping()
                while True:
                    with self._lock:
                        self._inflight += self._batches()
                        if not self._inflight:
                            recovered, self._down = self._down, False
                            self._outage_reserved.clear()
                            break
                    self._send(self._inflight[0])
                    with self._lock:
                        self._inflight.pop(0)
            except REDIS_ERRORS as exc:
                self._mark_down(exc)
                return False
        if recovered:
            log.warning("Redis at %s is reachable again; journal replayed, shared state resumed", self.primary.address)
        return True

    def _journaled(self) -> None:
        """After a journal write: replay at once if Redis came back in between (nothing stays behind)."""
        with self._lock:
            behind = not self._down
        if behind:
            self._recover()

    def _batches(self) -> list[_Batch]:
        """Move the journal into replay batches (called under the lock)."""
        if self._pending_log.dropped:
            log.warning("the outage journal dropped %d decision-log entries (bound reached)", self._pending_log.dropped)
            self._pending_log.dropped = 0
        spend = {counter: nano for counter, nano in self._pending_spend.items() if nano}
        self._pending_spend.clear()
        entries = self._pending_log.drain()
        batches = [_Batch(uuid.uuid4().hex, spend)] if spend else []
        for start in range(0, len(entries), _REPLAY_BATCH):
            batches.append(_Batch(uuid.uuid4().hex, entries=entries[start : start + _REPLAY_BATCH]))
        return batches

    def _send(self, batch: _Batch) -> None:
        counters = list(batch.spend)
        keys = [self.primary.key("replay", batch.marker), self.primary.log_key]
        keys += [self.primary.key("spend", counter) for counter in counters]
        args: list = [_MARKER_TTL_MS, self.primary.log_max_len, len(counters)]
        args += [batch.spend[counter] for counter in counters]
        for line in batch.entries:
            args += [str(json.loads(line).get("request_id", "")), line]
        self._script(keys=keys, args=args)

    def get_cached(self, keys: list[str]) -> list[bytes | None]:
        answered, values = self._primary(lambda store: store.get_cached(keys))
        return values if answered else self.fallback.get_cached(keys)

    def put_cached(self, items: dict[str, bytes]) -> None:
        answered, _ = self._primary(lambda store: store.put_cached(items))
        if not answered:
            self.fallback.put_cached(items)

    def add_spend(self, increments: dict[str, float]) -> None:
        nano = {counter: to_nano(usd) for counter, usd in increments.items()}
        answered, totals = self._primary(lambda store: store.add_spend_totals(nano))
        with self._lock:
            if answered:
                self._last_seen.update(totals)
                return
            for counter, amount in nano.items():
                self._pending_spend[counter] += amount
        self._journaled()

    def reserve(self, counter: str, usd: float, budget_usd: float, least_usd: float | None = None) -> float | None:
        answered, result = self._primary(lambda store: store.reserve_with_total(counter, usd, budget_usd, least_usd))
        with self._lock:
            if answered:
                granted, total = result
                self._last_seen[counter] = total
                return granted
            return self._reserve_locally(counter, usd, budget_usd, least_usd)

    def _reserve_locally(self, counter: str, usd: float, budget_usd: float, least_usd: float | None) -> float | None:
        """An outage reservation within the allowance and the budget, from the last total seen (under the lock)."""
        spent = self._last_seen.get(counter, 0) + self._pending_spend[counter]
        room = self.outage_allowance - self._outage_reserved[counter]
        budget = min(to_nano(budget_usd), spent + max(room, 0))
        least = to_nano(usd if least_usd is None else least_usd)
        granted = grant(spent, to_nano(usd), budget, least) if room > 0 else None
        if granted is None:
            return None
        self._pending_spend[counter] += granted
        self._outage_reserved[counter] += granted
        return granted / NANO_PER_USD

    def spend(self, counter: str) -> float:
        answered, total = self._primary(lambda store: store.spend_nano(counter))
        with self._lock:
            if answered:
                self._last_seen[counter] = total
                return total / NANO_PER_USD
            return (self._last_seen.get(counter, 0) + self._pending_spend[counter]) / NANO_PER_USD

    def log_decision(self, entry: dict) -> None:
        answered, _ = self._primary(lambda store: store.log_decision(entry))
        if not answered:
            line = json.dumps(entry, separators=(",", ":"))
            with self._lock:
                self._pending_log.append(line)
            self._journaled()

    def decisions(self, count: int) -> list[dict]:
        answered, entries = self._primary(lambda store: store.decisions(count))
        if answered:
            return entries
        with self._lock:
            lines = self._pending_log.newest(count)
        return [json.loads(line) for line in lines]

    def health(self) -> StoreHealth:
        """Pings Redis now (regardless of the retry interval), so /healthz sees a recovery at once."""
        if not self._recover():
            return StoreHealth(backend="memory", redis="down")
        return StoreHealth(backend="redis", redis="up")
