"""The proxy as an attacker or a careless client would use it, through the real ``openai`` client.

A capture server on 127.0.0.1 stands in for an attacker's host: no request of any shape may reach it, and
the provider key may only ever be sent to the registry's upstream (the stub).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from typing import Iterator

import httpx
import openai
import pytest
from serving_fixtures import UPSTREAM_KEY
from stub_upstream import StubState, create_stub_app, serve_in_thread

from router.errors import InvalidRequestError
from router.server import create_app
from test_server import MESSAGES, error_of

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def capture() -> Iterator[tuple[str, StubState]]:
    """An OpenAI-compatible server that records whatever reaches it: the attacker's host."""
    state = StubState()
    with serve_in_thread(create_stub_app(state)) as url:
        yield f"{url}/v1", state


@pytest.fixture
def served(make_router) -> Iterator:
    """Start proxies over routers built with ``make_router`` kwargs; yields a factory of base URLs."""
    with contextlib.ExitStack() as stack:

        def start(**kwargs):
            router = make_router(**kwargs)
            return router, stack.enter_context(serve_in_thread(create_app(router))) + "/v1"

        yield start


def redirections(capture_url: str) -> list[tuple[str, object]]:
    """Body fields that would move the call, its key, its provider or its billing if they were forwarded."""
    return [
        ("base_url", capture_url),
        ("api_base", capture_url),
        ("api_key", "sk-attacker"),
        ("custom_llm_provider", "openai"),
        ("mock_response", "free answer"),
        ("timeout", 0.001),
        ("metadata", {"nested": {"deep": [1, 2]}}),
        ("extra_headers", {"x-forward": capture_url}),
        ("extra_body", {"api_base": capture_url}),
        ("headers", {"host": "evil"}),
        ("litellm_params", {"api_base": capture_url}),
        ("api_version", "2024-01-01"),
        ("organization", "org-evil"),
        ("spend_key", "someone-else"),
        ("budget_usd", 1e9),
        ("lambda_", 0),
        ("max_cost", 1),
        ("models", 5),
        ("store", True),
        ("service_tier", "priority"),
    ]


@pytest.mark.parametrize("model", ["erp", "gpt-4o-2024-08-06"])
def test_no_request_can_redirect_the_upstream_call_or_its_key(served, stub, capture, model) -> None:
    capture_url, seen = capture
    seen.reset()
    router, url = served()
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    for field, value in redirections(capture_url):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=model, messages=MESSAGES, extra_body={field: value})
        error = caught.value.body
        assert (error["type"], error["param"]) == ("invalid_request_error", field), field
        assert field in error["message"], error
    nested = [{"role": "user", "content": "hi", "api_base": capture_url}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=nested)
    assert caught.value.body["param"] == "messages.0.api_base"
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi", "api_key": "x"}]}]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=parts)
    assert not seen.hits and not stub.state.hits, "nothing was sent anywhere"
    answered = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0.2, seed=7, user="u1")
    assert answered.choices and not seen.hits
    hit = stub.state.hits[-1]
    assert hit.authorization == f"Bearer {UPSTREAM_KEY}", "the registry's key goes to the registry's upstream"
    assert {"temperature", "seed", "user"} <= set(hit.body) and "timeout" not in hit.body


def test_an_upstream_that_echoes_the_key_never_shows_it_to_the_caller(served, stub) -> None:
    router, url = served()
    for name in router.entries:
        stub.state.failures[name] = "401"
    response = httpx.post(f"{url}/chat/completions", json={"model": "erp", "messages": MESSAGES})
    assert response.status_code in (400, 401, 502)
    assert UPSTREAM_KEY not in response.text and "[redacted]" in response.text
    logged = json.dumps(router.store.decisions(10))
    assert UPSTREAM_KEY not in logged


def test_the_sdk_refuses_unknown_parameters_too(make_router, stub) -> None:
    router = make_router()
    with pytest.raises(InvalidRequestError, match="api_base") as caught:
        router.complete(MESSAGES, api_base="http://127.0.0.1:9/v1")
    assert caught.value.param == "api_base" and not stub.state.hits


