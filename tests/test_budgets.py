"""Budgets are hard caps, streams are charged for what they generated, and a Redis outage loses nothing.

Everything goes through the real proxy, LiteLLM and the stub upstream; the outage test kills a Redis
server of its own (on another port) in the middle of the load and starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
import redis
from stub_upstream import free_port, serve_in_thread

from router.failover import FailoverStore
from router.server import create_app
from router.store import MemoryStore, RedisStore, key_counter, model_counter
from test_server import MESSAGES
from test_store import REDIS_TEST_URL

LONG_ANSWER = " ".join(f"word{i}" for i in range(300))  # distinct: LiteLLM stops streams that repeat a chunk
BUDGET = 0.005


@pytest.fixture
def long_answers(stub) -> None:
    for name in ("Meta-Llama-3.1-8B-Instruct", "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"):
        stub.state.replies[name] = lambda messages: LONG_ANSWER


def capped(budget: float = BUDGET, **serving) -> dict:
    return {"api_keys": [{"name": "capped", "key": "sk-capped", "budget_usd": budget}], **serving}


async def _burst(urls: list[str], count: int) -> list[httpx.Response]:
    """``count`` concurrent requests spread over the proxies: routed and named, with and without max_tokens."""
    bodies = [
        {"model": "erp", "messages": MESSAGES},
        {"model": "gpt-4o-mini-2024-07-18", "messages": MESSAGES},
        {"model": "erp", "messages": MESSAGES, "max_tokens": 400},
        {"model": "gpt-4o-2024-08-06", "messages": MESSAGES, "max_completion_tokens": 300},
    ]
    headers = {"authorization": "Bearer sk-capped"}
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        calls = [
            client.post(f"{urls[i % len(urls)]}/chat/completions", json=bodies[i % len(bodies)], headers=headers)
            for i in range(count)
        ]
        return await asyncio.gather(*calls)


def _check_cap(responses: list[httpx.Response], spent: float, logged: list[dict]) -> None:
    statuses = {response.status_code for response in responses}
    assert statuses <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    refused = [r.json()["error"] for r in responses if r.status_code == 429]
    assert all(error["code"] == "budget_exceeded" and "refused" in error["message"] for error in refused)
    assert spent <= BUDGET, f"spent {spent} of a {BUDGET} budget"
    realized = sum(entry["realized_cost_usd"] or 0.0 for entry in logged if entry["spend_key"] == "capped")
    assert spent == pytest.approx(realized, abs=1e-8), "the key's counter is the sum of realized costs"
    assert sum(r.status_code == 200 for r in responses) == sum(1 for e in logged if e["model"] and e["spend_key"])


def test_budget_is_a_hard_cap_under_200_concurrent_requests(make_router, stub, long_answers) -> None:
    router = make_router(serving=capped())
    with serve_in_thread(create_app(router)) as url:
        responses = asyncio.run(_burst([f"{url}/v1"], 200))
    _check_cap(responses, router.store.spend(key_counter("capped")), router.store.decisions(1000))


def test_budget_is_a_hard_cap_across_two_replicas_sharing_redis(make_router, stub, long_answers) -> None:
    prefix = f"erp-test-{uuid.uuid4().hex[:8]}:"
    shared = RedisStore(REDIS_TEST_URL, prefix=prefix)
    routers = [
        make_router(serving=capped(), store=FailoverStore(RedisStore(REDIS_TEST_URL, prefix=prefix), MemoryStore()))
        for _ in range(2)
    ]
    try:
        with contextlib.ExitStack() as stack:
            urls = [stack.enter_context(serve_in_thread(create_app(router))) + "/v1" for router in routers]
            responses = asyncio.run(_burst(urls, 200))
        _check_cap(responses, shared.spend(key_counter("capped")), shared.decisions(1000))
    finally:
        shared.delete_all()


def test_explicit_max_tokens_the_budget_cannot_cover_is_refused_and_implicit_is_clamped(make_router, stub, long_answers) -> None:
    router = make_router()
    price = router.ledger.prices["gpt-4o-2024-08-06"]
    from router.ledger import input_token_bound
    from router.schemas import ChatParameters

    input_usd = input_token_bound(MESSAGES, ChatParameters()) * price[0]
    budget = input_usd + 100 * price[1]
    kwargs = {"model": "gpt-4o-2024-08-06", "spend_key": "small", "budget_usd": budget}
    with pytest.raises(Exception, match="lower max_tokens") as caught:
        router.complete(MESSAGES, max_tokens=500, **kwargs)
    assert caught.value.status == 429 and not stub.state.hits
    result = router.complete(MESSAGES, **kwargs)
    assert stub.state.hits[-1].body["max_tokens"] == 100, "the implicit cap is clamped to what the budget covers"
    assert result.record.completion_tokens == 100 and router.store.spend(key_counter("small")) <= budget


def test_streams_closed_early_are_charged_for_what_was_generated(make_router, stub, long_answers) -> None:
    router = make_router(serving=capped(budget=1.0))
    for name in router.entries:
        stub.state.failures[name] = "no-usage"  # the upstream never reports usage: tokens are counted
    with serve_in_thread(create_app(router)) as url:
        for _ in range(20):
            body = {"model": "erp", "messages": MESSAGES, "stream": True}
            headers = {"authorization": "Bearer sk-capped"}
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30) as response:
                for line in response.iter_lines():
                    if '"finish_reason":"stop"' in line:
                        break  # closed right after the last content chunk
        deadline = time.monotonic() + 10
        while len(router.store.decisions(100)) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    logged = router.store.decisions(100)
    assert len(logged) == 20 and all(entry["completion_tokens"] >= 300 for entry in logged), [e["completion_tokens"] for e in logged]
    spent = router.store.spend(key_counter("capped"))
    assert spent > 0 and spent == pytest.approx(sum(entry["realized_cost_usd"] for entry in logged), abs=1e-8)


def test_a_stream_whose_client_left_before_its_first_event_is_settled(make_router, stub) -> None:
    """The client is gone when the response would start (an ASGI 2.3 server, as uvicorn, then cancels the
    response before its events generator runs): the routed stream is never read, and is closed, charged and
    logged all the same. Driven through the ASGI interface, where the disconnect's timing is exact."""
    router = make_router(serving=capped(budget=1.0))
    app = create_app(router)
    body = json.dumps({"model": "erp", "messages": MESSAGES, "stream": True}).encode()
    headers = [(b"content-type", b"application/json"), (b"authorization", b"Bearer sk-capped")]
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2)}
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await asyncio.sleep(0)  # a real socket write yields: the disconnect's cancellation lands here
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    (logged,) = router.store.decisions(10)
    assert not [m for m in sent if m["type"] == "http.response.body" and m.get("body")], "nothing was streamed"
    assert logged["prompt_tokens"] > 0 and logged["realized_cost_usd"] > 0 and len(stub.state.hits) == 1
    assert router.store.spend(key_counter("capped")) == pytest.approx(logged["realized_cost_usd"], abs=1e-12)


