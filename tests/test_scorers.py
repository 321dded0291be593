"""Reward scorers through the real LiteLLM call path against the stub upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import registry_document
from predictors.scorers.base import RewardScorer, ScoringItem
from predictors.scorers.judge import parse_score
from router.registry import RegistryError, load_registry
from router.scoring import build_scorer

JUDGE, FAST = "judge-model", "fast-judge-model"
KEY_ENV = "ERP_TEST_JUDGE_KEY"


def registry_with(tmp_path: Path, scorers: list[dict]) -> Path:
    document = {**registry_document(tmp_path / "artifacts"), "scorers": scorers}
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
    empty = asyncio.run(judges["judge"].score([]))
    assert empty.rewards.shape == (0,) and empty.tokens == 0


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


def test_timeouts_are_retried_then_succeed(stub, monkeypatch):
    from predictors.scorers.completion import CompletionClient
    from predictors.scorers.judge import LLMJudge

    monkeypatch.setattr(stub.state, "hang_s", 2.0)
    stub.state.fail_first[JUDGE] = (1, "timeout")
    stub.state.replies[JUDGE] = lambda messages: '{"score": 4}'
    client = CompletionClient(f"openai/{JUDGE}", stub.url, "stub-key", timeout_s=0.5, backoff_s=0.01)
    batch = asyncio.run(LLMJudge("judge", client).score(items(1)))
    assert batch.rewards.tolist() == pytest.approx([3 / 9]) and batch.errors == [None]
    assert hits(stub, JUDGE) == 2


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


# --- local reward model -------------------------------------------------------------------------------

RM_WORDS = "user assistant system : what is the capital of france paris a city i do not know it maybe lyon".split()


def save_tiny_reward_model(directory: Path, chat_template: bool = True) -> Path:
    """A randomly initialized one-output Llama classifier and a word-level tokenizer, saved like a checkpoint."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "<s>", "</s>", *dict.fromkeys(RM_WORDS)])}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>", eos_token="</s>"
    )
    if chat_template:
        tokenizer.chat_template = "<s>{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}</s>"
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=1,
        pad_token_id=0,
        initializer_range=0.5,
    )
    LlamaForSequenceClassification(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory) -> Path:
    return save_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm"))


def rm_items(n: int, seed: int = 0) -> list[ScoringItem]:
    rng = np.random.default_rng(seed)
    answers = ["paris", "a city", "i do not know", "lyon maybe", "paris is the capital of france"]
    return [
        ScoringItem("what is the capital of france", " ".join(rng.choice(answers, rng.integers(1, 4))), model="small")
        for _ in range(n)
    ]


def rm_registry(tmp_path: Path, model_dir: Path, **extra) -> Path:
    return registry_with(tmp_path, [{"name": "rm", "kind": "reward_model", "path": str(model_dir), **extra}])


def test_reward_model_scores_in_batches_like_one_by_one(tmp_path, tiny_reward_model):
    scorer = build_scorer(load_registry(rm_registry(tmp_path, tiny_reward_model, batch_size=4, device="auto")), "rm")
    assert isinstance(scorer, RewardScorer) and scorer.device == "cpu"
    batch_items = rm_items(11)
    batch = asyncio.run(scorer.score(batch_items))
    singles = [asyncio.run(scorer.score([item])).rewards[0] for item in batch_items]
    assert batch.rewards == pytest.approx(singles, abs=1e-5)
    assert ((batch.rewards > 0) & (batch.rewards < 1)).all() and np.ptp(batch.rewards) > 1e-3
    assert batch.tokens == 0 and batch.errors == [None] * 11 and not batch.slow.any()
    raw = scorer.raw_scores(batch_items)
    assert batch.rewards == pytest.approx(1 / (1 + np.exp(-raw)))  # uncalibrated: the raw output as a logit
    assert asyncio.run(scorer.score([])).rewards.shape == (0,)


def test_reward_model_renders_its_chat_template_or_a_text_pair(tmp_path, tiny_reward_model):
    templated = build_scorer(load_registry(rm_registry(tmp_path, tiny_reward_model)), "rm")
    item = ScoringItem("what is it", "paris", system="a city")
    assert templated._render(item) == ("<s>system : a city user : what is it assistant : paris </s>", None)
    plain_dir = save_tiny_reward_model(tmp_path / "plain", chat_template=False)
    plain = build_scorer(load_registry(rm_registry(tmp_path, plain_dir)), "rm")
    assert plain._render(item) == ("what is it", "paris")
    assert np.isfinite(asyncio.run(plain.score(rm_items(3))).rewards).all()