def post(url: str, content: bytes, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", content=content, headers={"content-type": "application/json"}, **kwargs)


@pytest.mark.parametrize(
    ("case", "status", "param"),
    [
        ("deep-json", 400, None),
        ("deep-tools", 400, None),
        ("lone-surrogate", 400, None),
        ("spend_key", 400, "spend_key"),
        ("budget_usd", 400, "budget_usd"),
        ("lambda_", 400, "lambda_"),
        ("max_cost", 400, "max_cost"),
        ("models", 400, "models"),
        ("bad-temperature", 400, "temperature"),
        ("huge-model-name", 404, "model"),
    ],
)
def test_bad_bodies_get_a_4xx_openai_error(served, stub, case, status, param) -> None:
    _, url = served()
    good = {"model": "erp", "messages": MESSAGES}
    bodies = {
        "deep-json": b'{"model": "erp", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "deep-tools": json.dumps({**good, "tools": [json.loads("[" * 200 + "]" * 200)]}).encode(),
        "lone-surrogate": b'{"model": "erp", "messages": [{"role": "user", "content": "\\ud800"}]}',
        "bad-temperature": json.dumps({**good, "temperature": 9}).encode(),
        "huge-model-name": json.dumps({**good, "model": "m" * 100_000}).encode(),
    }
    body = bodies.get(case) or json.dumps({**good, case: 5}).encode()
    response = post(url, body)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert len(response.content) < 2_000, "nothing the caller sent is echoed back whole"
    assert not stub.state.hits
    assert post(url, json.dumps(good).encode()).status_code == 200, "the server still serves"


def test_a_chunked_body_over_the_limit_is_cut_off_while_read(served, stub) -> None:
    _, url = served(serving={"max_prompt_chars": 1_000})
    limit = 8 * 1_000 + 2**20

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "erp", "messages": [{"role": "user", "content": "'
        for _ in range(2 * limit // 65_536):
            yield b"x" * 65_536
        yield b'"}]}'

    response = httpx.post(f"{url}/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"
    assert not stub.state.hits


@pytest.mark.parametrize("stream", [False, True])
def test_a_stream_that_is_not_sse_falls_back_then_fails_with_502(served, stub, stream) -> None:
    router, url = served()
    order = [c.model for c in router.route(MESSAGES).ranked()]
    stub.state.failures[order[0]] = "not-sse"
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    with client.chat.completions.with_streaming_response.create(model="erp", messages=MESSAGES, stream=True) as raw:
        assert raw.headers["x-erp-model"] == order[1] and raw.headers["x-erp-attempts"] == "2"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    assert text.startswith(order[1])
    for name in router.entries:
        stub.state.failures[name] = "not-sse"
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="erp", messages=MESSAGES, stream=True)
    assert caught.value.status_code == 502
    assert {a["error_type"] for a in caught.value.body["attempts"]} == {"EmptyStreamError"}


def test_openapi_documents_the_body_and_needs_a_key_when_auth_is_on(served, stub, monkeypatch) -> None:
    monkeypatch.setenv("ERP_TEST_PROXY_KEYS", "sk-client")
    _, url = served(serving={"api_keys_env": "ERP_TEST_PROXY_KEYS"})
    root = url.removesuffix("/v1")
    assert httpx.get(f"{root}/openapi.json").status_code == 401
    schema = httpx.get(f"{root}/openapi.json", headers={"authorization": "Bearer sk-client"}).json()
    body = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages", "temperature", "tools"} <= set(body["properties"]) and "api_base" not in body["properties"]
    assert body.get("additionalProperties") is False


def test_metrics_never_label_a_key_by_its_secret(served, stub, monkeypatch) -> None:
    secret = "sk-unnamed-client-key"
    monkeypatch.setenv("ERP_TEST_PROXY_KEYS", secret)
    serving = {"api_keys_env": "ERP_TEST_PROXY_KEYS", "api_keys": [{"name": "team-a", "key": "sk-team-a"}]}
    _, url = served(serving=serving)
    for key in (secret, "sk-team-a"):
        openai.OpenAI(base_url=url, api_key=key, max_retries=0).chat.completions.create(model="erp", messages=MESSAGES)
    text = httpx.get(url.removesuffix("/v1") + "/metrics").text
    spend_lines = [line for line in text.splitlines() if line.startswith("erp_spend_usd_total{")]
    assert any('api_key="team-a"' in line for line in spend_lines)
    assert any('api_key=""' in line for line in spend_lines)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert not any(digest[i : i + 8] in text for i in range(0, 57, 8)) and secret not in text


def test_importing_the_sdk_opens_no_socket() -> None:
    """With LITELLM_LOCAL_MODEL_COST_MAP unset, importing the SDK must not fetch LiteLLM's price map."""
    guard = (
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise SystemExit(f'socket use: {args[1:] if len(args) > 1 else args}')\n"
        "socket.socket.connect = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "socket.create_connection = refuse\n"
        "from router import Router\n"
        "import router.sdk, router.server\n"
        "Router.complete\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    result = subprocess.run([sys.executable, "-c", guard], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
