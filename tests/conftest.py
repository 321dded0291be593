"""Shared fixtures: a small real routing dataset cut from ../shared/data/zeroeval, and a fitted registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ZEROEVAL = SHARED_DATA / "zeroeval"
SUBSET_MODELS = [
    "gemma-2-2b-it",
    "Meta-Llama-3.1-8B-Instruct",
    "gpt-4o-mini-2024-07-18",
    "deepseek-v2.5-0908",
    "claude-3-5-sonnet-20241022",
    "gpt-4o-2024-08-06",
]
REGISTRY_MODELS = ["Meta-Llama-3.1-8B-Instruct", "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"]


def write_subset(target: Path, per_category: int = 80, models: list[str] = SUBSET_MODELS, seed: int = 0) -> Path:
    """A stratified sample of zeroeval prompts with a few models, in the routing-dataset format."""
    prompts = pd.read_parquet(ZEROEVAL / "prompts.parquet")
    prompts = prompts.groupby("category", group_keys=False).sample(per_category, random_state=seed)
    outcomes = pd.read_parquet(ZEROEVAL / "outcomes.parquet")
    outcomes = outcomes[outcomes["prompt_id"].isin(prompts["prompt_id"]) & outcomes["model"].isin(models)]
    prices = pd.read_csv(ZEROEVAL / "models.csv")
    target.mkdir(parents=True, exist_ok=True)
    prompts.to_parquet(target / "prompts.parquet", index=False)
    outcomes.to_parquet(target / "outcomes.parquet", index=False)
    prices[prices["model"].isin(models)].to_csv(target / "models.csv", index=False)
    return target


@pytest.fixture(scope="session")
def zeroeval_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ZEROEVAL.is_dir():
        pytest.fail(f"{ZEROEVAL} is missing: the tests read the shared routing datasets beside the repository")
    return write_subset(tmp_path_factory.mktemp("zeroeval-subset"))


def registry_document(
    artifact_dir: Path,
    api_base: str | None = None,
    lambda_: float = 100.0,
    api_key_env: str | None = None,
    serving: dict | None = None,
) -> dict:
    """A registry over REGISTRY_MODELS whose LiteLLM strings point at an OpenAI-compatible api_base.

    ``api_key_env`` names the variable holding every model's key; ``serving`` becomes the serving section.
    """
    models = []
    for name in REGISTRY_MODELS:
        entry = {
            "name": name,
            "litellm_model": f"openai/{name}",
            "input_usd_per_mtok": {"Meta-Llama-3.1-8B-Instruct": 0.18, "gpt-4o-mini-2024-07-18": 0.15}.get(name, 2.5),
            "output_usd_per_mtok": {"Meta-Llama-3.1-8B-Instruct": 0.18, "gpt-4o-mini-2024-07-18": 0.6}.get(name, 10.0),
            "predictor": str(artifact_dir / "models" / f"{name}.joblib"),
        }
        if api_base:
            entry["api_base"] = api_base
        if api_key_env:
            entry["api_key_env"] = api_key_env
        models.append(entry)
    document = {
        "embedding": "minilm-static",
        "shared_predictor": str(artifact_dir / "shared.joblib"),
        "policy": {"lambda": lambda_},
        "models": models,
    }
    if serving is not None:
        document["serving"] = serving
    return document


@pytest.fixture(scope="session")
def fitted_artifacts(tmp_path_factory: pytest.TempPathFactory, zeroeval_subset: Path) -> Path:
    """Predictors for REGISTRY_MODELS fitted once per session by the real `erp fit` code."""
    from router.fitting import fit_all

    root = tmp_path_factory.mktemp("fitted")
    registry = root / "model_registry.yaml"
    registry.write_text(yaml.safe_dump(registry_document(root / "artifacts")))
    fit_all(registry, zeroeval_subset)
    return root / "artifacts"


@pytest.fixture
def write_registry(tmp_path: Path, fitted_artifacts: Path) -> Callable[..., Path]:
    """Write a registry using the session's fitted predictors; keyword arguments go to registry_document."""

    def write(**kwargs) -> Path:
        path = tmp_path / "model_registry.yaml"
        path.write_text(yaml.safe_dump(registry_document(fitted_artifacts, **kwargs)))
        return path

    return write


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


from serving_fixtures import make_router, stub, stub_server  # noqa: E402,F401  (serving test fixtures)
from local_model_fixtures import local_model_url, smollm2  # noqa: E402,F401  (the local model: llama.cpp, transformers)
from best_of_fixtures import confidence_selector  # noqa: E402,F401  (a fitted best-of-N selector)
