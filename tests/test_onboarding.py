"""Adding a model from its own outcomes on any prompts: `erp fit --model`, the pool prior, and bad input."""

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import expit

from conftest import REGISTRY_MODELS, ZEROEVAL, registry_document
from predictors.onboarding import MIN_LABELS, OnboardedModelPredictor
from predictors.pool import PoolPredictor
from predictors.training import TrainingSet
from router.cli import main

NEWCOMER = "claude-3-5-sonnet-20241022"


def one_model_dataset(target: Path, model: str, n_prompts: int, avoid: Path) -> Path:
    """``model``'s zeroeval outcomes on ``n_prompts`` prompts that are not in the dataset at ``avoid``."""
    taken = set(pd.read_parquet(avoid / "prompts.parquet")["prompt_id"])
    prompts = pd.read_parquet(ZEROEVAL / "prompts.parquet")
    prompts = prompts[~prompts["prompt_id"].isin(taken)].sample(n_prompts, random_state=1)
    outcomes = pd.read_parquet(ZEROEVAL / "outcomes.parquet")
    outcomes = outcomes[outcomes["prompt_id"].isin(prompts["prompt_id"]) & (outcomes["model"] == model)]
    prices = pd.read_csv(ZEROEVAL / "models.csv")
    target.mkdir(parents=True)
    prompts.to_parquet(target / "prompts.parquet", index=False)
    outcomes.to_parquet(target / "outcomes.parquet", index=False)
    prices[prices["model"] == model].to_csv(target / "models.csv", index=False)
    return target


@pytest.fixture
def onboarding_registry(tmp_path: Path, fitted_artifacts: Path) -> Path:
    """The session's fitted pool plus a registry entry for NEWCOMER, whose predictor is not fitted yet."""
    document = registry_document(fitted_artifacts)
    newcomer = dict(document["models"][-1], name=NEWCOMER, litellm_model=f"openai/{NEWCOMER}",
                    predictor=str(tmp_path / "newcomer.joblib"))
    document["models"].append(newcomer)
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_model_joins_from_its_outcomes_on_prompts_the_pool_never_saw(
    tmp_path, onboarding_registry, fitted_artifacts, zeroeval_subset, capsys
):
    data = one_model_dataset(tmp_path / "newcomer-data", NEWCOMER, 60, avoid=zeroeval_subset)
    pool_files = sorted(fitted_artifacts.rglob("*.joblib"))
    before = {p: p.read_bytes() for p in pool_files}

    assert main(["fit", "--data", str(data), "--registry", str(onboarding_registry), "--model", NEWCOMER]) == 0
    assert {p: p.read_bytes() for p in pool_files} == before
    assert f"{NEWCOMER}: backend=" in capsys.readouterr().out

    predictor = joblib.load(tmp_path / "newcomer.joblib").predictor
    assert isinstance(predictor, OnboardedModelPredictor)
    assert set(predictor.prior_models_) <= set(REGISTRY_MODELS) and predictor.prior_models_
    assert 0.0 <= predictor.own_weight_ <= 1.0

    fitted = (tmp_path / "newcomer.joblib").read_bytes()
    more = one_model_dataset(tmp_path / "more-data", NEWCOMER, 80, avoid=zeroeval_subset)
    refit = ["fit", "--data", str(more), "--registry", str(onboarding_registry), "--model", NEWCOMER]
    assert main(refit) == 2, "an existing predictor is replaced only when asked"
    assert "already holds a fitted predictor" in capsys.readouterr().err
    assert (tmp_path / "newcomer.joblib").read_bytes() == fitted
    assert main([*refit, "--replace"]) == 0 and (tmp_path / "newcomer.joblib").read_bytes() != fitted
    assert {p: p.read_bytes() for p in pool_files} == before
    capsys.readouterr()

    assert main(["route", "Compute 17 * 23 and explain each step.", "--registry", str(onboarding_registry)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:-1]]
    reward = {row[0]: float(row[1]) for row in rows}
    assert set(reward) == {*REGISTRY_MODELS, NEWCOMER} and 0.0 < reward[NEWCOMER] < 1.0


