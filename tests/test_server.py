"""The proxy, exercised with the real ``openai`` client over HTTP; every call goes through LiteLLM to the stub."""

from __future__ import annotations

import contextlib
import uuid
from typing import Callable, Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from stub_upstream import answer_for, free_port, serve_in_thread
from test_store import REDIS_TEST_URL

from router.server import create_app
from router.failover import FailoverStore
from router.store import MemoryStore, RedisStore, key_counter, model_counter

MESSAGES = [{"role": "user", "content": "Sort the list [3, 1, 2] in Python and print it."}]
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture
def serve_proxy() -> Iterator[Callable]:
    """Start the proxy app over a router on 127.0.0.1; returns its /v1 base URL."""
    with contextlib.ExitStack() as stack:
        yield lambda router: stack.enter_context(serve_in_thread(create_app(router))) + "/v1"


@pytest.fixture
def proxy(make_router, serve_proxy):
    """A router over the stub and an OpenAI client pointed at a proxy serving it."""
    router = make_router()
    client = openai.OpenAI(base_url=serve_proxy(router), api_key="unused", max_retries=0)
    return router, client


def ranked(router, **knobs) -> list[str]:
    return [c.model for c in router.route(MESSAGES, **knobs).ranked()]


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and ERROR_FIELDS <= set(body["error"]), body
    return body["error"]


def test_routed_completion_has_the_routing_headers(proxy, stub) -> None:
    router, client = proxy
    raw = client.chat.completions.with_raw_response.create(model="erp", messages=MESSAGES)
    completion = raw.parse()
    decision = router.route(MESSAGES)
    chosen = next(c for c in decision.candidates if c.model == decision.model)
    assert raw.headers["x-erp-model"] == decision.model
    assert float(raw.headers["x-erp-expected-reward"]) == pytest.approx(chosen.expected_reward, rel=1e-5)
    assert float(raw.headers["x-erp-predicted-cost-usd"]) == pytest.approx(chosen.predicted_cost_usd, rel=1e-5)
    assert float(raw.headers["x-erp-lambda"]) == 100.0 and float(raw.headers["x-erp-decision-ms"]) >= 0
    assert completion.choices[0].message.content == answer_for(decision.model, MESSAGES)
    assert completion.usage.completion_tokens > 0 and stub.state.models_hit() == [decision.model]


def test_model_string_sets_lambda_and_max_cost(proxy, stub) -> None:
    router, client = proxy
    candidates = router.route(MESSAGES).candidates
    best = max(candidates, key=lambda c: c.expected_reward).model
    cheapest = min(candidates, key=lambda c: c.predicted_cost_usd)
    raw = client.chat.completions.with_raw_response.create(model="erp:lambda=0", messages=MESSAGES)
    assert (raw.headers["x-erp-model"], raw.headers["x-erp-lambda"]) == (best, "0")
    cap = cheapest.predicted_cost_usd * 1.0001
    raw = client.chat.completions.with_raw_response.create(model=f"erp:lambda=0, max_cost={cap!r}", messages=MESSAGES)
    assert raw.headers["x-erp-model"] == cheapest.model


def test_registry_model_name_bypasses_routing(proxy, stub) -> None:
    _, client = proxy
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-2024-08-06", messages=MESSAGES)
    assert raw.headers["x-erp-model"] == "gpt-4o-2024-08-06" and "x-erp-expected-reward" not in raw.headers
    assert stub.state.models_hit() == ["gpt-4o-2024-08-06"]


def test_streaming_sends_openai_chunks(proxy, stub) -> None:
    router, client = proxy
    with client.chat.completions.with_streaming_response.create(model="erp", messages=MESSAGES, stream=True) as raw:
        model = raw.headers["x-erp-model"]
        assert "x-erp-decision-ms" in raw.headers and raw.headers["content-type"].startswith("text/event-stream")
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse())
    assert model == router.route(MESSAGES).model and text == answer_for(model, MESSAGES)


def test_fallbacks_through_the_proxy(proxy, stub) -> None:
    router, client = proxy
    order = ranked(router)
    stub.state.failures[order[0]] = "429"
    raw = client.chat.completions.with_raw_response.create(model="erp", messages=MESSAGES)
    assert (raw.headers["x-erp-model"], raw.headers["x-erp-attempts"]) == (order[1], "2")
    with client.chat.completions.with_streaming_response.create(model="erp", messages=MESSAGES, stream=True) as raw:
        assert raw.headers["x-erp-model"] == order[1]
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse())
    assert text == answer_for(order[1], MESSAGES)


def test_upstream_failure_after_all_fallbacks_is_502_with_attempts(proxy, stub) -> None:
    router, client = proxy
    for model in router.entries:
        stub.state.failures[model] = "500"
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="erp", messages=MESSAGES)
    assert caught.value.status_code == 502
    error = caught.value.body
    assert error["type"] == "upstream_error" and [a["model"] for a in error["attempts"]] == ranked(router)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="erp", messages=MESSAGES, stream=True)


