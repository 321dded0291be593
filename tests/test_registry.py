from pathlib import Path

import pytest
import yaml

from router.registry import RegistryError, load_registry

VALID = {
    "embedding": "minilm-static",
    "shared_predictor": "artifacts/shared.joblib",
    "policy": {"lambda": 50},
    "models": [
        {
            "name": "small",
            "litellm_model": "openai/small",
            "input_usd_per_mtok": 0.1,
            "output_usd_per_mtok": 0.2,
            "predictor": "artifacts/small.joblib",
        },
        {
            "name": "gpt-4o-mini",
            "litellm_model": "openai/gpt-4o-mini-2024-07-18",
            "prices_from": "litellm",
            "predictor": "artifacts/mini.joblib",
        },
    ],
}


def write(tmp_path: Path, document) -> Path:
    path = tmp_path / "registry.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(RegistryError) as caught:
        load_registry(path, **kwargs)
    return str(caught.value)


def test_valid_registry_resolves_prices_from_its_own_values_and_litellm(tmp_path):
    registry = load_registry(write(tmp_path, VALID))
    prices = registry.usd_per_token(registry.enabled)
    assert prices[0].tolist() == pytest.approx([0.1e-6, 0.2e-6])
    assert prices[1].tolist() == pytest.approx([0.15e-6, 0.6e-6])  # LiteLLM's local map for gpt-4o-mini
    assert registry.policy.lambda_ == 50
    assert registry.path_of(registry.models[0].predictor) == tmp_path / "artifacts/small.joblib"


def test_unknown_key_names_file_key_and_fix(tmp_path):
    document = yaml.safe_load(yaml.safe_dump(VALID))
    document["models"][0]["temprature"] = 0.3
    message = error_of(write(tmp_path, document))
    assert str(tmp_path / "registry.yaml") in message
    assert "models[0].temprature" in message
    assert "remove this key" in message


def test_duplicate_names_are_rejected(tmp_path):
    document = yaml.safe_load(yaml.safe_dump(VALID))
    document["models"][1]["name"] = "small"
    message = error_of(write(tmp_path, document))
    assert "duplicate model name 'small'" in message and "models[1].name" in message


def test_missing_prices_say_how_to_fix(tmp_path):
    document = yaml.safe_load(yaml.safe_dump(VALID))
    del document["models"][0]["output_usd_per_mtok"]
    message = error_of(write(tmp_path, document))
    assert "models[0]" in message and "prices_from: litellm" in message


def test_price_missing_from_litellm_map_is_an_error(tmp_path):
    document = yaml.safe_load(yaml.safe_dump(VALID))
    document["models"][1]["litellm_model"] = "openai/no-such-model-xyz"
    registry = load_registry(write(tmp_path, document))
    with pytest.raises(RegistryError, match=r"models\[1\].prices_from.*input_usd_per_mtok"):
        registry.usd_per_token(registry.enabled)


def test_missing_predictor_files_are_reported_with_the_fit_command(tmp_path):
    message = error_of(write(tmp_path, VALID), require_artifacts=True)
    assert "shared_predictor" in message and "erp fit --data DIR" in message
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts/shared.joblib").write_bytes(b"x")
    message = error_of(write(tmp_path, VALID), require_artifacts=True)
    assert "models[0].predictor" in message and "--model small" in message


def test_bad_yaml_reports_the_line(tmp_path):
    message = error_of(write(tmp_path, "models:\n  - name: a\n   bad: [\n"))
    assert "invalid YAML at line" in message


def test_wrong_types_and_values(tmp_path):
    document = yaml.safe_load(yaml.safe_dump(VALID))
    document["embedding"] = "bert-large"
    document["policy"]["lambda"] = -1
    message = error_of(write(tmp_path, document))
    assert "key 'embedding'" in message and "key 'policy.lambda'" in message


@pytest.mark.parametrize(
    "where, path, key, says",
    [
        ("models[1].predictor", "./artifacts/shared.joblib", "models[1].predictor", "is also shared_predictor"),
        ("models[1].predictor", "artifacts/../artifacts/small.joblib", "models[1].predictor", "is also models[0].predictor"),
        ("arm", "artifacts/small.joblib", "models[1].arms[1].predictor", "is also models[0].predictor"),
        ("selector", "artifacts/mini-high.joblib", "models[1].arms[1].predictor", "is also models[1].arms[0].selector"),
    ],
)
def test_a_fit_that_would_overwrite_another_file_is_refused(tmp_path, where, path, key, says):
    """Serving may read one file for two candidates; ``erp fit`` writing it would overwrite the other's."""
    document = yaml.safe_load(yaml.safe_dump(VALID))
    if where in ("arm", "selector"):
        del document["models"][1]["predictor"]
        document["models"][1]["arms"] = [
            {"name": "low", "predictor": "artifacts/mini-low.joblib"},
            {"name": "high", "predictor": path if where == "arm" else "artifacts/mini-high.joblib"},
        ]
        if where == "selector":
            document["models"][1]["arms"][0].update(best_of=4, selector=path)
    else:
        document["models"][1]["predictor"] = path
    valid = load_registry(write(tmp_path, VALID))
    valid.check_fit_targets([e.name for e in valid.enabled])  # every file its own: the pool may be fitted
    registry = load_registry(write(tmp_path, document))  # loads: serving only reads the files
    last = registry.enabled[-1].name
    with pytest.raises(RegistryError) as caught:
        registry.check_fit_targets([last])
    message = str(caught.value)
    assert f"key '{key}': " in message and says in message and f"fix: give {last} a predictor file of its own" in message