def test_the_pool_prior_cuts_the_error_of_a_model_added_from_few_labels():
    """Planted: prompts need four skills; each model's success probability is a logistic function of its own
    skill loadings, and the newcomer has pool model m2's loadings, shifted. From 25 labels on new prompts
    (five draws), borrowing from the pool must find m2 and predict the true probabilities clearly better
    than the newcomer's own labels alone."""
    rng = np.random.default_rng(0)
    n_skills, dim = 4, 32
    directions = np.linalg.qr(rng.normal(size=(dim, n_skills)))[0]
    loadings = 1.5 * rng.normal(size=(6, n_skills))

    def prompts(n: int) -> tuple[np.ndarray, np.ndarray]:
        skills = rng.normal(size=(n, n_skills))
        embeddings = skills @ directions.T + 0.1 * rng.normal(size=(n, dim))
        return (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32), skills

    def training(embeddings: np.ndarray, rewards: np.ndarray, models: list[str]) -> TrainingSet:
        n = len(embeddings)
        return TrainingSet(embeddings, np.full(n, 50.0), rewards, np.ones_like(rewards), np.full_like(rewards, np.nan), models)

    embeddings, skills = prompts(1000)
    pool = PoolPredictor(n_members=1, n_jobs=1).fit(training(embeddings, expit(skills @ loadings.T), [f"m{i}" for i in range(6)]))
    test_embeddings, test_skills = prompts(1000)
    test_truth = expit(0.5 + test_skills @ loadings[2])

    errors, borrowed = {True: [], False: []}, []
    for _ in range(5):
        new_embeddings, new_skills = prompts(25)
        labels = rng.binomial(1, expit(0.5 + new_skills @ loadings[2]))[:, None].astype(float)
        for borrow in (True, False):
            pool.add_model("new", training(new_embeddings, labels, ["new"]), borrow_from_pool=borrow)
            predicted = pool.predict(test_embeddings, np.full(1000, 50.0), ["new"]).rewards[:, 0]
            errors[borrow].append(np.mean(np.abs(predicted - test_truth)))
            if borrow:
                borrowed.append(list(pool.model_predictors_["new"].prior_models_))
    assert sum(models[0] == "m2" for models in borrowed) >= 4
    assert np.mean(errors[True]) < 0.08
    assert np.mean(errors[True]) < 0.75 * np.mean(errors[False])


@pytest.mark.parametrize(
    "model, labels, message",
    [
        ("gpt-4o-2024-08-06", 60, f"no outcomes of '{NEWCOMER}'"),
        (NEWCOMER, MIN_LABELS - 1, f"adding a model needs at least {MIN_LABELS}"),
    ],
)
def test_a_dataset_without_enough_of_the_models_outcomes_is_refused(
    tmp_path, onboarding_registry, zeroeval_subset, capsys, model, labels, message
):
    data = one_model_dataset(tmp_path / "data", model, labels, avoid=zeroeval_subset)
    assert main(["fit", "--data", str(data), "--registry", str(onboarding_registry), "--model", NEWCOMER]) == 2
    err = capsys.readouterr().err
    assert message in err and f"fix: collect them with `erp collect --models {NEWCOMER}" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "newcomer.joblib").exists()


def test_a_model_missing_from_the_registry_is_refused(tmp_path, onboarding_registry, zeroeval_subset, capsys):
    data = one_model_dataset(tmp_path / "data", "gemma-2-2b-it", 60, avoid=zeroeval_subset)
    assert main(["fit", "--data", str(data), "--registry", str(onboarding_registry), "--model", "gemma-2-2b-it"]) == 2
    err = capsys.readouterr().err
    assert "no model named 'gemma-2-2b-it'" in err and "fix: use one of them or add it under `models:`" in err
    assert len(err.strip().splitlines()) == 1


def test_routing_gain_scores_where_the_new_model_beats_the_pool_not_its_level():
    from predictors.onboarding import routing_gain

    rng = np.random.default_rng(0)
    nearest = rng.uniform(0.2, 0.8, (4000, 1))  # the pool: the new model's nearest model alone
    truth = np.clip(nearest[:, 0] + rng.normal(0.05, 0.2, 4000), 0.01, 0.99)  # better than it here, worse there
    labels, weights = rng.binomial(1, truth).astype(float), np.ones(4000)
    knows_where = routing_gain(truth, labels, weights, nearest)
    assert knows_where > 0.02
    assert routing_gain(truth + 0.3, labels, weights, nearest) == pytest.approx(knows_where), "a level shift changes nothing"
    shifted_copy = routing_gain(nearest[:, 0] + 0.05, labels, weights, nearest)
    assert abs(shifted_copy) < 0.2 * knows_where, "a shifted copy of the nearest model says nothing about where"
