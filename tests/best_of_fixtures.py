"""A best-of-N selector and registry shared by the stub-upstream tests and the local-model test."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from serving_fixtures import UPSTREAM_KEY_ENV

from conftest import registry_document
from predictors.selector import TokenRewardSelector, save_selector
from predictors.token_features import LogprobFeatures

MODEL = "gpt-4o-mini-2024-07-18"


def _content(words: int, probability: float) -> list[dict]:
    top = [{"token": "w", "logprob": math.log(probability)}, {"token": "~", "logprob": math.log(1 - probability)}]
    return [{"token": "w", "logprob": math.log(probability), "top_logprobs": top} for _ in range(words)]


@pytest.fixture(scope="session")
def confidence_selector(tmp_path_factory) -> Path:
    """A logprob selector that learned 'confident answers are right' from planted examples."""
    rng = np.random.default_rng(0)
    source = LogprobFeatures(top_k=2)
    probabilities = rng.uniform(0.05, 0.95, 120)
    answers = [source.for_content(_content(int(rng.integers(1, 6)), p)) for p in probabilities]
    selector = TokenRewardSelector(random_state=0).fit(answers, (probabilities > 0.5).astype(int), source.describe())
    path = tmp_path_factory.mktemp("selector") / "confidence.joblib"
    save_selector(selector, path)
    return path


def best_of_registry(artifacts: Path, selector: Path, api_base: str) -> dict:
    document = registry_document(artifacts, api_base=api_base, api_key_env=UPSTREAM_KEY_ENV)
    mini = next(m for m in document["models"] if m["name"] == MODEL)
    predictor = mini.pop("predictor")  # the arms reuse the model's fitted predictor file
    mini["arms"] = [
        {"name": "plain", "predictor": predictor},
        {"name": "best4", "predictor": predictor, "best_of": 4, "selector": str(selector)},
        {"name": "best3", "predictor": predictor, "best_of": 3, "selector": str(selector), "best_of_sampling": "calls"},
    ]
    return document
