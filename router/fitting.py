"""``erp fit``: fit the whole pool, or add one model to an already-fitted pool.

Adding a model fits only its own predictor on the frozen shared featurizer, from its outcomes on any
prompts, borrowing strength from the pool's other predictors, and writes only its own file; every other
artifact stays byte-identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from predictors.dataset import DatasetError, RoutingDataset, load_dataset
from predictors.embedding import Encoder
from predictors.model import ModelPredictor
from predictors.onboarding import MIN_LABELS, OnboardedModelPredictor
from predictors.pool import PoolPredictor
from predictors.training import TrainingSet
from router.policy import call_costs, lambda_for_budget
from router.registry import ModelEntry, Registry, RegistryError, load_registry


def _check_models(registry: Registry, data: RoutingDataset, entries: list[ModelEntry]) -> None:
    missing = [e.name for e in entries if e.name not in data.models]
    if missing:
        index = registry.models.index(registry.entry(missing[0]))
        raise RegistryError(
            f"{registry.source}: key 'models[{index}].name': model {missing[0]!r} has no outcomes in {data.source}; "
            "fix: set enabled: false for it, or collect data for it (dataset models: "
            f"{', '.join(data.models[:8])}{', ...' if len(data.models) > 8 else ''})"
        )


def _training_set(registry: Registry, data: RoutingDataset, entries: list[ModelEntry]) -> TrainingSet:
    """These registry models' columns of the dataset, embedded with the registry's encoder."""
    embeddings = Encoder(registry.embedding).encode(data.texts, progress=True)
    defaults = {e.name: e.default_output_tokens for e in entries if e.default_output_tokens}
    return TrainingSet.from_dataset(data, embeddings, models=[e.name for e in entries], default_output_tokens=defaults)


def _check_labels(data: RoutingDataset, model: str) -> None:
    """A model joins from its own outcomes: the dataset must hold at least MIN_LABELS prompts of them."""
    fix = f"fix: collect them with `erp collect --models {model} --limit N --out DIR`, then pass --data DIR"
    if model not in data.models:
        held = ", ".join(data.models[:5]) + (", ..." if len(data.models) > 5 else "")
        raise DatasetError(f"{data.source}: no outcomes of {model!r} (it holds {held}); {fix}")
    labelled = int((data.sample_counts[:, data.models.index(model)] > 0).sum())
    if labelled < MIN_LABELS:
        raise DatasetError(
            f"{data.source}: {labelled} prompt(s) with outcomes of {model!r}; adding a model needs at least "
            f"{MIN_LABELS} (a few hundred are best); {fix}, N >= {MIN_LABELS}"
        )


def _calibrated_lambda(registry: Registry, pool: PoolPredictor, training: TrainingSet) -> float | None:
    """Budget mode: the lambda whose routing meets the registry's target mean cost on the training prompts."""
    if registry.policy.target_mean_cost_usd is None:
        return None
    rewards, tokens = pool.predict(training.embeddings, training.input_tokens, training.models)
    costs = call_costs(training.input_tokens, tokens, registry.usd_per_token(registry.enabled))
    budget = lambda_for_budget(rewards, costs, registry.policy.target_mean_cost_usd)
    status = "met" if budget.achievable else "NOT achievable even with the cheapest models"
    print(
        f"budget mode: target {budget.target_mean_cost:g} USD/request {status}; "
        f"lambda={budget.lambda_:.6g} gives {budget.mean_cost:.6g} USD/request on {len(training)} prompts"
    )
    return budget.lambda_


def fit_all(registry_path: Path, data_dir: Path, backend: str = "auto", seed: int = 0) -> None:
    """Fit the shared featurizer on every enabled model, then each model's predictor; write all artifacts."""
    registry = load_registry(registry_path)
    data = load_dataset(data_dir)
    _check_models(registry, data, registry.enabled)
    registry.check_fit_targets([e.name for e in registry.enabled], shared=True)
    training = _training_set(registry, data, registry.enabled)
    pool = PoolPredictor(registry.embedding, backend, random_state=seed, progress=True).fit(training)
    model_paths = {e.name: registry.path_of(e.predictor) for e in registry.enabled}
    shared_path = registry.path_of(registry.shared_predictor)
    pool.save(model_paths, shared_path, _calibrated_lambda(registry, pool, training))
    for name, path in model_paths.items():
        print(f"{name:40s} backend={pool.model_predictors_[name].selected_backend:9s} -> {path}")
    print(f"shared featurizer ({registry.embedding}) -> {shared_path}")


def _pool_models(registry: Registry, model: str) -> dict[str, Path]:
    """The predictor files of the registry's other enabled models that exist: the pool a new model borrows from."""
    paths = {e.name: registry.path_of(e.predictor) for e in registry.enabled if e.name != model}
    return {name: path for name, path in paths.items() if path.is_file()}


def _describe(predictor: ModelPredictor | OnboardedModelPredictor) -> str:
    if not isinstance(predictor, OnboardedModelPredictor):
        return f"backend={predictor.selected_backend}, no pool models to borrow from"
    return (
        f"backend={predictor.selected_backend}, prior from {', '.join(predictor.prior_models_)}, "
        f"own predictor's weight {predictor.own_weight_:.1f}"
    )


def fit_one(
    registry_path: Path, data_dir: Path, model: str, backend: str = "auto", seed: int = 0, replace: bool = False
) -> None:
    """Fit only `model`'s predictor on the frozen shared featurizer; no other file is touched.

    ``data_dir`` may hold only this model's outcomes, on any prompts (what `erp collect --models` writes);
    its predictor borrows from the registry's other enabled models' predictor files. A predictor file that
    already exists (the pool's joint fit of this model, or an earlier add) is replaced only with ``replace``.
    """
    registry = load_registry(registry_path)
    entry = registry.entry(model)
    registry.check_fit_targets([entry.name])
    path = registry.path_of(entry.predictor)
    if path.is_dir():
        raise RegistryError(
            f"{registry.source}: key '{registry.key_of(entry.name)}.predictor': {path} "
            "is a folder; fix: name a file, e.g. artifacts/NAME.joblib"
        )
    if path.exists() and not replace:
        raise RegistryError(
            f"{registry.source}: key '{registry.key_of(entry.name)}.predictor': {path} "
            f"already holds a fitted predictor of {entry.name} (from the pool's fit or an earlier add); fix: pass "
            "--replace to refit it from --data alone, or refit the whole pool with `erp fit --data DIR`"
        )
    shared_path = registry.path_of(registry.shared_predictor)
    if not shared_path.is_file():
        raise RegistryError(
            f"{registry.source}: key 'shared_predictor': {shared_path} not found; "
            "fix: fit the pool first with `erp fit --data DIR`"
        )
    data = load_dataset(data_dir)
    _check_labels(data, entry.name)
    pool = PoolPredictor.load(shared_path, _pool_models(registry, entry.name), registry.embedding)
    pool.set_params(backend=backend, random_state=seed)
    training = _training_set(registry, data, [entry])
    pool.add_model(entry.name, training)
    pool.save({entry.name: path})
    predicted = pool.predict(training.embeddings, training.input_tokens, [entry.name]).rewards[:, 0]
    print(
        f"{entry.name}: {_describe(pool.model_predictors_[entry.name])}; mean predicted reward "
        f"{np.mean(predicted):.3f} on {len(predicted)} prompts -> {path}"
    )