def test_reward_model_calibration_standardizes_and_sets_certainty(tmp_path, tiny_reward_model):
    scorer = build_scorer(load_registry(rm_registry(tmp_path, tiny_reward_model)), "rm")
    calibration = rm_items(40, seed=1)
    asyncio.run(scorer.calibrate(calibration))
    raw = scorer.raw_scores(calibration)
    assert scorer.mean_ == pytest.approx(raw.mean()) and scorer.std_ == pytest.approx(raw.std())
    batch = asyncio.run(scorer.score(calibration))
    z = (raw - raw.mean()) / raw.std()
    assert batch.certainty == pytest.approx(np.abs(z)) and batch.rewards == pytest.approx(1 / (1 + np.exp(-z)))
    assert np.mean(batch.rewards > 0.5) == pytest.approx(np.mean(raw > raw.mean()))


def test_reward_model_path_problems_name_the_key_and_fix(tmp_path):
    registry = load_registry(rm_registry(tmp_path, tmp_path / "not-downloaded"))  # loading does not need it
    with pytest.raises(RegistryError, match=r"scorers\[0\].path'.*not-downloaded.*fix: download"):
        build_scorer(registry, "rm")


# --- fast/slow hybrid ---------------------------------------------------------------------------------

def question_items(start: int, n: int) -> list[ScoringItem]:
    numbers = range(start, start + n)
    return [ScoringItem(f"Question {i}: what is {i} squared?", f"It is {i * i}.", model="small") for i in numbers]


def question_of(messages: list[dict]) -> int:
    import re

    return int(re.search(r"Question (\d+):", " ".join(m["content"] for m in messages)).group(1))


def fast_distribution(messages: list[dict]) -> dict[str, float]:
    """A per-question score distribution whose top-token mass (the certainty) varies from 0.3 to 0.95."""
    rng = np.random.default_rng(question_of(messages))
    top, other = rng.integers(1, 11), rng.integers(1, 11)
    top_mass = rng.uniform(0.3, 0.95)
    distribution = {str(top): top_mass}
    distribution[str(other) if other != top else "Sure"] = 1 - top_mass
    return distribution


def erp_guess(prompts: list[str], models: list[str | None]) -> np.ndarray:
    """A stand-in ERP predictor: a fixed pseudo-random expected reward per question."""
    return np.array([np.random.default_rng(10_000 + question_of([{"content": p}])).uniform() for p in prompts])


@pytest.fixture
def scripted_judges(judges, stub):
    stub.state.logprobs[FAST] = fast_distribution
    stub.state.replies[JUDGE] = lambda messages: json.dumps({"score": question_of(messages) % 10 + 1})
    return judges


@pytest.mark.parametrize("with_erp", [True, False])
def test_hybrid_meets_its_slow_fraction_and_calls_the_slow_judge_only_when_unsure(scripted_judges, stub, with_erp):
    from predictors.scorers.hybrid import HybridScorer

    fast, slow = scripted_judges["fast"], scripted_judges["judge"]
    hybrid = HybridScorer("hybrid", fast, slow, erp_guess if with_erp else None)
    calibration = asyncio.run(hybrid.calibrate(question_items(0, 300), target_slow_fraction=0.25))
    assert calibration.calibration_slow_fraction == pytest.approx(0.25, abs=0.01)
    assert (calibration.agreement_threshold is not None) == with_erp
    assert hits(stub, JUDGE) == 0  # calibration never pays for the slow judge

    stub.state.hits.clear()
    fresh = question_items(1_000, 300)
    batch = asyncio.run(hybrid.score(fresh))
    assert batch.slow.mean() == pytest.approx(0.25, abs=0.07)
    assert hits(stub, JUDGE) == batch.slow.sum() and hits(stub, FAST) == len(fresh)
    slow_questions = {question_of(hit.body["messages"]) for hit in stub.state.hits if hit.model == JUDGE}
    assert slow_questions == {1_000 + i for i in np.flatnonzero(batch.slow)}

    fast_only = asyncio.run(fast.score(fresh))
    unsure = fast_only.certainty < calibration.certainty_threshold
    if with_erp:
        agreement = 1 - np.abs(fast_only.rewards - erp_guess([i.prompt for i in fresh], []))
        unsure |= agreement < calibration.agreement_threshold
    assert (batch.slow == unsure).all()
    picked = [fresh[i] for i in np.flatnonzero(batch.slow)]
    slow_only = asyncio.run(slow.score(picked))
    assert batch.tokens == fast_only.tokens + slow_only.tokens
    assert batch.rewards[batch.slow] == pytest.approx(slow_only.rewards)
    assert batch.rewards[~batch.slow] == pytest.approx(fast_only.rewards[~batch.slow])