def test_fitting_the_pool_refuses_a_shared_file_that_is_also_a_selector(tmp_path):
    document = yaml.safe_load(yaml.safe_dump(VALID))
    document["models"][1]["best_of"], document["models"][1]["selector"] = 4, "artifacts/shared.joblib"
    registry = load_registry(write(tmp_path, document))
    registry.check_fit_targets([e.name for e in registry.enabled])  # adding one model leaves the shared file alone
    with pytest.raises(RegistryError, match=r"key 'shared_predictor': .* is also models\[1\]\.selector"):
        registry.check_fit_targets([e.name for e in registry.enabled], shared=True)


def test_missing_file(tmp_path):
    assert "registry file not found" in error_of(tmp_path / "nope.yaml")


def test_the_repository_registry_is_valid():
    registry = load_registry(Path(__file__).resolve().parents[1] / "model_registry.yaml")
    assert len(registry.enabled) >= 5
    assert (registry.usd_per_token(registry.enabled) > 0).all()


# --- scorers: replay, pairwise judges and cascades ----------------------------------------------------

SCORERS = [
    {"name": "cheap", "kind": "replay", "path": "judge-replay", "judge": "Falcon", "mode": "Vanilla"},
    {"name": "strong", "kind": "judge_pairwise", "litellm_model": "openai/gpt-4o"},
    {"name": "slow", "kind": "replay", "path": "judge-replay", "judge": "GPT-4", "mode": "CoT", "orders": 1},
    {"name": "inner", "kind": "hybrid", "fast": "strong", "slow": "slow", "use_erp": False, "thresholds": "i.json"},
    {"name": "cascade", "kind": "hybrid", "fast": "cheap", "slow": "inner", "use_erp": False, "thresholds": "c.json"},
]


def scorer_error(tmp_path: Path, scorers: list[dict]) -> str:
    """The one-line-per-problem error of VALID with these scorers; it always names the file."""
    message = error_of(write(tmp_path, {**VALID, "scorers": scorers}))
    assert message.startswith(f"{tmp_path / 'registry.yaml'}: key 'scorers[")
    return message


def test_replay_pairwise_judges_and_a_three_stage_cascade_load(tmp_path):
    registry = load_registry(write(tmp_path, {**VALID, "scorers": SCORERS}))
    cheap, strong, slow, _, cascade = registry.scorers
    assert (cheap.orders, cheap.tokens, slow.orders) == (2, "all", 1)
    assert registry.path_of(cheap.path) == tmp_path / "judge-replay"
    assert (strong.orders, strong.max_tokens, strong.retries) == (2, 50, 4)
    assert (cascade.slow, registry.scorer(cascade.slow).slow) == ("inner", "slow")


@pytest.mark.parametrize(
    "change, key, says",
    [
        ({"slow": "nowhere"}, "scorers[4].slow", "no scorer named 'nowhere'; the slow part must be a judge or"),
        ({"fast": "inner"}, "scorers[4].fast", "'inner' is a hybrid scorer; the fast part must be a judge_logprobs"),
        ({"fast": "slow"}, "scorers[4].fast", "'slow' is a replay scorer asked in one order (no certainty to"),
        ({"slow": "cascade"}, "scorers[4].slow", "the cascade cascade -> cascade is a cycle; end it with a slow"),
        ({"use_erp": True}, "scorers[4].use_erp", "a pairwise hybrid compares two responses"),
    ],
)
def test_bad_cascade_entries_name_file_key_and_fix(tmp_path, change, key, says):
    message = scorer_error(tmp_path, SCORERS[:4] + [{**SCORERS[4], **change}])
    assert f"key '{key}': {says}" in message and "; fix: " in message


def test_a_cycle_through_two_hybrids_and_a_pointwise_stage_in_a_pairwise_cascade_are_rejected(tmp_path):
    inner = {**SCORERS[3], "slow": "cascade"}
    message = scorer_error(tmp_path, SCORERS[:3] + [inner, SCORERS[4]])
    assert "key 'scorers[3].slow': the cascade inner -> cascade -> inner is a cycle" in message
    pointwise = {"name": "rubric", "kind": "judge", "litellm_model": "openai/gpt-4o"}
    message = scorer_error(tmp_path, [*SCORERS[:3], {**SCORERS[3], "slow": "rubric"}, SCORERS[4], pointwise])
    assert "key 'scorers[3].slow': 'rubric' judges single responses but the fast part 'strong' judges pairs" in message
    rm = {"name": "rm", "kind": "reward_model", "path": "rm"}
    message = scorer_error(tmp_path, [*SCORERS[:4], {**SCORERS[4], "slow": "rm"}, rm])
    assert "key 'scorers[4].slow': 'rm' is a reward_model scorer" in message and "one of: cheap, strong, slow, inner" in message


def test_replay_and_pairwise_entries_reject_wrong_values(tmp_path):
    message = scorer_error(tmp_path, [{**SCORERS[0], "orders": 3, "tokens": "input"}, SCORERS[1]])
    assert "key 'scorers[0].orders'" in message and "key 'scorers[0].tokens'" in message
    assert "use one of the allowed values ('all' or 'output')" in message
    message = scorer_error(tmp_path, [{**SCORERS[0], "kind": "replayed"}])
    assert "key 'scorers[0]'" in message and "'judge_pairwise'" in message and "'replay'" in message
    message = scorer_error(tmp_path, [{**SCORERS[1], "top_logprobs": 5}])
    assert "key 'scorers[0].top_logprobs'" in message and "remove this key" in message
