"""Arms: one model at several configurations, each a candidate MODEL@ARM, through the stub upstream.

The pool is fitted on a zeroeval subset whose two GPT-4o models are renamed into two arms of one model
(``tiny@low`` and ``tiny@high``), so each arm has real outcomes and its own predictor.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import openai
import pandas as pd
import pytest
import yaml
from serving_fixtures import UPSTREAM_KEY, UPSTREAM_KEY_ENV
from stub_upstream import serve_in_thread

from router.cli import main
from router.errors import ModelNotFoundError
from router.registry import RegistryError, load_registry
from router.sdk import Router
from router.server import create_app
from router.store import MemoryStore
from test_server import MESSAGES

ARMS = {"gpt-4o-mini-2024-07-18": "tiny@low", "gpt-4o-2024-08-06": "tiny@high"}
PLAIN = "Meta-Llama-3.1-8B-Instruct"


def arms_registry(artifacts: Path, api_base: str = "http://127.0.0.1:9/v1") -> dict:
    common = {"api_base": api_base, "api_key_env": UPSTREAM_KEY_ENV}
    return {
        "embedding": "minilm-static",
        "shared_predictor": str(artifacts / "shared.joblib"),
        "policy": {"lambda": 100.0},
        "models": [
            {"name": PLAIN, "litellm_model": f"openai/{PLAIN}", "input_usd_per_mtok": 0.18, "output_usd_per_mtok": 0.18,
             "predictor": str(artifacts / f"{PLAIN}.joblib"), **common},
            {
                "name": "tiny",
                "litellm_model": "openai/tiny",
                "input_usd_per_mtok": 0.15,
                "output_usd_per_mtok": 0.6,
                **common,
                "arms": [
                    {"name": "low", "params": {"reasoning_effort": "low", "max_tokens": 64},
                     "system_prompt": "Answer directly.", "predictor": str(artifacts / "tiny@low.joblib")},
                    {"name": "high", "params": {"reasoning_effort": "high"},
                     "predictor": str(artifacts / "tiny@high.joblib")},
                ],
            },
        ],
    }


@pytest.fixture(scope="module")
def arms_data(tmp_path_factory, zeroeval_subset: Path) -> Path:
    """The subset with the two GPT-4o models renamed into arms of one model `tiny`."""
    target = tmp_path_factory.mktemp("arms-data")
    prompts = pd.read_parquet(zeroeval_subset / "prompts.parquet")
    outcomes = pd.read_parquet(zeroeval_subset / "outcomes.parquet")
    outcomes = outcomes[outcomes["model"].isin([*ARMS, PLAIN])].replace({"model": ARMS})
    prices = pd.read_csv(zeroeval_subset / "models.csv")
    prices = prices[prices["model"].isin([*ARMS, PLAIN])].replace({"model": ARMS})
    prompts.to_parquet(target / "prompts.parquet", index=False)
    outcomes.to_parquet(target / "outcomes.parquet", index=False)
    prices.to_csv(target / "models.csv", index=False)
    return target


@pytest.fixture(scope="module")
def fitted_arms(tmp_path_factory, arms_data: Path) -> Path:
    root = tmp_path_factory.mktemp("arms")
    registry = root / "model_registry.yaml"
    registry.write_text(yaml.safe_dump(arms_registry(root / "artifacts")))
    assert main(["fit", "--data", str(arms_data), "--registry", str(registry)]) == 0
    return root / "artifacts"


@pytest.fixture
def arms_router(fitted_arms, stub, tmp_path, monkeypatch) -> Router:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump(arms_registry(fitted_arms, stub.url)))
    return Router.from_registry(path, store=MemoryStore())


def test_arms_are_candidates_with_their_own_predictions(arms_router) -> None:
    decision = arms_router.route(MESSAGES, lambda_=0)
    names = {c.model for c in decision.candidates}
    assert names == {PLAIN, "tiny@low", "tiny@high"}
    rewards = {c.model: c.expected_reward for c in decision.candidates}
    assert rewards["tiny@low"] != rewards["tiny@high"], "each arm has its own predictor"


def test_a_named_arm_sends_its_parameters_and_system_prompt(arms_router, stub) -> None:
    result = arms_router.complete(MESSAGES, model="tiny@low", temperature=0.3)
    hit = stub.state.hits[-1]
    assert hit.model == "tiny" and result.record.model == "tiny@low" and not result.record.routed
    assert (hit.body["reasoning_effort"], hit.body["max_tokens"], hit.body["temperature"]) == ("low", 64, 0.3)
    assert hit.body["messages"][0] == {"role": "system", "content": "Answer directly."}
    assert hit.body["messages"][1:] == MESSAGES
    arms_router.complete(MESSAGES, model="tiny@low", max_tokens=10)
    assert stub.state.hits[-1].body["max_tokens"] == 10, "a lower cap of the caller's is kept"
    arms_router.complete(MESSAGES, model="tiny@low", max_tokens=500, reasoning_effort="high")
    assert (stub.state.hits[-1].body["max_tokens"], stub.state.hits[-1].body["reasoning_effort"]) == (64, "low")


def test_a_model_named_without_an_arm_routes_among_its_arms(arms_router, stub) -> None:
    result = arms_router.complete(MESSAGES, model="tiny", lambda_=0)
    assert result.record.routed and result.record.model in ("tiny@low", "tiny@high")
    assert {c.model for c in result.record.candidates} == {"tiny@low", "tiny@high"}


def test_reasoning_tokens_are_charged_as_output(arms_router, stub) -> None:
    stub.state.reasoning_tokens["tiny"] = 1_000
    result = arms_router.complete(MESSAGES, model="tiny@high")
    record = result.record
    assert record.reasoning_tokens == 1_000 and record.completion_tokens >= 1_000
    expected = (record.prompt_tokens * 0.15 + record.completion_tokens * 0.6) / 1e6
    assert record.realized_cost_usd == pytest.approx(expected)


def test_unknown_arms_are_404_with_the_list(arms_router, stub) -> None:
    with pytest.raises(ModelNotFoundError, match="no arm 'medium'; its arms: tiny@low, tiny@high"):
        arms_router.complete(MESSAGES, model="tiny@medium")
    assert not stub.state.hits


def test_the_proxy_shows_the_arm_and_lists_arms(arms_router, stub) -> None:
    with serve_in_thread(create_app(arms_router)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="tiny@high", messages=MESSAGES)
        assert (raw.headers["x-erp-model"], raw.headers["x-erp-arm"]) == ("tiny@high", "high")
        routed = client.chat.completions.with_raw_response.create(model="erp:lambda=0", messages=MESSAGES)
        assert "x-erp-expected-reward" in routed.headers
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="tiny@medium", messages=MESSAGES)
        assert "tiny@low, tiny@high" in caught.value.body["message"]
        assert [m.id for m in client.models.list()] == ["erp", PLAIN, "tiny@low", "tiny@high", "tiny"]


def test_erp_route_shows_the_arms(fitted_arms, tmp_path, capsys) -> None:
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump(arms_registry(fitted_arms)))
    assert main(["route", "What is 12 * 13?", "--registry", str(path)]) == 0
    table = capsys.readouterr().out
    assert "tiny@low" in table and "tiny@high" in table


def test_adding_an_arm_fits_only_its_predictor(fitted_arms, arms_data, tmp_path) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for file in fitted_arms.iterdir():
        if file.is_file():
            (artifacts / file.name).write_bytes(file.read_bytes())
    (artifacts / "tiny@high.joblib").unlink()
    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in artifacts.iterdir()}
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump(arms_registry(artifacts)))
    assert main(["fit", "--data", str(arms_data), "--registry", str(path), "--model", "tiny@high"]) == 0
    after = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in artifacts.iterdir()}
    assert {name: after[name] for name in before} == before and "tiny@high.joblib" in after


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda tiny: tiny["arms"].append(dict(tiny["arms"][0])), "duplicate arm name(s) low"),
        (lambda tiny: tiny["arms"][1].pop("predictor"), "models[1].arms[1].predictor"),
        (lambda tiny: tiny.update(predictor="x.joblib"), "move predictor onto each arm"),
        (lambda tiny: tiny["arms"][0]["params"].update(api_base="http://evil/v1"), "params.api_base"),
        (lambda tiny: tiny["arms"][0].update(name="bad@name"), "models[1].arms[0].name"),
    ],
)
def test_bad_arm_entries_name_the_key(tmp_path, change, message) -> None:
    document = arms_registry(tmp_path)
    change(document["models"][1])
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    assert message in str(caught.value) and str(path) in str(caught.value) and "fix:" in str(caught.value)


def test_collect_calls_each_arm_as_routing_does_and_keeps_reasoning_tokens(stub, tmp_path, monkeypatch) -> None:
    from test_collect import collect_args, conversations, write_jsonl

    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    document = arms_registry(tmp_path / "artifacts", stub.url)
    document["models"] = document["models"][1:]
    document["scorers"] = [{"name": "judge", "kind": "judge", "litellm_model": "openai/judge", "api_base": stub.url,
                            "api_key_env": UPSTREAM_KEY_ENV, "retries": 0}]
    registry = tmp_path / "model_registry.yaml"
    registry.write_text(yaml.safe_dump(document))
    stub.state.replies["judge"] = lambda messages: '{"rationale": "scripted", "score": 7}'
    stub.state.reasoning_tokens["tiny"] = 50
    out = tmp_path / "out"
    prompts = write_jsonl(tmp_path / "p.jsonl", conversations(2))
    assert main(collect_args(prompts, registry, out, samples=1)) == 0
    calls = [hit.body for hit in stub.state.hits if hit.model == "tiny"]
    low = [body for body in calls if body.get("reasoning_effort") == "low"]
    assert len(low) == 2 and all(b["max_tokens"] == 64 and b["messages"][0]["role"] == "system" for b in low)
    outcomes = pd.read_parquet(out / "outcomes.parquet")
    assert set(outcomes["model"]) == {"tiny@low", "tiny@high"} and (outcomes["reasoning_tokens"] == 50).all()
    from predictors.dataset import load_dataset

    data = load_dataset(out)
    billed = outcomes.groupby("model")["output_tokens"].mean()
    assert data.output_tokens.mean(axis=0) == pytest.approx([billed[m] for m in data.models]), "billed tokens"


def test_collect_grades_answers_against_the_prompts_reference(stub, tmp_path, monkeypatch) -> None:
    from test_collect import collect_args

    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    document = arms_registry(tmp_path / "artifacts", stub.url)
    document["models"] = document["models"][1:]
    document["scorers"] = [{"name": "correct", "kind": "answer"}]
    registry = tmp_path / "model_registry.yaml"
    registry.write_text(yaml.safe_dump(document))
    table = pd.DataFrame({"prompt_id": ["a", "b"], "prompt": ["What is 6 * 7?", "What is 2 + 2?"],
                          "category": ["1-step", "1-step"], "answer": ["42", "4"]})
    table.to_parquet(tmp_path / "prompts.parquet", index=False)
    stub.state.replies["tiny"] = lambda messages: "6 * 7 = 42. Answer: 42"
    out = tmp_path / "out"
    args = collect_args(tmp_path / "prompts.parquet", registry, out, samples=1)
    assert main([*args[:-4], "--scorer", "correct", "--out", str(out)]) == 0
    outcomes = pd.read_parquet(out / "outcomes.parquet").merge(pd.read_parquet(out / "prompts.parquet"), on="prompt_id")
    assert dict(zip(outcomes["prompt_id"], outcomes["reward"])) == {"a": 1.0, "b": 0.0}
    assert list(pd.read_parquet(out / "prompts.parquet")["answer"]) == ["42", "4"]