def test_hybrid_sends_fast_failures_slow_and_records_slow_failures_as_missing(scripted_judges, stub):
    from predictors.scorers.hybrid import HybridScorer

    hybrid = HybridScorer("hybrid", scripted_judges["fast"], scripted_judges["judge"])
    asyncio.run(hybrid.calibrate(question_items(0, 200), target_slow_fraction=0.1))
    planned = {1: {"Hmm": 1.0}, 2: {"5": 0.05, "Hmm": 0.95}}  # 1: no score at all; 2: a very unsure score
    stub.state.logprobs[FAST] = lambda messages: planned.get(question_of(messages)) or fast_distribution(messages)
    stub.state.replies[JUDGE] = lambda messages: "no verdict" if question_of(messages) == 2 else '{"score": 10}'
    batch = asyncio.run(hybrid.score(question_items(0, 3)))
    assert batch.slow[1] and batch.rewards[1] == 1.0 and batch.errors[1] is None
    assert batch.slow[2] and np.isnan(batch.rewards[2]) and "no verdict" in batch.errors[2]


def hybrid_entries(api_base: str, thresholds: Path, use_erp: bool = False) -> list[dict]:
    hybrid = {"name": "hybrid", "kind": "hybrid", "fast": "fast", "slow": "judge", "use_erp": use_erp}
    return judge_entries(api_base) + [{**hybrid, "target_slow_fraction": 0.3, "thresholds": str(thresholds)}]


def test_hybrid_thresholds_persist_and_are_reused_through_the_registry(tmp_path, scripted_judges, stub):
    thresholds = tmp_path / "calibration" / "hybrid.json"
    registry = load_registry(registry_with(tmp_path, hybrid_entries(stub.url, thresholds)))
    with pytest.raises(RegistryError, match=r"scorers\[2\].thresholds'.*not found; fix: calibrate it with"):
        build_scorer(registry, "hybrid")
    fresh = build_scorer(registry, "hybrid", require_calibration=False)
    calibration = asyncio.run(fresh.calibrate(question_items(0, 200), registry.scorer("hybrid").target_slow_fraction))
    calibration.save(thresholds)
    reused = build_scorer(registry, "hybrid")
    assert reused.calibration_ == calibration
    items_ = question_items(500, 50)
    assert (asyncio.run(reused.score(items_)).slow == asyncio.run(fresh.score(items_)).slow).all()

    thresholds.write_text(json.dumps({**calibration.model_dump(), "fast": "other"}))
    with pytest.raises(RegistryError, match=r"thresholds'.*calibrated for fast=other.*fix: recalibrate"):
        build_scorer(registry, "hybrid")


def test_hybrid_with_a_reward_model_restores_its_calibration(tmp_path, tiny_reward_model, stub, monkeypatch):
    from predictors.scorers.hybrid import HybridCalibration, HybridScorer

    monkeypatch.setenv(KEY_ENV, "stub-key")
    stub.state.replies[JUDGE] = lambda messages: '{"score": 8}'
    entries = judge_entries(stub.url)[:1] + [{"name": "rm", "kind": "reward_model", "path": str(tiny_reward_model)}]
    registry = load_registry(registry_with(tmp_path, entries))
    hybrid = HybridScorer("h", build_scorer(registry, "rm"), build_scorer(registry, "judge"))
    calibration = asyncio.run(hybrid.calibrate(rm_items(200, seed=2), target_slow_fraction=0.2))
    assert calibration.fast_state == hybrid.fast.state() and calibration.calibration_slow_fraction <= 0.25
    again = HybridScorer("h", build_scorer(registry, "rm"), build_scorer(registry, "judge"))
    again.load_calibration(HybridCalibration.model_validate(calibration.model_dump()))
    assert again.fast.state() == calibration.fast_state
    batch = asyncio.run(again.score(rm_items(20, seed=3)))
    assert hits(stub, JUDGE) == batch.slow.sum() and (batch.rewards[batch.slow] == pytest.approx(7 / 9))


