"""End to end on a real model: the proxy routes a chat request through LiteLLM to SmolLM2 under llama.cpp.

The test pool's three registry models all point at the local server (llama.cpp serves its one model under
any name), so the routed request, its fallback order and its realized cost go through the real call path;
so does a best-of-N arm, whose samples' real log-probabilities feed its selector.
"""

from __future__ import annotations

import math

import openai
import yaml
from serving_fixtures import UPSTREAM_KEY_ENV
from stub_upstream import serve_in_thread

from best_of_fixtures import MODEL, best_of_registry

from conftest import REGISTRY_MODELS, registry_document
from router.sdk import Router
from router.server import create_app
from router.store import MemoryStore


def test_the_proxy_routes_a_real_request_to_the_local_model(fitted_artifacts, local_model_url, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, "local")  # llama.cpp ignores it; the OpenAI client needs one
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump(registry_document(fitted_artifacts, api_base=local_model_url, api_key_env=UPSTREAM_KEY_ENV)))
    router = Router.from_registry(path, store=MemoryStore())
    with serve_in_thread(create_app(router)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model="erp", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24, temperature=0
        )
    completion = raw.parse()
    assert raw.headers["x-erp-model"] in REGISTRY_MODELS and raw.headers["x-erp-attempts"] == "1"
    assert completion.choices[0].message.content.strip(), "a real, non-empty answer"
    assert 0 < completion.usage.completion_tokens <= 24
    record = router.store.decisions(1)[0]
    assert record["realized_cost_usd"] > 0 and record["completion_tokens"] == completion.usage.completion_tokens


def test_a_best_of_arm_answers_the_highest_scored_of_its_real_samples(
    fitted_artifacts, confidence_selector, local_model_url, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, "local")
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump(best_of_registry(fitted_artifacts, confidence_selector, local_model_url)))
    router = Router.from_registry(path, store=MemoryStore())
    with serve_in_thread(create_app(router)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model=f"{MODEL}@best3", messages=[{"role": "user", "content": "Write a long story about a dragon."}],
            max_tokens=8, temperature=1.0,
        )
    completion = raw.parse()
    assert raw.headers["x-erp-arm"] == "best3" and completion.choices[0].message.content.strip()
    record = router.store.decisions(1)[0]
    scores = record["best_of"]["scores"]
    assert len(scores) == 3 and all(math.isfinite(score) for score in scores), "three real samples, each scored"
    assert record["best_of"]["chosen"] == scores.index(max(scores))
    assert completion.usage.completion_tokens == record["completion_tokens"] > 8, "all three samples are billed"
