"""A model that joins a fitted pool from a few hundred labels: its own predictor, shrunk toward a prior
borrowed from the pool's models.

The prior is the mean logit of the pool models nearest the new model in reward space (judged on the
prompts it has labels for), shifted (or shifted and scaled) to the new model's rewards. The new model's
own ``ModelPredictor`` is blended with it; how many neighbours (by log-loss) and how much weight the own
predictor gets (by how well the blend ranks the prompts where the new model beats the pool's models) are
chosen by inner cross-validation on the new model's labels. Evidence: benchmarks/RESULTS.md, *Onboarding a model from few labels*.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.model_selection import KFold
from sklearn.utils.validation import check_is_fitted

from predictors.featurizer import FeatureLayout
from predictors.length import DEFAULT_OUTPUT_TOKENS
from predictors.model import ModelPredictor
from predictors.reward import LinearRewardHead, row_log_loss

MIN_LABELS = 10  # fewer labelled prompts cannot support the inner cross-validation
SHIFT_PRIOR_SD = 2.0  # logits: a priori the new model is within a few logits of its nearest pool models
NEAREST_CANDIDATES = (1, 3, 5, 10)
OWN_WEIGHTS = np.linspace(0.0, 1.0, 11)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    return float(np.average(row_log_loss(y, p), weights=w))


def nearest_columns(pool_rewards: np.ndarray, rewards: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """The k pool models (columns of ``pool_rewards``) nearest the new model in reward space: lowest
    sample-weighted log-loss of their predicted rewards against its rewards, nearest first."""
    losses = [_log_loss(rewards, pool_rewards[:, m], weights) for m in range(pool_rewards.shape[1])]
    return np.argsort(losses, kind="stable")[:k]


def routing_gain(estimate: np.ndarray, rewards: np.ndarray, weights: np.ndarray, pool_rewards: np.ndarray) -> float:
    """How well ``estimate`` ranks prompts by the new model's advantage over each pool model: the mean, over the
    pool's models a, of the area between the uplift curve and the diagonal.

    Prompts are sorted by the predicted advantage ``estimate - p_a``; the curve accumulates the realized
    advantage ``reward - p_a`` (the new model's label minus a's expected reward, an unbiased estimate of the
    true advantage at that prompt). A router that sends the new model the prompts at the head of that order
    gains the curve's height; a random order gains the diagonal. It needs labels of the new model only, and
    a constant shift of ``estimate`` leaves it unchanged: it scores where the model is worth calling, not its level."""
    share = weights / weights.mean()
    areas = []
    for a in range(pool_rewards.shape[1]):
        order = np.argsort(-(estimate - pool_rewards[:, a]), kind="stable")
        curve = np.cumsum(((rewards - pool_rewards[:, a]) * share)[order]) / len(order)
        areas.append(curve.mean() - curve[-1] * (len(order) + 1) / (2 * len(order)))
    return float(np.mean(areas))


def mean_logit(pool_rewards: np.ndarray) -> np.ndarray:
    return _logit(pool_rewards).mean(axis=1)


@dataclass(frozen=True)
class LogitCalibration:
    """p = sigmoid(intercept + slope * offset): the pool's offset mapped to the new model's rewards."""

    intercept: float
    slope: float

    def predict(self, offset: np.ndarray) -> np.ndarray:
        return expit(self.intercept + self.slope * offset)


def shift(offset: np.ndarray, rewards: np.ndarray, weights: np.ndarray) -> LogitCalibration:
    """Slope 1 and the intercept a maximizing the weighted log-likelihood plus a N(0, SHIFT_PRIOR_SD^2) prior
    on a: the root of the penalized score equation, which exists even where the labels are all 0 or all 1."""

    def score(intercept: float) -> float:
        return float(np.sum(weights * (rewards - expit(intercept + offset))) - intercept / SHIFT_PRIOR_SD**2)

    bound = 50.0 + SHIFT_PRIOR_SD**2 * float(np.sum(weights))  # score(-bound) > 0 > score(bound)
    return LogitCalibration(brentq(score, -bound, bound), 1.0)


def recalibrate(offset: np.ndarray, rewards: np.ndarray, weights: np.ndarray) -> LogitCalibration:
    """Intercept and slope by (nearly unpenalized) soft-target logistic regression; a shift where the labels do not vary."""
    head = LinearRewardHead(C=100.0).fit(offset[:, None], rewards, weights)
    if head.constant_ is not None:
        return shift(offset, rewards, weights)
    return LogitCalibration(head.intercept_, float(head.coef_[0]))


CALIBRATIONS = {"shift": shift, "recalibrate": recalibrate}


def fit_prior(
    pool_rewards: np.ndarray, rewards: np.ndarray, weights: np.ndarray, k: int, calibration: str
) -> tuple[np.ndarray, LogitCalibration]:
    """The k nearest columns, and the calibration of their mean logit to the new model's rewards."""
    columns = nearest_columns(pool_rewards, rewards, weights, k)
    return columns, CALIBRATIONS[calibration](mean_logit(pool_rewards[:, columns]), rewards, weights)


