"""Best-of-N arms through the stub upstream: N samples asked, each scored by the arm's selector, the best
answered, all N charged; samples that cannot be scored fail the request instead of being picked blindly."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import yaml
from best_of_fixtures import MODEL, best_of_registry
from serving_fixtures import UPSTREAM_KEY, UPSTREAM_KEY_ENV
from stub_upstream import serve_in_thread

from router.errors import UpstreamError
from router.registry import RegistryError, load_registry
from router.sdk import Router
from router.server import create_app
from router.store import MemoryStore
from test_server import MESSAGES

ANSWERS = ["alpha one", "bravo two", "charlie three", "delta four"]
CONFIDENCE = {"alpha one": 0.3, "bravo two": 0.95, "charlie three": 0.2, "delta four": 0.5}


@pytest.fixture
def best_router(fitted_artifacts, confidence_selector, stub, tmp_path, monkeypatch) -> Router:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump(best_of_registry(fitted_artifacts, confidence_selector, stub.url)))
    stub.state.replies[MODEL] = list(ANSWERS)
    stub.state.token_confidence[MODEL] = CONFIDENCE.__getitem__
    return Router.from_registry(path, store=MemoryStore())


def _price(record, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * 0.15 + completion_tokens * 0.6) / 1e6


def test_one_call_with_n_answers_the_best_scored_sample_and_charges_all(best_router, stub) -> None:
    result = best_router.complete(MESSAGES, model=f"{MODEL}@best4")
    hit = stub.state.hits[-1]
    assert len(stub.state.hits) == 1 and (hit.body["n"], hit.body["logprobs"], hit.body["top_logprobs"]) == (4, True, 2)
    assert [c.message.content for c in result.response.choices] == ["bravo two"]
    record = result.record
    assert record.best_of.chosen == 1 and len(record.best_of.scores) == 4
    assert record.best_of.scores[1] == max(record.best_of.scores) and record.best_of.selector == "confidence.joblib"
    assert record.completion_tokens == 8, "every sample's tokens are billed"
    assert record.realized_cost_usd == pytest.approx(_price(record, record.prompt_tokens, 8))


def test_n_calls_for_servers_that_ignore_n_bill_each_input(best_router, stub) -> None:
    single = best_router.complete(MESSAGES, model=f"{MODEL}@plain").record.prompt_tokens
    stub.state.replies[MODEL] = list(ANSWERS[:3])
    stub.state.hits.clear()
    result = best_router.complete(MESSAGES, model=f"{MODEL}@best3")
    assert len(stub.state.hits) == 3 and all("n" not in hit.body for hit in stub.state.hits)
    assert result.response.choices[0].message.content == "bravo two"
    assert result.record.prompt_tokens == 3 * single and result.record.completion_tokens == 6


def test_a_streamed_request_streams_the_chosen_answer_after_selection(best_router, stub) -> None:
    stream = best_router.complete(MESSAGES, model=f"{MODEL}@best4", stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "bravo two" and stub.state.hits[-1].stream is False
    assert stream.record.completion_tokens == 8 and stream.record.best_of.chosen == 1


def test_samples_without_logprobs_fail_clearly_and_are_charged(best_router, stub) -> None:
    stub.state.token_confidence.clear()
    with pytest.raises(UpstreamError, match="no per-token logprobs") as caught:
        best_router.complete(MESSAGES, model=f"{MODEL}@best4")
    assert caught.value.status == 502
    record = caught.value.record
    assert record.completion_tokens == 8 and record.realized_cost_usd > 0 and record.best_of is None


def test_the_proxy_answers_a_best_of_arm_with_the_chosen_sample(best_router, stub) -> None:
    with serve_in_thread(create_app(best_router)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model=f"{MODEL}@best4", messages=MESSAGES)
        assert raw.headers["x-erp-arm"] == "best4"
        assert raw.parse().choices[0].message.content == "bravo two"
        stub.state.replies[MODEL] = list(ANSWERS)
        chunks = client.chat.completions.create(model=f"{MODEL}@best4", messages=MESSAGES, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "bravo two"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda arm: arm.pop("selector"), "best_of needs selector"),
        (lambda arm: arm.pop("best_of"), "selector is only used with best_of"),
        (lambda arm: arm.update(best_of=1), "best_of"),
        (lambda arm: arm.update(best_of_sampling="batch"), "best_of_sampling"),
    ],
)
def test_bad_best_of_entries_name_the_key(tmp_path, change, message) -> None:
    document = best_of_registry(tmp_path, tmp_path / "s.joblib", "http://127.0.0.1:9/v1")
    mini = next(m for m in document["models"] if m["name"] == MODEL)
    change(mini["arms"][1])
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    assert message in str(caught.value) and "models[1].arms[1]" in str(caught.value) and "fix:" in str(caught.value)


def test_a_missing_selector_file_is_named_with_the_command_that_makes_it(fitted_artifacts, tmp_path) -> None:
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump(best_of_registry(fitted_artifacts, tmp_path / "none.joblib", "http://127.0.0.1:9/v1")))
    with pytest.raises(RegistryError, match=r"models\[1\]\.arms\[1\]\.selector.*erp fit-selector"):
        load_registry(path, require_artifacts=True)


def _solve(messages: list[dict]) -> str:
    """The stub model: right on problems with an even answer, '0' otherwise (a generated expression)."""
    question = messages[-1]["content"].removeprefix("What is ").rstrip("?")
    value = eval(question.replace("/", "//"), {"__builtins__": {}})  # noqa: S307 (our own generated arithmetic)
    return f"The answer is {value}" if value % 2 == 0 else "The answer is 0 maybe"


@pytest.fixture
def collect_setup(stub, tmp_path, monkeypatch, confidence_selector) -> tuple[Path, Path]:
    """A registry of one stub model with a plain arm and a best-of-4 arm, an answer scorer, and 16 problems."""
    from benchmarks.arithmetic_problems import generate, to_frame

    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    prompts = tmp_path / "prompts.parquet"
    to_frame(generate(16, 0, max_steps=2, max_digits=1, style="expression")).to_parquet(prompts, index=False)
    common = {"predictor": "unused.joblib", "params": {"max_tokens": 8}}
    document = {
        "embedding": "minilm-static",
        "shared_predictor": "unused.joblib",
        "models": [{"name": "tiny", "litellm_model": "openai/tiny", "api_base": stub.url, "api_key_env": UPSTREAM_KEY_ENV,
                    "input_usd_per_mtok": 0.0, "output_usd_per_mtok": 1.0,
                    "arms": [{"name": "plain", **common},
                             {"name": "best4", **common, "best_of": 4, "selector": str(confidence_selector)}]}],
        "scorers": [{"name": "correct", "kind": "answer"}],
    }
    registry = tmp_path / "model_registry.yaml"
    registry.write_text(yaml.safe_dump(document))
    stub.state.replies["tiny"] = _solve
    stub.state.token_confidence["tiny"] = lambda answer: 0.3 if "maybe" in answer else 0.9
    return prompts, registry


def test_collect_keeps_logprobs_samples_best_of_arms_and_fits_a_selector(collect_setup, stub, tmp_path) -> None:
    import pandas as pd

    from predictors.selector import load_selector
    from router.cli import main

    from router.selector_fitting import candidate_samples

    prompts, registry = collect_setup
    table = pd.read_parquet(prompts)
    pd.concat([table, table.head(1).assign(prompt_id="again")]).to_parquet(prompts, index=False)  # a repeated problem
    out = tmp_path / "data"
    args = ["collect", "--prompts", str(prompts), "--registry", str(registry), "--scorer", "correct", "--out", str(out)]
    assert main([*args, "--logprobs", "2"]) == 0
    assert sorted(candidate_samples(out, "tiny@plain")["prompt_id"].unique()) == sorted(table["prompt_id"]), "kept once"
    outcomes = pd.read_parquet(out / "outcomes.parquet")
    plain, best = (outcomes[outcomes["model"] == f"tiny@{arm}"].set_index("prompt_id") for arm in ("plain", "best4"))
    assert plain["logprobs"].notna().all() and 0 < plain["reward"].mean() < 1
    assert (best["output_tokens"] == 4 * plain["output_tokens"]).all(), "a best-of-4 outcome costs its four samples"
    assert [hit.body.get("n") for hit in stub.state.hits].count(4) == 16
    selector = tmp_path / "fitted.joblib"
    fit = ["fit-selector", "--data", str(out), "--model", "tiny@plain", "--registry", str(registry), "--out", str(selector)]
    assert main([*fit, "--source", "logprobs", "--top-k", "2"]) == 0
    fitted = load_selector(selector)
    assert fitted.feature_source_ == {"kind": "logprobs", "top_k": 2} and fitted.n_parameters_ == 2 * 7 + 2


def test_collect_models_takes_an_arm_or_a_model_for_all_its_enabled_arms(collect_setup, tmp_path) -> None:
    import pandas as pd

    from router.cli import main

    prompts, registry = collect_setup
    args = ["collect", "--prompts", str(prompts), "--registry", str(registry), "--scorer", "correct", "--limit", "4"]
    for models, expected in [("tiny@plain", {"tiny@plain"}), ("tiny", {"tiny@plain", "tiny@best4"})]:
        out = tmp_path / models
        assert main([*args, "--models", models, "--out", str(out)]) == 0
        assert set(pd.read_parquet(out / "outcomes.parquet")["model"]) == expected


def test_collect_caches_the_hidden_state_features_fit_selector_reads(collect_setup, smollm2, tmp_path, monkeypatch) -> None:
    import numpy as np

    from router import selector_fitting
    from router.cli import main

    prompts, registry = collect_setup
    monkeypatch.setenv("ERP_CACHE_DIR", str(tmp_path / "cache"))
    built = []
    monkeypatch.setattr(selector_fitting, "build_source", lambda kind, top_k, layers: built.append((kind, layers)) or smollm2)
    out = tmp_path / "data"
    args = ["collect", "--prompts", str(prompts), "--registry", str(registry), "--scorer", "correct", "--limit", "3",
            "--samples", "2", "--hidden-states", "--out", str(out)]
    assert main(args) == 0
    assert built == [("hidden_states", None)]  # the default layers, applied by build_source
    (cached,) = (tmp_path / "cache" / "selector-features").iterdir()
    with np.load(cached) as stored:
        arrays = [stored[name] for name in stored.files]
    assert len(arrays) == 3 * 2, "every answer of the plain arm; the best-of arm's outcomes are selections, not samples"
    assert all(a.ndim == 2 and a.shape[0] >= 1 and a.shape[1] == 576 * 4 for a in arrays)
    samples = selector_fitting.candidate_samples(out, "tiny@plain")
    monkeypatch.setattr(smollm2, "for_answers", lambda *a, **k: pytest.fail("recomputed instead of read back"))
    entry = load_registry(registry).entry("tiny@plain")
    assert [a.shape for a in selector_fitting.answer_features(smollm2, entry, samples)] == [a.shape for a in arrays]


def test_collect_with_hidden_states_whose_triples_failed_exits_1_without_caching(collect_setup, stub, tmp_path, monkeypatch, capsys) -> None:
    from router import selector_fitting
    from router.cli import main

    prompts, registry = collect_setup
    monkeypatch.setattr(selector_fitting, "build_source", lambda kind, top_k, layers: object())
    monkeypatch.setattr(selector_fitting, "cache_hidden_features", lambda *a: pytest.fail("features of failed triples"))
    stub.state.failures["tiny"] = "500"
    args = ["collect", "--prompts", str(prompts), "--registry", str(registry), "--scorer", "correct", "--limit", "2",
            "--models", "tiny@plain", "--retries", "0", "--hidden-states", "--out", str(tmp_path / "data")]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert "rerun the same command to retry them" in error and "hidden-state features not cached" in error
    assert "erp: error" not in error


def test_collect_refuses_bad_layers_before_any_call(collect_setup, stub, tmp_path, monkeypatch, capsys) -> None:
    from router import selector_fitting
    from router.cli import main

    def out_of_range(gguf, layers):
        raise ValueError(f"layers {layers} must be hidden-state indices in [-31, 30]")

    monkeypatch.setattr(selector_fitting, "HiddenStateFeatures", out_of_range)
    prompts, registry = collect_setup
    args = ["collect", "--prompts", str(prompts), "--registry", str(registry), "--scorer", "correct", "--out", str(tmp_path / "d")]
    for extra, message in [
        (["--hidden-states", "--layers", "99"], "--layers: layers [99] must be hidden-state indices"),
        (["--layers", "-1"], "--layers applies to --hidden-states"),
        (["--hidden-states", "--layers", ""], "comma-separated integers"),
    ]:
        assert main([*args, *extra]) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error
    assert not stub.state.hits and not (tmp_path / "d").exists()


def test_fit_selector_bad_inputs_exit_2_with_the_fix(collect_setup, tmp_path, capsys) -> None:
    from router.cli import main

    prompts, registry = collect_setup
    out = tmp_path / "data"
    main(["collect", "--prompts", str(prompts), "--registry", str(registry), "--scorer", "correct", "--out", str(out)])
    capsys.readouterr()
    fit = ["fit-selector", "--data", str(out), "--registry", str(registry), "--out", str(tmp_path / "s.joblib")]
    for extra, message in [
        (["--model", "tiny@plain", "--source", "logprobs"], "erp collect --logprobs 5"),
        (["--model", "tiny@nope"], "no model named 'tiny@nope'"),
        (["--model", "tiny@plain", "--layers", "last"], "comma-separated integers"),
        (["--model", "tiny@plain", "--layers=-1,-1"], "a layer is named twice"),
        (["--model", "tiny@plain", "--layers", "99"], "--layers: layers [99] must be hidden-state indices in [-31, 30]"),
        (["--model", "tiny"], "'tiny' is a model with arms; fix: name one arm, one of tiny@plain, tiny@best4"),
        (["--model", "tiny@plain", "--source", "logprobs", "--top-k", "0"], "--top-k must be in 1..20"),
        (["--model", "tiny@plain", "--source", "logprobs", "--layers=-1"], "--layers applies to --source hidden_states"),
        (["--model", "tiny@plain", "--out", str(tmp_path)], "is a folder; fix: give a file path"),
        (["--model", "tiny@plain", "--out", str(out / "outcomes.parquet")], "is inside --data"),
        (["--model", "tiny@plain", "--out", str(prompts)], "exists and is not a selector file"),
    ]:
        data = (out / "outcomes.parquet").read_bytes()
        assert main([*fit, *extra]) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error
        assert (out / "outcomes.parquet").read_bytes() == data, "the collected data is untouched"
