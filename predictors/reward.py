"""Per-model expected-reward heads on the shared prompt features.

Each head follows the scikit-learn estimator contract and is fitted on one model's
expected rewards (mean reward over a prompt's samples, in [0, 1]) weighted by how
many samples back each target. Three backends (logistic, torch MLP, LightGBM) and
an ``auto`` head that picks one per model by cross-validated log-loss (among the linear and LightGBM
heads and their blend).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from torch import nn

from predictors.torch_utils import seeded_generator, torch_threads, train_with_early_stopping, validation_split

EPS = 1e-6


def row_log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy of soft targets y in [0, 1] under predictions p."""
    p = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def weighted_log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    """Cross-entropy weighted by sample counts."""
    return float((w * row_log_loss(y, p)).sum() / w.sum())


def _weights(y: np.ndarray, sample_weight: np.ndarray | None) -> np.ndarray:
    return np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)


class LinearRewardHead(BaseEstimator):
    """Logistic regression on soft targets: each row enters once as a success and once as a failure.

    Inputs are standardized and the solver is Newton-Cholesky, cheap with about fifty features
    (why: benchmarks/RESULTS.md, *Simulation time*); the scaler is folded into ``coef_``.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 500) -> None:
        self.C = C
        self.max_iter = max_iter

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "LinearRewardHead":
        y = np.asarray(y, dtype=np.float64)
        w = _weights(y, sample_weight)
        if np.ptp(y) == 0:
            self.constant_ = float(y.mean())
            return self
        self.constant_ = None
        stacked = np.vstack([X, X])
        labels = np.r_[np.ones(len(y)), np.zeros(len(y))]
        weights = np.r_[w * y, w * (1 - y)]
        keep = weights > 0
        scaler, logistic = make_pipeline(
            StandardScaler(), LogisticRegression(C=self.C, solver="newton-cholesky", max_iter=self.max_iter)
        ).fit(stacked[keep], labels[keep], logisticregression__sample_weight=weights[keep])
        self.coef_ = logistic.coef_[0] / scaler.scale_  # the scaler folded in: serving is one dot product per prompt
        self.intercept_ = float(logistic.intercept_[0] - self.coef_ @ scaler.mean_)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "constant_")
        if self.constant_ is not None:
            return np.full(len(X), self.constant_)
        return expit(np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_)


class MLPRewardHead(BaseEstimator):
    """A one-hidden-layer torch network trained on weighted soft-target cross-entropy."""

    def __init__(
        self,
        hidden: int = 32,
        weight_decay: float = 1e-3,
        learning_rate: float = 1e-2,
        max_epochs: int = 300,
        patience: int = 10,
        random_state: int = 0,
    ) -> None:
        self.hidden = hidden
        self.weight_decay = weight_decay
        self.learning_rate = learning_rate
        self.max_epochs = max_epochs
        self.patience = patience
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "MLPRewardHead":
        x = torch.as_tensor(np.asarray(X, dtype=np.float32))
        t = torch.as_tensor(np.asarray(y, dtype=np.float32))
        w = torch.as_tensor(_weights(y, sample_weight).astype(np.float32))
        val, train = validation_split(len(x), seeded_generator(self.random_state))
        with torch_threads(1):
            torch.manual_seed(self.random_state)
            net = nn.Sequential(nn.Linear(x.shape[1], self.hidden), nn.GELU(), nn.Linear(self.hidden, 1))
            optimizer = torch.optim.AdamW(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)

            def loss_on(rows: torch.Tensor) -> torch.Tensor:
                logits = net(x[rows]).squeeze(1)
                losses = nn.functional.binary_cross_entropy_with_logits(logits, t[rows], reduction="none")
                return (losses * w[rows]).sum() / w[rows].sum()

            def run_epoch() -> None:  # one full-batch step
                optimizer.zero_grad()
                loss_on(train).backward()
                optimizer.step()

            self.net_ = train_with_early_stopping(
                net, run_epoch, lambda: loss_on(val).item(), self.max_epochs, self.patience, min_delta=1e-6
            )
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "net_")
        with torch_threads(1), torch.no_grad():
            logits = self.net_(torch.as_tensor(np.asarray(X, dtype=np.float32))).squeeze(1)
        return torch.sigmoid(logits).numpy().astype(np.float64)


class LightGBMRewardHead(BaseEstimator):
    """Gradient-boosted trees with LightGBM's cross-entropy objective, which accepts soft targets."""

    def __init__(
        self,
        n_estimators: int = 100,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        min_child_samples: int = 50,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "LightGBMRewardHead":
        from lightgbm import LGBMRegressor

        self.model_ = LGBMRegressor(
            objective="cross_entropy",
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            subsample=self.subsample,
            subsample_freq=1,
            colsample_bytree=self.colsample_bytree,
            random_state=self.random_state,
            max_bin=63,
            bin_construct_sample_cnt=2000,  # bin edges from 2,000 rows: a seventh of the fit time saved, same loss
            n_jobs=1,
            verbose=-1,
        )
        self.model_.fit(X, np.asarray(y, dtype=np.float64), sample_weight=_weights(y, sample_weight))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "model_")
        return np.clip(self.model_.booster_.predict(X), 0.0, 1.0)  # the booster: no per-call wrapper overhead


