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


def test_missing_file(tmp_path):
    assert "registry file not found" in error_of(tmp_path / "nope.yaml")


def test_the_repository_registry_is_valid():
    registry = load_registry(Path(__file__).resolve().parents[1] / "model_registry.yaml")
    assert len(registry.enabled) >= 5
    assert (registry.usd_per_token(registry.enabled) > 0).all()