def test_uncalibrated_hybrid_refuses_to_score(judges):
    from predictors.scorers.hybrid import HybridScorer

    with pytest.raises(ValueError, match="no thresholds; calibrate"):
        asyncio.run(HybridScorer("h", judges["fast"], judges["judge"]).score(question_items(0, 1)))


def test_erp_agreement_comes_from_the_fitted_routing_engine(write_registry, scripted_judges, stub, tmp_path):
    from router.engine import RoutingEngine

    path = write_registry()
    document = yaml.safe_load(path.read_text())
    document["scorers"] = hybrid_entries(stub.url, tmp_path / "erp-hybrid.json", use_erp=True)
    path.write_text(yaml.safe_dump(document))
    hybrid = build_scorer(load_registry(path), "hybrid", require_calibration=False)
    engine = RoutingEngine.from_registry(path)
    prompts = ["Question 1: what is 1 squared?", "Question 2: prove that sqrt(2) is irrational."]
    expected = hybrid.expected_reward(prompts, ["gpt-4o-mini-2024-07-18", "not-in-the-pool"])
    column = engine.models.index("gpt-4o-mini-2024-07-18")
    assert expected[0] == pytest.approx(engine.predict(prompts[:1]).rewards[0, column]) and np.isnan(expected[1])
    items_ = [ScoringItem(i.prompt, i.response, model="gpt-4o-mini-2024-07-18") for i in question_items(0, 200)]
    calibration = asyncio.run(hybrid.calibrate(items_, 0.3))
    assert calibration.agreement_threshold is not None
    assert calibration.calibration_slow_fraction == pytest.approx(0.3, abs=0.01)


# --- the scorer benchmark -----------------------------------------------------------------------------

def test_scorer_eval_reports_fast_slow_and_hybrid_against_the_stub(tmp_path, stub, monkeypatch, capsys):
    from benchmarks import scorer_eval
    from stub_judge import script_judges, write_demo

    monkeypatch.setenv("ERP_DEMO_JUDGE_KEY", "stub")
    script_judges(stub.state, write_demo(tmp_path, stub.url, n_calibration=150, n_labeled=120))
    registry, data = str(tmp_path / "model_registry.yaml"), str(tmp_path / "labeled.jsonl")
    args = ["--registry", registry, "--hybrid", "hybrid", "--data", data]
    assert scorer_eval.main(args) == 2  # no thresholds yet
    assert "thresholds': file" in capsys.readouterr().err
    out = tmp_path / "results.md"
    assert scorer_eval.main([*args, "--calibration", str(tmp_path / "calibration.jsonl"), "--out", str(out)]) == 0
    assert (tmp_path / "hybrid-thresholds.json").is_file()
    cells = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ")]
    rows = {row[0].strip(): row[1:] for row in cells}
    accuracy = {method: float(cells[2]) for method, cells in rows.items() if method != "method"}
    tokens = {method: int(cells[4]) for method, cells in rows.items() if method != "method"}
    assert accuracy["fast only"] < accuracy["hybrid"] <= accuracy["slow only"] + 0.02
    assert tokens["fast only"] < tokens["hybrid"] < tokens["fast only"] + tokens["slow only"]
    assert 0.15 < float(rows["hybrid"][6]) < 0.45  # the slow share, target 0.3

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r"}\n')
    assert scorer_eval.main([*args[:4], "--data", str(bad)]) == 2
    assert "lacks column(s) label" in capsys.readouterr().err


# --- pairwise judging ---------------------------------------------------------------------------------

def pairwise_reply(messages: list[dict]) -> str:
    """Q0: always the right output; Q1: always the first shown (position bias); Q2: no verdict."""
    text = messages[-1]["content"]
    if "Q0" in text:
        return "Output (a)" if "# Output (a):\nright" in text else "Output (b)"
    return "Output (a)" if "Q1" in text else "Both are fine."