class OnboardedModelPredictor(BaseEstimator):
    """A new model's predictor on the frozen featurizer: (1 - w) * pool prior + w * its own ModelPredictor.

    ``prior_models`` are the pool's fitted predictors (name -> ModelPredictor). The prior is
    ``calibration_`` of the mean logit of ``prior_models_``, copies of the ``n_nearest_`` nearest ones,
    so the fitted estimator's file is self-contained and serving it costs a few more model
    predictions. The neighbour count and calibration (``calibration_kind_``: a shift, or a fitted
    slope too) are chosen by ``cv``-fold cross-validated log-loss on the labelled prompts with the
    one-standard-error rule (a shift before a fitted slope); the own predictor's weight ``own_weight_`` (w)
    by the cross-validated ``routing_gain`` of the blend (the smaller weight on a tie). ``cv_scores_`` keeps
    every candidate's mean loss, and each weight's gain.
    Output lengths come from the own predictor ``own_``.
    """

    def __init__(
        self,
        prior_models: Mapping[str, ModelPredictor],
        backend: str = "auto",
        default_output_tokens: float = DEFAULT_OUTPUT_TOKENS,
        layout: FeatureLayout | None = None,
        cv: int = 5,
        random_state: int = 0,
    ) -> None:
        self.prior_models = prior_models
        self.backend = backend
        self.default_output_tokens = default_output_tokens
        self.layout = layout
        self.cv = cv
        self.random_state = random_state

    def _own(self) -> ModelPredictor:
        return ModelPredictor(self.backend, self.default_output_tokens, self.layout, random_state=self.random_state)

    def fit(
        self,
        features: np.ndarray,
        input_tokens: np.ndarray,
        rewards: np.ndarray,
        weights: np.ndarray,
        output_tokens: np.ndarray,
        reference_rows: np.ndarray | None = None,
        neighbors: np.ndarray | None = None,
    ) -> "OnboardedModelPredictor":
        """As ``ModelPredictor.fit``, plus each prompt's ``neighbors`` in the reference set, which the pool's estimates read."""
        if not self.prior_models:
            raise ValueError("no pool models to borrow from; fit a plain ModelPredictor instead")
        rows = np.flatnonzero(weights > 0)
        if len(rows) < MIN_LABELS:
            raise ValueError(f"{len(rows)} labelled prompts; onboarding needs at least {MIN_LABELS}")
        labelled = _Labelled(
            features[rows],
            input_tokens[rows],
            rewards[rows],
            weights[rows],
            output_tokens[rows],
            None if reference_rows is None else reference_rows[rows],
            None if neighbors is None else neighbors[rows],
        )
        names = list(self.prior_models)
        pool = _predict_rewards([self.prior_models[n] for n in names], labelled.features, labelled.input_tokens, labelled.neighbors)
        prior_oof, own_oof = self._out_of_fold(labelled, pool)
        y, w = labelled.rewards, labelled.weights
        prior_losses = {candidate: row_log_loss(y, oof) * w / w.mean() for candidate, oof in prior_oof.items()}
        best = _simplest_within_one_se(prior_losses)
        self.n_nearest_, self.calibration_kind_ = best
        blends = {float(a): (1 - a) * prior_oof[best] + a * own_oof for a in OWN_WEIGHTS}
        gains = {a: routing_gain(blend, y, w, pool) for a, blend in blends.items()}
        # The weight is chosen by routing gain, not log-loss: the prior wins on log-loss at every label count,
        # yet routes worse, because a shifted copy of the nearest models says nothing about where the new model
        # beats them (benchmarks/RESULTS.md, *Onboarding a model from few labels*). Labels that never vary say
        # nothing about which prompts are hard, and an own predictor fitted on them is a constant 0 or 1 that
        # no held-out label can contradict: the prior alone stands.
        self.own_weight_ = max(gains, key=lambda a: (gains[a], -a)) if np.ptp(y) > 0 else 0.0
        own_losses = {a: row_log_loss(y, blend) * w / w.mean() for a, blend in blends.items()}
        self.cv_scores_ = {
            "prior": {c: float(l.mean()) for c, l in prior_losses.items()},
            "own_weight": {a: float(l.mean()) for a, l in own_losses.items()},
            "own_weight_routing_gain": gains,
        }
        columns, self.calibration_ = fit_prior(pool, y, w, *best)
        self.prior_models_ = {names[c]: self.prior_models[names[c]] for c in columns}
        self.own_ = self._own().fit(features, input_tokens, rewards, weights, output_tokens, reference_rows)
        return self

    def _out_of_fold(self, labelled: "_Labelled", pool: np.ndarray) -> tuple[dict[tuple[int, str], np.ndarray], np.ndarray]:
        """Out-of-fold predictions on the labelled prompts: the prior per (neighbour count, calibration), and the own predictor."""
        counts = sorted({min(k, pool.shape[1]) for k in NEAREST_CANDIDATES})
        prior_oof = {(k, kind): np.zeros(len(pool)) for kind in CALIBRATIONS for k in counts}  # simplest first
        own_oof = np.zeros(len(pool))
        y, w = labelled.rewards, labelled.weights
        for train, test in KFold(self.cv, shuffle=True, random_state=self.random_state).split(pool):
            for k, kind in prior_oof:
                columns, calibration = fit_prior(pool[train], y[train], w[train], k, kind)
                prior_oof[k, kind][test] = calibration.predict(mean_logit(pool[test][:, columns]))
            part = labelled.take(train)
            own = self._own().fit(part.features, part.input_tokens, part.rewards, part.weights, part.output_tokens, part.reference_rows)
            held_out = labelled.take(test)
            own_oof[test] = own.predict_reward(held_out.features, held_out.input_tokens, held_out.neighbors)
        return prior_oof, own_oof

    def predict_parts(
        self, features: np.ndarray, input_tokens: np.ndarray, neighbors: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """'prior' (the recalibrated nearest pool models) and 'own' (the own predictor); the reward blends them by ``own_weight_``."""
        check_is_fitted(self, "own_")
        pool = _predict_rewards(list(self.prior_models_.values()), features, input_tokens, neighbors)
        return {"prior": self.calibration_.predict(mean_logit(pool)), "own": self.own_.predict_reward(features, input_tokens, neighbors)}

    def predict_reward(self, features: np.ndarray, input_tokens: np.ndarray, neighbors: np.ndarray | None = None) -> np.ndarray:
        parts = self.predict_parts(features, input_tokens, neighbors)
        return (1 - self.own_weight_) * parts["prior"] + self.own_weight_ * parts["own"]

    def predict_output_tokens(self, features: np.ndarray, input_tokens: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "own_")
        return self.own_.predict_output_tokens(features, input_tokens)

    @property
    def default_output_tokens_(self) -> float:
        check_is_fitted(self, "own_")
        return self.own_.default_output_tokens_

    @property
    def selected_backend(self) -> str:
        check_is_fitted(self, "own_")
        return self.own_.selected_backend

    @property
    def cv_log_loss(self) -> dict[str, float]:
        """The own predictor's backend selection losses (see ``cv_scores_`` for the prior's and the blend's)."""
        check_is_fitted(self, "own_")
        return self.own_.cv_log_loss


def _simplest_within_one_se(losses: dict) -> object:
    """The first (simplest) candidate whose mean per-row loss is within one standard error of the best's
    (of the per-row difference): the one-standard-error rule, so that a more flexible choice must earn its place."""
    best = min(losses, key=lambda c: losses[c].mean())
    for candidate, loss in losses.items():
        difference = loss - losses[best]
        if difference.mean() <= difference.std() / np.sqrt(len(difference)):
            return candidate
    return best


def _predict_rewards(
    models: list[ModelPredictor], features: np.ndarray, input_tokens: np.ndarray, neighbors: np.ndarray | None
) -> np.ndarray:
    """(prompts, models) expected rewards of these pool models."""
    return np.column_stack([m.predict_reward(features, input_tokens, neighbors) for m in models])


@dataclass(frozen=True)
class _Labelled:
    """The new model's labelled prompts: what its own predictor is fitted on, row-aligned."""

    features: np.ndarray
    input_tokens: np.ndarray
    rewards: np.ndarray
    weights: np.ndarray
    output_tokens: np.ndarray
    reference_rows: np.ndarray | None
    neighbors: np.ndarray | None

    def take(self, rows: np.ndarray) -> "_Labelled":
        return _Labelled(*(None if value is None else value[rows] for value in (getattr(self, f.name) for f in fields(self))))
