"""Reward scorers through the real LiteLLM call path against the stub upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from predictors.scorers.base import RewardScorer, ScoringItem
from predictors.scorers.judge import parse_score
from router.registry import RegistryError, load_registry
from router.scoring import build_scorer

JUDGE, FAST = "judge-model", "fast-judge-model"
KEY_ENV = "ERP_TEST_JUDGE_KEY"


def registry_with(tmp_path: Path, scorers: list[dict]) -> Path:
    document = {
        "shared_predictor": "artifacts/shared.joblib",
        "models": [
            {
                "name": "small",
                "litellm_model": "openai/small",
                "input_usd_per_mtok": 0.1,
                "output_usd_per_mtok": 0.2,
                "predictor": "artifacts/small.joblib",
            }
        ],
        "scorers": scorers,
    }
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def judge_entries(api_base: str) -> list[dict]:
    common = {"api_base": api_base, "api_key_env": KEY_ENV, "backoff_s": 0.01, "timeout_s": 5}
    return [
        {"name": "judge", "kind": "judge", "litellm_model": f"openai/{JUDGE}", **common},
        {"name": "fast", "kind": "judge_logprobs", "litellm_model": f"openai/{FAST}", **common},
    ]


@pytest.fixture
def judges(tmp_path, stub, monkeypatch):
    """name -> scorer built by build_scorer from a registry whose judges are served by the stub."""
    monkeypatch.setenv(KEY_ENV, "stub-key")
    registry = load_registry(registry_with(tmp_path, judge_entries(stub.url)))
    return {entry.name: build_scorer(registry, entry.name) for entry in registry.scorers}


def items(n: int = 1) -> list[ScoringItem]:
    return [ScoringItem(f"What is {i} + {i}?", f"It is {2 * i}.", model="small") for i in range(n)]


def hits(stub, model: str) -> int:
    return stub.state.models_hit().count(model)


@pytest.mark.parametrize(
    "text, score",
    [
        ('{"rationale": "correct", "score": 8}', 8.0),
        ('```json\n{"rationale": "fine", "score": "7"}\n```', 7.0),
        ("The answer is right but terse.\n**Score:** 9/10", 9.0),
        ('{"rationale": "uses } inside", "score": 4} and more }', 4.0),
        ("Score: 3 at first... on reflection Score: 5", 5.0),
        ("no number anywhere", None),
        ('{"rationale": "forgot it", "score": null}', None),
    ],
)
def test_parse_score_reads_json_or_a_final_score_line(text, score):
    assert parse_score(text) == score


def test_judge_scores_json_and_score_lines_rescaled_to_unit_interval(judges, stub):
    stub.state.replies[JUDGE] = lambda messages: (
        '{"rationale": "ok", "score": 10}' if "0 + 0" in messages[-1]["content"] else "Close enough.\nScore: 4"
    )
    batch = asyncio.run(judges["judge"].score(items(2)))
    assert isinstance(judges["judge"], RewardScorer)
    assert batch.rewards.tolist() == pytest.approx([1.0, 3 / 9])
    assert batch.errors == [None, None]
    assert not batch.slow.any()
    body = stub.state.hits[0].body
    assert stub.state.hits[0].authorization == "Bearer stub-key"
    assert "What is" in body["messages"][-1]["content"] and body["temperature"] == 0
    assert batch.tokens > 0


def test_out_of_range_scores_are_clamped(judges, stub):
    stub.state.replies[JUDGE] = ['{"score": 0}', '{"score": 11}']
    batch = asyncio.run(judges["judge"].score(items(1) + items(1)))
    assert sorted(batch.rewards.tolist()) == [0.0, 1.0]


def test_malformed_output_is_retried_once_then_missing_not_zero(judges, stub):
    stub.state.replies[JUDGE] = ["I think it is decent.", '{"rationale": "decent", "score": 6}']
    retried = asyncio.run(judges["judge"].score(items(1)))
    assert retried.rewards.tolist() == pytest.approx([5 / 9]) and retried.errors == [None]
    assert hits(stub, JUDGE) == 2
    reminder = stub.state.hits[1].body["messages"]
    assert reminder[-2] == {"role": "assistant", "content": "I think it is decent."}
    assert "Score: N" in reminder[-1]["content"]

    stub.state.reset()
    stub.state.replies[JUDGE] = ["garbage", "still garbage", '{"score": 9}']
    failed = asyncio.run(judges["judge"].score(items(1)))
    assert np.isnan(failed.rewards[0]) and "still garbage" in failed.errors[0]
    assert hits(stub, JUDGE) == 2
    assert failed.tokens > 0  # the two unparseable calls were still paid for


@pytest.mark.parametrize("failure", ["429", "500", "503"])
def test_rate_limits_and_5xx_are_retried_then_succeed(judges, stub, failure):
    stub.state.fail_first[JUDGE] = (2, failure)
    stub.state.replies[JUDGE] = lambda messages: '{"score": 7}'
    batch = asyncio.run(judges["judge"].score(items(1)))
    assert batch.rewards.tolist() == pytest.approx([6 / 9]) and batch.errors == [None]
    assert hits(stub, JUDGE) == 3


def test_persistent_failures_and_client_errors_are_recorded_per_item(judges, stub):
    stub.state.failures[JUDGE] = "429"
    batch = asyncio.run(judges["judge"].score(items(2)))
    assert np.isnan(batch.rewards).all() and all("RateLimitError" in e for e in batch.errors)
    assert hits(stub, JUDGE) == 2 * 5  # one call and four retries each

    stub.state.reset()
    stub.state.failures[JUDGE] = "400"
    batch = asyncio.run(judges["judge"].score(items(1)))
    assert np.isnan(batch.rewards[0]) and "BadRequestError" in batch.errors[0]
    assert hits(stub, JUDGE) == 1  # a bad request is not retried


def test_logprob_judge_expectation_and_certainty(judges, stub):
    stub.state.logprobs[FAST] = {"8": 0.6, " 8": 0.1, "10": 0.2, "7": 0.05, "The": 0.05}
    batch = asyncio.run(judges["fast"].score(items(1)))
    expected = (8 * 0.7 + 10 * 0.2 + 7 * 0.05) / 0.95
    assert batch.rewards.tolist() == pytest.approx([(expected - 1) / 9])
    assert batch.certainty.tolist() == pytest.approx([0.7])
    body = stub.state.hits[0].body
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20


def test_logprob_judge_without_score_tokens_retries_once_then_missing(judges, stub):
    stub.state.logprobs[FAST] = {"Sure": 0.9, "I": 0.1}
    batch = asyncio.run(judges["fast"].score(items(1)))
    assert np.isnan(batch.rewards[0]) and np.isnan(batch.certainty[0]) and batch.errors[0]
    assert hits(stub, FAST) == 2


def test_unknown_scorer_and_missing_key_are_one_line_registry_errors(tmp_path, stub, monkeypatch):
    path = registry_with(tmp_path, judge_entries(stub.url))
    registry = load_registry(path)
    with pytest.raises(RegistryError) as unknown:
        build_scorer(registry, "nope")
    assert str(path) in str(unknown.value) and "judge, fast" in str(unknown.value)
    assert "\n" not in str(unknown.value)
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(RegistryError, match=rf"scorers\[0\].api_key_env.*export {KEY_ENV}="):
        build_scorer(registry, "judge")


def scorer_error(tmp_path: Path, scorers: list[dict]) -> str:
    with pytest.raises(RegistryError) as caught:
        load_registry(registry_with(tmp_path, scorers))
    return str(caught.value)


def test_scorer_entries_are_validated_with_file_key_and_fix(tmp_path):
    judge = {"name": "judge", "kind": "judge", "litellm_model": "openai/gpt-4o-mini"}
    message = scorer_error(tmp_path, [{**judge, "temprature": 0}])
    assert "model_registry.yaml: key 'scorers[0].temprature'" in message and "remove this key" in message
    message = scorer_error(tmp_path, [{**judge, "kind": "oracle"}])
    assert "key 'scorers[0]'" in message and "set kind to one of" in message and "'reward_model'" in message
    message = scorer_error(tmp_path, [{"name": "rm", "kind": "reward_model"}])
    assert "key 'scorers[0].path'" in message and "add this key" in message
    message = scorer_error(tmp_path, [judge, {**judge}])
    assert "key 'scorers[1].name': duplicate scorer name 'judge'" in message
    hybrid = {"name": "h", "kind": "hybrid", "fast": "judge", "slow": "judge", "thresholds": "h.json"}
    message = scorer_error(tmp_path, [judge, hybrid])
    assert "key 'scorers[1].fast': 'judge' is a judge scorer" in message and "judge_logprobs or reward_model" in message
    message = scorer_error(tmp_path, [judge, {**hybrid, "fast": "missing"}])
    assert "key 'scorers[1].fast': no scorer named 'missing'" in message
    message = scorer_error(tmp_path, [judge, {**hybrid, "target_slow_fraction": 1.5}])
    assert "key 'scorers[1].target_slow_fraction'" in message


def test_stub_logprobs_follow_openai_format(stub):
    import httpx

    stub.state.logprobs["m"] = {"3": 0.75, "4": 0.25}
    reply = httpx.post(f"{stub.url}/chat/completions", json={"model": "m", "messages": []}).json()
    content = reply["choices"][0]["logprobs"]["content"][0]
    assert reply["choices"][0]["message"]["content"] == "3" and content["token"] == "3"
    assert [t["token"] for t in content["top_logprobs"]] == ["3", "4"]
    assert json.dumps(content["top_logprobs"][0]["logprob"]) == json.dumps(np.log(0.75))
