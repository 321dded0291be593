"""The K-fold simulation end to end: embed once, run every fold, and summarize the folds into a ``Report``."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
from tqdm.auto import tqdm

from predictors.dataset import RoutingDataset
from predictors.embedding import Encoder
from router.simulation.folds import ERP, Fold, SimulationConfig, fold_splits, run_fold, simulation_lambdas
from router.simulation.metrics import (
    ReferencePoints,
    apgr,
    cost_to_match_best,
    reference_points,
    reward_at_best_cost,
)
from router.simulation.report import (
    FrontierPoint,
    Holdout,
    PolicyMetrics,
    PredictorQuality,
    ReferenceModels,
    Report,
    SingleModel,
    Timing,
)

def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None and np.isfinite(v)]
    if not known:
        return None, None
    return float(np.mean(known)), float(np.std(known))


def _policy_metrics(frontiers: list[np.ndarray], refs: list[ReferencePoints]) -> PolicyMetrics:
    per_fold = [
        (apgr(f[:, 0], f[:, 1], r), cost_to_match_best(f[:, 0], f[:, 1], r), reward_at_best_cost(f[:, 0], f[:, 1], r))
        for f, r in zip(frontiers, refs)
    ]
    apgr_mean, apgr_std = _mean_std([p[0] for p in per_fold])
    match_mean, match_std = _mean_std([p[1] for p in per_fold])
    reward_mean, reward_std = _mean_std([p[2] for p in per_fold])
    return PolicyMetrics(
        apgr=apgr_mean,
        apgr_std=apgr_std,
        apgr_folds=[float(p[0]) for p in per_fold],
        cost_to_match_best=match_mean,
        cost_to_match_best_std=match_std,
        cost_to_match_best_folds=sum(p[1] is not None for p in per_fold),
        reward_at_best_cost=reward_mean,
        reward_at_best_cost_std=reward_std,
    )


def _points(frontiers: list[np.ndarray], lambdas: np.ndarray) -> list[FrontierPoint]:
    mean = np.mean(frontiers, axis=0)
    return [FrontierPoint(**{"lambda": float(l), "cost_usd": float(c), "reward": float(r)}) for l, (c, r) in zip(lambdas, mean)]


def _predictor_quality(qualities: list[dict], backends: list[tuple[str, dict[str, float]]]) -> PredictorQuality:
    summary = {}
    for key in ("spearman", "roc_auc", "brier", "ece", "log_loss"):
        summary[key], summary[f"{key}_std"] = _mean_std([q[key] for q in qualities])
    counts = Counter(b[0] for b in backends)
    cv_names = {name for _, cv in backends for name in cv}
    cv = {name: float(np.mean([b[1][name] for b in backends if name in b[1]])) for name in sorted(cv_names)}
    return PredictorQuality(**summary, backend=counts.most_common(1)[0][0], backend_counts=dict(counts), cv_log_loss=cv)


def simulate(data: RoutingDataset, config: SimulationConfig, encoder: Encoder | None = None, progress: bool = True) -> Report:
    """Run the K-fold protocol of ../shared/README.md and return the report."""
    started = time.perf_counter()
    encoder = encoder or Encoder(config.encoder)
    embeddings = encoder.encode(data.texts, progress=progress)
    embedded = time.perf_counter()
    lambdas = simulation_lambdas(data, config.n_lambdas)
    folds: list[Fold] = []
    for train, test in tqdm(fold_splits(data, config.folds, config.seed), desc="folds", disable=not progress):
        folds.append(run_fold(data, embeddings, train, test, lambdas, config))
    refs = [reference_points(f.single[:, 0], f.single[:, 1]) for f in folds]
    single_mean = np.mean([f.single for f in folds], axis=0)
    single_std = np.std([f.single for f in folds], axis=0)
    policies = list(folds[0].frontiers)
    single_frontiers = [f.single for f in folds]
    report = Report(
        dataset=data.source,
        n_prompts=len(data.prompts),
        models=data.models,
        folds=config.folds,
        seed=config.seed,
        encoder=encoder.name,
        backend=config.backend,
        reference=ReferenceModels(
            cheapest=data.models[int(np.argmin(single_mean[:, 0]))], best_single=data.models[int(np.argmax(single_mean[:, 1]))]
        ),
        summary=_policy_metrics([f.frontiers[ERP] for f in folds], refs),
        baselines={
            **{p: _policy_metrics([f.frontiers[p] for f in folds], refs) for p in policies if p != ERP},
            "single_models": _policy_metrics(single_frontiers, refs),
        },
        single_models={
            m: SingleModel(cost_usd=single_mean[j, 0], cost_usd_std=single_std[j, 0], reward=single_mean[j, 1], reward_std=single_std[j, 1])
            for j, m in enumerate(data.models)
        },
        predictors={m: _predictor_quality([f.quality[m] for f in folds], [f.backends[m] for f in folds]) for m in data.models},
        frontiers={p: _points([f.frontiers[p] for f in folds], lambdas) for p in policies},
        timing=Timing(embedding_s=embedded - started, folds_s=0.0, total_s=0.0),
    )
    if config.holdout_model:
        report.holdout = Holdout(
            model=config.holdout_model,
            before=_policy_metrics([f.holdout_frontiers["before"] for f in folds], refs),
            after=_policy_metrics([f.holdout_frontiers["after"] for f in folds], refs),
            predictor=_predictor_quality([f.holdout_quality for f in folds], [f.holdout_backend for f in folds]),
            frontiers={k: _points([f.holdout_frontiers[k] for f in folds], lambdas) for k in ("before", "after")},
        )
    finished = time.perf_counter()
    report.timing = Timing(embedding_s=embedded - started, folds_s=finished - embedded, total_s=finished - started)
    return report