def test_pairwise_judge_asks_both_orders_and_escalates_what_they_disagree_on(stub):
    from predictors.scorers.completion import CompletionClient
    from predictors.scorers.hybrid import send_slow
    from predictors.scorers.pairwise_judge import PairwiseJudge, parse_choice
    from stub_upstream import usage_for

    assert [parse_choice(t) for t in ("Output (b)", "output (a).", "Output (a) or Output (b)", "Both")] == [
        2, 1, None, None
    ]
    stub.state.replies[JUDGE] = pairwise_reply
    client = CompletionClient(f"openai/{JUDGE}", api_base=stub.url, api_key="stub-key", backoff_s=0.01, timeout_s=5)
    judge = PairwiseJudge("pairwise", client)
    pairs = [ScoringItem(f"Q{i}: say right", "right", alternative="wrong") for i in range(3)]
    batch = asyncio.run(judge.score(pairs))
    assert isinstance(judge, RewardScorer)
    np.testing.assert_equal(batch.rewards, [1.0, 1.0, np.nan])
    np.testing.assert_equal(batch.certainty, [1.0, 0.0, np.nan])
    assert batch.errors[:2] == [None, None] and "no verdict" in batch.errors[2]
    assert hits(stub, JUDGE) == 6
    assert batch.tokens == sum(
        usage_for(h.body["messages"], pairwise_reply(h.body["messages"]))["total_tokens"] for h in stub.state.hits
    )
    assert send_slow(batch.rewards, batch.certainty, None, 0.5, None).tolist() == [False, True, True]
    flipped = asyncio.run(judge.score([ScoringItem("Q0: say right", "wrong", alternative="right")]))
    assert flipped.rewards.tolist() == [0.0] and flipped.certainty.tolist() == [1.0]
    once = asyncio.run(PairwiseJudge("once", client, orders=1).score(pairs[:1]))
    assert once.rewards.tolist() == [1.0] and once.certainty is None


def test_a_pairwise_hybrid_builds_from_the_registry_and_escalates_position_bias(tmp_path, stub, monkeypatch):
    """judge_pairwise entries: both orders as the fast part, one order as the slow part; scorer_eval calibrates
    it on pairwise items and saves the thresholds the registry reloads."""
    monkeypatch.setenv(KEY_ENV, "stub-key")
    stub.state.replies[JUDGE] = pairwise_reply
    pairwise = {**judge_entries(stub.url)[0], "kind": "judge_pairwise"}
    thresholds = tmp_path / "pairwise.json"
    entries = [
        {**pairwise, "name": "both-orders"},
        {**pairwise, "name": "one-order", "orders": 1, "max_tokens": 5},
        {"name": "pairwise", "kind": "hybrid", "fast": "both-orders", "slow": "one-order", "use_erp": False,
         "target_slow_fraction": 0.5, "thresholds": str(thresholds)},
    ]
    registry = load_registry(registry_with(tmp_path, entries))
    once = build_scorer(registry, "one-order")
    assert (once.orders, once.max_tokens, once.client.litellm_model) == (1, 5, f"openai/{JUDGE}")
    pairs = [ScoringItem(f"Q{i % 2} #{i}: say right", "right", alternative="wrong") for i in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "response": "right", "alternative": "wrong", "label": 1})
                            + "\n" for p in pairs))
    from benchmarks import scorer_eval

    registry_file = str(tmp_path / "model_registry.yaml")
    args = ["--registry", registry_file, "--hybrid", "pairwise", "--data", str(data), "--calibration", str(data)]
    assert scorer_eval.main(args) == 0 and thresholds.is_file()
    stub.state.hits.clear()
    batch = asyncio.run(build_scorer(registry, "pairwise").score(pairs))
    assert batch.slow.tolist() == [i % 2 == 1 for i in range(8)]  # Q1: the two orders disagree
    assert batch.rewards.tolist() == [1.0] * 8 and batch.stage.tolist() == batch.slow.astype(int).tolist()
    assert hits(stub, JUDGE) == 2 * 8 + 4
    assert all(hit.body["max_tokens"] == 5 for hit in list(stub.state.hits)[16:])