BACKENDS: dict[str, type[BaseEstimator]] = {
    "linear": LinearRewardHead,
    "mlp": MLPRewardHead,
    "lightgbm": LightGBMRewardHead,
}


BLEND = "blend"
BLEND_MEMBERS: tuple[str, ...] = ("linear", "lightgbm")


class BlendRewardHead(BaseEstimator):
    """The equal-weight mean of several backends: often better calibrated than any one of them."""

    def __init__(self, backends: tuple[str, ...] = BLEND_MEMBERS) -> None:
        self.backends = backends

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "BlendRewardHead":
        self.members_ = [BACKENDS[name]().fit(X, y, sample_weight) for name in self.backends]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "members_")
        return np.mean([member.predict(X) for member in self.members_], axis=0)


CANDIDATES: tuple[str, ...] = ("linear", "lightgbm", "mlp", BLEND)  # every backend a head can be given, simplest first
# What ``auto`` chooses among: not the MLP, the slowest backend to fit (a quarter of a simulation's CPU time) and
# the weakest when forced on every model (benchmarks/RESULTS.md, *Choosing the reward backend*, *Simulation time*).
AUTO_CANDIDATES: tuple[str, ...] = ("linear", "lightgbm", BLEND)


def _make(name: str) -> BaseEstimator:
    return BlendRewardHead(BLEND_MEMBERS) if name == BLEND else BACKENDS[name]()


class AutoRewardHead(BaseEstimator):
    """Picks a backend for this one model by cross-validated log-loss, then refits it on every row.

    Candidates are, by default, the linear and LightGBM backends and their blend (whose
    out-of-fold predictions are the mean of theirs, so it costs no extra fits), in order of simplicity. The
    one-standard-error rule picks the simplest candidate whose log-loss is within one
    standard error (of the per-row difference) of the best: a more complex head must
    earn its place. Selection runs on at most ``selection_rows`` training rows.
    """

    def __init__(
        self, candidates: tuple[str, ...] = AUTO_CANDIDATES, cv: int = 3, selection_rows: int = 2000, random_state: int = 0
    ):
        self.candidates = candidates
        self.cv = cv
        self.selection_rows = selection_rows
        self.random_state = random_state

    def _cross_validate(self, X: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row out-of-fold losses (times the row's weight share) for every candidate."""
        rows = np.random.default_rng(self.random_state).permutation(len(y))[: self.selection_rows]
        X, y, w = X[rows], y[rows], w[rows]
        needed = list(dict.fromkeys(name for c in self.candidates for name in (BLEND_MEMBERS if c == BLEND else (c,))))
        out_of_fold = {name: np.zeros(len(y)) for name in needed}
        for train, test in KFold(self.cv, shuffle=True, random_state=self.random_state).split(X):
            for name in needed:
                out_of_fold[name][test] = BACKENDS[name]().fit(X[train], y[train], w[train]).predict(X[test])
        if BLEND in self.candidates:
            out_of_fold[BLEND] = np.mean([out_of_fold[name] for name in BLEND_MEMBERS], axis=0)
        share = w / w.mean()
        return {name: share * row_log_loss(y, out_of_fold[name]) for name in self.candidates}

    def _select(self, losses: dict[str, np.ndarray]) -> str:
        best = min(losses, key=lambda name: losses[name].mean())
        for name in losses:  # candidates are ordered simplest first
            difference = losses[name] - losses[best]
            if difference.mean() <= difference.std() / np.sqrt(len(difference)):
                return name
        return best

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "AutoRewardHead":
        unknown = [c for c in self.candidates if c not in CANDIDATES]
        if unknown or not self.candidates:
            raise ValueError(f"unknown reward backend(s) {unknown}; choose from {', '.join(CANDIDATES)}")
        y = np.asarray(y, dtype=np.float64)
        w = _weights(y, sample_weight)
        losses = self._cross_validate(X, y, w) if len(self.candidates) > 1 else {}
        self.cv_log_loss_ = {name: float(loss.mean()) for name, loss in losses.items()}
        self.backend_ = self._select(losses) if losses else self.candidates[0]
        self.estimator_ = _make(self.backend_).fit(X, y, w)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(X)


def make_reward_head(backend: str, random_state: int = 0) -> BaseEstimator:
    """'auto' selects per model by CV; any other candidate name (a backend, or 'blend') is used for every model."""
    if backend == "auto":
        return AutoRewardHead(random_state=random_state)
    if backend not in CANDIDATES:
        raise ValueError(f"unknown reward backend {backend!r}; choose auto or one of {', '.join(CANDIDATES)}")
    return AutoRewardHead(candidates=(backend,), random_state=random_state)
