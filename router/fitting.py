"""``erp fit``: fit the whole pool, or add one model to an already-fitted pool.

Adding a model fits only its own predictor on the frozen shared featurizer and
writes only its own file; every other artifact stays byte-identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from predictors import artifacts
from predictors.dataset import RoutingDataset, load_dataset
from predictors.embedding import Encoder
from predictors.pool import fit_model_predictors, fit_pool, typical_output_tokens
from router.policy import call_costs, lambda_for_budget
from router.registry import ModelEntry, Registry, RegistryError, load_registry


def _columns(registry: Registry, data: RoutingDataset, entries: list[ModelEntry]) -> list[int]:
    missing = [e.name for e in entries if e.name not in data.models]
    if missing:
        index = registry.models.index(registry.entry(missing[0]))
        raise RegistryError(
            f"{registry.source}: key 'models[{index}].name': model {missing[0]!r} has no outcomes in {data.source}; "
            "fix: set enabled: false for it, or collect data for it (dataset models: "
            f"{', '.join(data.models[:8])}{', ...' if len(data.models) > 8 else ''})"
        )
    return [data.models.index(e.name) for e in entries]


def fit_all(registry_path: Path, data_dir: Path, backend: str = "auto", seed: int = 0) -> None:
    """Fit the shared featurizer on every enabled model, then each model's predictor; write all artifacts."""
    registry = load_registry(registry_path)
    data = load_dataset(data_dir)
    entries = registry.enabled
    columns = _columns(registry, data, entries)
    embeddings = Encoder(registry.embedding).encode(data.texts, progress=True)
    pool = fit_pool(
        embeddings,
        data.input_tokens,
        data.rewards[:, columns],
        data.sample_counts[:, columns],
        data.output_tokens[:, columns],
        [e.name for e in entries],
        categories=data.categories,
        sources=data.sources,
        fallback_tokens=[e.default_output_tokens for e in entries],
        backend=backend,
        random_state=seed,
        progress=True,
    )
    calibrated = None
    if registry.policy.target_mean_cost_usd is not None:
        rewards, tokens = pool.predict(embeddings, data.input_tokens, [e.name for e in entries])
        costs = call_costs(data.input_tokens, tokens, registry.usd_per_token(entries))
        budget = lambda_for_budget(rewards, costs, registry.policy.target_mean_cost_usd)
        calibrated = budget.lambda_
        status = "met" if budget.achievable else "NOT achievable even with the cheapest models"
        print(
            f"budget mode: target {budget.target_mean_cost:g} USD/request {status}; "
            f"lambda={budget.lambda_:.6g} gives {budget.mean_cost:.6g} USD/request on {len(data.prompts)} prompts"
        )
    featurizer_id = artifacts.new_featurizer_id()
    shared = artifacts.SharedArtifact(
        pool.featurizer,
        registry.embedding,
        featurizer_id,
        typical_output_tokens(data.output_tokens[:, columns]),
        str(data_dir),
        calibrated,
    )
    for entry in entries:
        artifacts.save(
            artifacts.ModelArtifact(entry.name, pool.heads[entry.name], featurizer_id), registry.path_of(entry.predictor)
        )
    artifacts.save(shared, registry.path_of(registry.shared_predictor))
    for entry in entries:
        head = pool.heads[entry.name]
        print(f"{entry.name:40s} backend={head.selected_backend:9s} -> {registry.path_of(entry.predictor)}")
    print(f"shared featurizer ({registry.embedding}) -> {registry.path_of(registry.shared_predictor)}")


def fit_one(registry_path: Path, data_dir: Path, model: str, backend: str = "auto", seed: int = 0) -> None:
    """Fit only `model`'s predictor on the frozen shared featurizer; no other file is touched."""
    registry = load_registry(registry_path)
    entry = registry.entry(model)
    shared_path = registry.path_of(registry.shared_predictor)
    if not shared_path.is_file():
        raise RegistryError(
            f"{registry.source}: key 'shared_predictor': {shared_path} not found; "
            "fix: fit the pool first with `erp fit --data DIR`"
        )
    shared = artifacts.load_shared(shared_path)
    if shared.encoder != registry.embedding:
        raise RegistryError(
            f"{registry.source}: key 'embedding' is {registry.embedding!r} but the shared featurizer used "
            f"{shared.encoder!r}; fix: refit the pool with `erp fit --data DIR`"
        )
    data = load_dataset(data_dir)
    [column] = _columns(registry, data, [entry])
    embeddings = Encoder(registry.embedding).encode(data.texts, progress=True)
    features = shared.featurizer.transform(embeddings)
    fallback = entry.default_output_tokens or shared.typical_output_tokens
    heads = fit_model_predictors(
        features,
        data.input_tokens,
        data.rewards[:, [column]],
        data.sample_counts[:, [column]],
        data.output_tokens[:, [column]],
        [entry.name],
        [float(fallback)],
        shared.featurizer.layout,
        shared.featurizer.reference_rows(embeddings),
        backend,
        seed,
        n_jobs=1,
    )
    artifacts.save(artifacts.ModelArtifact(entry.name, heads[entry.name], shared.featurizer_id), registry.path_of(entry.predictor))
    predicted = heads[entry.name].predict_reward(features, data.input_tokens, shared.featurizer.neighbors(embeddings))
    print(
        f"{entry.name}: backend={heads[entry.name].selected_backend}, mean predicted reward {np.mean(predicted):.3f} "
        f"on {len(predicted)} prompts -> {registry.path_of(entry.predictor)}"
    )
