"""The serving store against the real Redis at 127.0.0.1:6379 (database 13) and in process."""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest
import redis
from stub_upstream import free_port

from router.failover import FailoverStore
from router.store import MemoryStore, RedisStore, Store, key_counter, model_counter, open_store

REDIS_TEST_URL = "redis://127.0.0.1:6379/13"


def _redis_store(url: str = REDIS_TEST_URL, **kwargs) -> RedisStore:
    return RedisStore(url, prefix=f"erp-test-{uuid.uuid4().hex[:8]}:", **kwargs)


@pytest.fixture
def redis_store() -> Iterator[RedisStore]:
    store = _redis_store(log_max_len=10)
    try:
        store.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"the Redis tests need a Redis server at 127.0.0.1:6379 ({exc}); start one with redis-server")
    yield store
    store.delete_all()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return MemoryStore(log_max_len=10)
    return request.getfixturevalue("redis_store")


def test_cache_round_trip_and_misses(store: Store) -> None:
    store.put_cached({"a": b"\x00\x01", "b": b"two"})
    assert store.get_cached(["b", "missing", "a"]) == [b"two", None, b"\x00\x01"]


def test_redis_cache_entries_carry_the_ttl(redis_store: RedisStore) -> None:
    short = RedisStore(REDIS_TEST_URL, ttl_s=30, prefix=redis_store.prefix)
    short.put_cached({"k": b"v"})
    assert 0 < redis_store.client.pttl(f"{redis_store.prefix}cache:k") <= 30_000


def test_memory_cache_expires_after_its_ttl() -> None:
    now = [1000.0]
    store = MemoryStore(ttl_s=60, clock=lambda: now[0])
    store.put_cached({"k": b"v"})
    now[0] += 59
    assert store.get_cached(["k"]) == [b"v"]
    now[0] += 2
    assert store.get_cached(["k"]) == [None]


def test_concurrent_spend_increments_add_up_exactly(store: Store) -> None:
    tasks, per_task, usd = 64, 25, 0.000123
    replicas = [store] if isinstance(store, MemoryStore) else [store, RedisStore(REDIS_TEST_URL, prefix=store.prefix)]

    def spend(task: int) -> None:
        for _ in range(per_task):
            replicas[task % len(replicas)].add_spend({model_counter("m"): usd, key_counter("team"): 2 * usd})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(spend, range(tasks)))
    assert round(store.spend(model_counter("m")) * 1e9) == tasks * per_task * 123_000
    assert round(store.spend(key_counter("team")) * 1e9) == tasks * per_task * 246_000


def test_budget_cuts_off_exactly_at_the_limit(store: Store) -> None:
    with ThreadPoolExecutor(16) as pool:
        granted = list(pool.map(lambda _: store.reserve(key_counter("team"), 0.01, 0.5), range(200)))
    assert sum(g is not None for g in granted) == 50
    assert store.spend(key_counter("team")) == pytest.approx(0.5)
    assert not store.reserve(key_counter("team"), 0.0, 0.5), "a spent budget refuses even free calls"


def test_refund_reopens_the_budget(store: Store) -> None:
    assert store.reserve(key_counter("k"), 1.0, 1.0)
    assert not store.reserve(key_counter("k"), 0.1, 1.0)
    store.add_spend({key_counter("k"): -0.5})
    assert store.reserve(key_counter("k"), 0.1, 1.0)


def test_decision_log_is_append_only_and_bounded(store: Store) -> None:
    for i in range(25):
        store.log_decision({"request_id": f"r{i}", "model": "m", "realized_cost_usd": i / 1000})
    entries = store.decisions(100)
    assert [e["request_id"] for e in entries] == [f"r{i}" for i in range(15, 25)]
    assert entries[-1]["realized_cost_usd"] == 0.024


def test_open_store_without_url_is_in_process() -> None:
    assert isinstance(open_store(None), MemoryStore)
    assert isinstance(open_store(REDIS_TEST_URL), FailoverStore)


def test_unreachable_redis_serves_from_memory_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    store = FailoverStore(RedisStore(f"redis://127.0.0.1:{free_port()}/13", timeout_s=0.2), MemoryStore())
    with caplog.at_level(logging.WARNING, logger="router.store"):
        store.put_cached({"k": b"v"})
        store.add_spend({model_counter("m"): 0.25})
        assert store.get_cached(["k"]) == [b"v"]
        assert store.spend(model_counter("m")) == 0.25
        assert store.health().redis == "down"
    assert store.degraded
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1


def test_failover_recovers_when_redis_returns(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """A private redis-server is stopped and started again; the store follows it."""
    port = free_port()

    def start() -> subprocess.Popen:
        process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                return process
            except redis.ConnectionError:
                time.sleep(0.02)
        process.kill()
        pytest.fail("the private redis-server did not start")

    process = start()
    store = FailoverStore(RedisStore(f"redis://127.0.0.1:{port}/0", timeout_s=0.5), MemoryStore(), retry_s=0.0)
    try:
        store.add_spend({model_counter("m"): 1.0})
        assert store.health().redis == "up"
        process.terminate()
        process.wait(10)
        with caplog.at_level(logging.WARNING, logger="router.store"):
            store.add_spend({model_counter("m"): 0.5})
            assert store.health().redis == "down"
            assert store.spend(model_counter("m")) == 1.5, "the last total seen plus the outage journal"
            process = start()
            assert store.health().redis == "up"
            assert store.spend(model_counter("m")) == 0.5, "a fresh Redis (no persistence) gets the outage journal"
        messages = [r.getMessage() for r in caplog.records]
        assert sum("unreachable" in m for m in messages) == 1
        assert sum("reachable again" in m for m in messages) == 1
    finally:
        process.kill()
        process.wait(10)