def test_mid_stream_failure_ends_with_an_error_event(proxy, stub) -> None:
    router, client = proxy
    stub.state.failures[router.route(MESSAGES).model] = "midstream"
    with pytest.raises(openai.APIError, match="mid-stream"):
        list(client.chat.completions.create(model="erp", messages=MESSAGES, stream=True))


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b'{"model": "erp", "messages": [', 400, None),
        (b'{"model": "erp"}', 400, "messages"),
        (b'{"model": "erp", "messages": []}', 400, "messages"),
        (b'{"model": "erp", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages.0.role"),
        (b'{"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}', 404, "model"),
        (b'{"model": "erp:lambda=abc", "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (b'{"model": "erp:temperature=1", "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        (b'{"model": "erp:lambda=-1", "messages": [{"role": "user", "content": "hi"}]}', 400, "lambda"),
        (b'{"model": "erp:max_cost=0", "messages": [{"role": "user", "content": "hi"}]}', 400, "max_cost"),
        (b"[1, 2]", 400, None),
    ],
)
def test_bad_input_gets_an_openai_error(proxy, stub, body, status, param) -> None:
    _, client = proxy
    response = httpx.post(
        f"{client.base_url}chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert error_of(response)["param"] == param
    assert stub.state.hits == type(stub.state.hits)()
    assert client.chat.completions.create(model="erp", messages=MESSAGES).choices, "the server still serves"


def test_openai_client_sees_the_right_error_classes(make_router, serve_proxy, stub) -> None:
    router = make_router(serving={"max_prompt_chars": 200})
    client = openai.OpenAI(base_url=serve_proxy(router), api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="erp:lambda=x", messages=MESSAGES)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="erp", messages=[{"role": "user", "content": "x" * 201}])
    assert caught.value.status_code == 413 and caught.value.body["code"] == "prompt_too_large"


def test_api_keys_and_budgets(make_router, serve_proxy, stub, monkeypatch) -> None:
    monkeypatch.setenv("ERP_TEST_PROXY_KEYS", "env-key-1, env-key-2")
    serving = {
        "api_keys_env": "ERP_TEST_PROXY_KEYS",
        "api_keys": [{"name": "broke-team", "key": "sk-broke", "budget_usd": 0.0}],
    }
    router = make_router(serving=serving)
    url = serve_proxy(router)
    for key, error in [(None, "didn't provide"), ("wrong", "Incorrect")]:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        response = httpx.post(f"{url}/chat/completions", json={"model": "erp", "messages": MESSAGES}, headers=headers)
        assert response.status_code == 401 and error in error_of(response)["message"]
        assert error_of(response)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=url, api_key="env-key-2", max_retries=0)
    assert good.chat.completions.create(model="erp", messages=MESSAGES).choices
    with pytest.raises(openai.RateLimitError) as caught:
        openai.OpenAI(base_url=url, api_key="sk-broke", max_retries=0).chat.completions.create(
            model="erp", messages=MESSAGES
        )
    assert caught.value.body["code"] == "budget_exceeded" and len(stub.state.hits) == 1
    assert httpx.get(url.removesuffix("/v1") + "/healthz").status_code == 200, "health needs no key"


def test_models_lists_the_router_and_the_registry(proxy) -> None:
    router, client = proxy
    ids = [model.id for model in client.models.list()]
    assert ids == ["erp", *router.entries]


def test_metrics_count_requests_costs_and_latencies(proxy, stub) -> None:
    router, client = proxy
    order = ranked(router)
    stub.state.failures[order[0]] = "503"
    client.chat.completions.create(model="erp", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MESSAGES)
    text = httpx.get(str(client.base_url).removesuffix("/v1/") + "/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("erp_requests_total", (("model", order[0]), ("routed", "true")))] == 1
    assert samples[("erp_upstream_calls_total", (("model", order[0]), ("outcome", "error")))] == 1
    assert samples[("erp_upstream_calls_total", (("model", order[1]), ("outcome", "ok")))] == 1
    assert samples[("erp_fallbacks_total", ())] == 1
    assert samples[("erp_decision_seconds_count", ())] == 1
    assert samples[("erp_realized_cost_usd_count", (("model", order[1]),))] == 1
    assert samples[("erp_predicted_cost_usd_count", (("model", order[1]),))] == 1
    assert samples[("erp_spend_usd_total", (("api_key", ""), ("model", order[1])))] > 0
    assert samples[("erp_http_errors_total", (("code", "model_not_found"), ("status", "404")))] == 1


def test_health_reports_redis_and_degrades_without_it(make_router, serve_proxy, stub) -> None:
    down = FailoverStore(RedisStore(f"redis://127.0.0.1:{free_port()}/13", timeout_s=0.2), MemoryStore())
    url = serve_proxy(make_router(store=down)).removesuffix("/v1")
    health = httpx.get(f"{url}/healthz").json()
    assert (health["status"], health["ready"], health["store"]) == (
        "degraded",
        True,
        {"backend": "memory", "redis": "down"},
    )
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert client.chat.completions.create(model="erp", messages=MESSAGES).choices, "serves without Redis"
    assert "erp_store_degraded 1.0" in httpx.get(f"{url}/metrics").text


def test_redis_backed_proxy_shares_spend_and_logs_decisions(make_router, serve_proxy, stub) -> None:
    redis_store = RedisStore(REDIS_TEST_URL, prefix=f"erp-test-{uuid.uuid4().hex[:8]}:")
    try:
        router = make_router(store=FailoverStore(redis_store, MemoryStore()))
        url = serve_proxy(router)
        assert httpx.get(url.removesuffix("/v1") + "/healthz").json()["store"] == {"backend": "redis", "redis": "up"}
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="erp", messages=MESSAGES)
        logged = redis_store.decisions(10)
        assert [entry["request_id"] for entry in logged] == [raw.headers["x-erp-request-id"]]
        assert redis_store.spend(model_counter(raw.headers["x-erp-model"])) == pytest.approx(
            logged[0]["realized_cost_usd"]
        )
        assert redis_store.spend(key_counter("anything")) == 0.0
        assert redis_store.client.keys(f"{redis_store.prefix}cache:pred:*"), "predictions are cached in Redis"
        assert redis_store.client.keys(f"{redis_store.prefix}cache:emb:*"), "embeddings are cached in Redis"
    finally:
        redis_store.delete_all()