def _redis_server(port: int, directory: Path) -> subprocess.Popen:
    """A private redis-server that keeps its data across a restart (append-only file, fsync always)."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(directory),
               "--appendonly", "yes", "--appendfsync", "always"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(250):
        with contextlib.suppress(redis.ConnectionError):
            client.ping()
            return process
        time.sleep(0.02)
    process.kill()
    pytest.fail("the private redis-server did not start")


@pytest.fixture
def private_redis(tmp_path) -> Iterator[tuple[int, list]]:
    port, processes = free_port(), []
    processes.append(_redis_server(port, tmp_path))
    yield port, processes
    for process in processes:
        process.kill()
        process.wait(10)


def test_redis_outage_mid_load_keeps_every_increment_and_log_entry(make_router, stub, private_redis, tmp_path) -> None:
    port, processes = private_redis
    url = f"redis://127.0.0.1:{port}/0"
    store = FailoverStore(RedisStore(url, timeout_s=0.3), MemoryStore(), retry_s=0.2)
    serving = {"api_keys": [{"name": "team", "key": "sk-team"}, {"name": "capped", "key": "sk-capped", "budget_usd": 0.0}]}
    router = make_router(serving=serving, store=store)
    records = []
    router.subscribe(records.append)
    with serve_in_thread(create_app(router)) as base:
        team = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-team", max_retries=0)
        capped_client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-capped", max_retries=0)
        statuses = []

        def capped_status() -> int:
            try:
                capped_client.chat.completions.create(model="erp", messages=MESSAGES)
            except openai.APIStatusError as exc:
                return exc.status_code
            return 200

        statuses.append(capped_status())
        for i in range(60):
            if i == 20:
                processes[-1].kill()
                processes[-1].wait(10)
                assert httpx.get(f"{base}/healthz").json()["status"] == "degraded"
                statuses.append(capped_status())
            if i == 40:
                processes.append(_redis_server(port, tmp_path))
            team.chat.completions.create(model="erp", messages=[{"role": "user", "content": f"question {i}"}])
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/healthz").json()["status"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.1)
        statuses.append(capped_status())
    assert statuses == [429, 503, 429], "the budget is enforced before, during (fail closed) and after the outage"
    answered = [r for r in records if r.spend_key == "team"]
    assert len(answered) == 60 and store.pending == (0, 0)
    truth = redis.Redis(port=port)
    spent = int(truth.get(f"erp:spend:{key_counter('team')}")) / 1e9
    assert spent == pytest.approx(sum(r.realized_cost_usd for r in answered), abs=1e-8)
    for model in {r.model for r in answered}:
        model_spend = int(truth.get(f"erp:spend:{model_counter(model)}")) / 1e9
        assert model_spend == pytest.approx(sum(r.realized_cost_usd for r in answered if r.model == model), abs=1e-8)
    logged = [e for e in store.decisions(1000) if e.get("spend_key") == "team"]
    assert sorted(e["request_id"] for e in logged) == sorted(r.request_id for r in answered), "every entry, once"


def test_outage_allowance_bounds_each_replica_and_replays_once(private_redis, tmp_path) -> None:
    port, processes = private_redis
    store = FailoverStore(RedisStore(f"redis://127.0.0.1:{port}/0", timeout_s=0.3), MemoryStore(), retry_s=0.0,
                          outage_allowance_usd=0.3)
    counter = key_counter("k")
    assert store.reserve(counter, 0.5, 1.0) == 0.5
    processes[-1].kill()
    processes[-1].wait(10)
    assert store.reserve(counter, 0.2, 1.0) == 0.2 and store.degraded
    assert store.reserve(counter, 0.2, 1.0) is None, "past the outage allowance"
    assert store.reserve(counter, 0.2, 1.0, least_usd=0.05) == pytest.approx(0.1), "clamped to what is left"
    store.log_decision({"request_id": "during-outage"})
    processes.append(_redis_server(port, tmp_path))
    lost_replies = store._batches()
    for batch in lost_replies:
        store._send(batch)  # applied, but the reply never came back: the batches stay in flight
    store._inflight += lost_replies
    assert store.health().redis == "up" and store.pending == (0, 0)
    assert store.spend(counter) == pytest.approx(0.8), "each outage increment reached Redis exactly once"
    assert [e["request_id"] for e in store.decisions(10)] == ["during-outage"]
