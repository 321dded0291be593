"""A best-of-N answer selector: the gated linear token reward of *Reward Inside the Model* (SWIFT, arXiv 2505.12225).

Each answer is a (T, D) array, one feature vector x_t per answer token (hidden states of a local model, or
features of the returned log-probabilities: ``predictors/token_features.py``). One ``Linear(D, 2)`` maps x_t to a
gate logit a_t and a token reward r_t; the answer's score is the gated mean ``s = sum_t g_t r_t / sum_t g_t`` with
``g_t = sigmoid(a_t)``, a logit of the answer being correct, trained with binary cross-entropy on 0/1 correctness.
It has 2 * D + 2 parameters. Best-of-N keeps the candidate with the highest score (``select``).

Answers are batched with padding and a mask; padded positions get zero gate weight, so an answer's score does not
depend on the batch it is scored in. ``save_selector`` / ``load_selector`` persist a fitted selector.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from predictors import artifacts
from predictors.torch_utils import seeded_generator, torch_threads, train_with_early_stopping, validation_split

SELECTOR_FORMAT_VERSION = 1
REFIT_HINT = "refit the selector (erp fit-selector)"

Answers = Sequence[np.ndarray]


def check_answers(X: Answers, n_features: int | None = None) -> list[np.ndarray]:
    """The answers as float32 (T_i, D) arrays, or ValueError saying what is wrong with which answer.

    Every answer needs at least one token, finite values and the same width D (``n_features`` when given: the
    width the selector was fitted on).
    """
    if len(X) == 0:
        raise ValueError("no answers: X must hold at least one (tokens, features) array")
    answers = [np.asarray(answer, dtype=np.float32) for answer in X]
    for i, answer in enumerate(answers):
        if answer.ndim != 2:
            raise ValueError(f"answer {i} has shape {answer.shape}; each answer must be a 2-d (tokens, features) array")
        if answer.shape[0] == 0:
            raise ValueError(f"answer {i} has no tokens; each answer needs at least one token")
        if not np.isfinite(answer).all():
            raise ValueError(f"answer {i} holds NaN or infinite features")
    widths = sorted({answer.shape[1] for answer in answers})
    if len(widths) > 1:
        raise ValueError(f"answers have different feature widths {widths}; all must come from one feature source")
    if n_features is not None and widths[0] != n_features:
        raise ValueError(
            f"answers have {widths[0]} features per token, but the selector was fitted on {n_features}; "
            f"fix: score with the feature source it was fitted on, or {REFIT_HINT} on features from this source"
        )
    return answers


def _check_labels(y: Sequence[int], n_answers: int) -> np.ndarray:
    labels = np.asarray(y, dtype=np.float64).ravel()
    if len(labels) != n_answers:
        raise ValueError(f"{n_answers} answers but {len(labels)} labels; give one 0/1 correctness label per answer")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (wrong) or 1 (right)")
    if np.ptp(labels) == 0:
        raise ValueError(f"every label is {int(labels[0])}: the selector needs right and wrong answers to learn from")
    return labels.astype(np.float32)


def gated_scores(net: nn.Linear, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scores (B,) of padded answers ``tokens`` (B, T, D) whose real tokens are ``mask`` (B, T).

    ``g_t / sum g_t`` is a softmax over log-sigmoid gates, which stays finite when every gate is tiny; padded
    positions get -inf, so they carry exactly zero weight.
    """
    gate_logit, reward = net(tokens).unbind(-1)
    log_gate = nn.functional.logsigmoid(gate_logit).masked_fill(~mask, -torch.inf)
    return (torch.softmax(log_gate, dim=1) * reward.masked_fill(~mask, 0.0)).sum(dim=1)


def _padded(answers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(answer) for answer in answers])
    mask = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]
    return pad_sequence(answers, batch_first=True), mask


class TokenRewardSelector(BaseEstimator):
    """SWIFT's gated linear token reward (module docstring), trained with AdamW and early stopping.

    Features are standardized with the mean and scale of the training tokens. A tenth of the answers (at least
    one) is held out; training stops when its loss has not improved for ``patience`` epochs, and the best
    weights are kept. ``weight_decay`` is AdamW's decoupled L2 penalty. Torch runs one thread: the operations are
    small, and on a busy machine spare threads only wait on each other (benchmarks/RESULTS.md, *Best-of-N selector*).
    """

    def __init__(
        self,
        weight_decay: float = 1e-2,
        learning_rate: float = 1e-2,
        batch_size: int = 64,
        max_epochs: int = 200,
        patience: int = 10,
        random_state: int = 0,
    ) -> None:
        self.weight_decay = weight_decay
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.random_state = random_state

    def fit(self, X: Answers, y: Sequence[int], feature_source: dict | None = None) -> "TokenRewardSelector":
        """Fit on answers ``X`` (each (T_i, D)) with 0/1 correctness ``y``; ``feature_source`` is the source's
        ``describe()``, kept as ``feature_source_`` so a caller can check it scores with the same source."""
        answers = check_answers(X)
        labels = torch.as_tensor(_check_labels(y, len(answers)))
        scaler = StandardScaler()
        for answer in answers:  # one answer at a time: hidden-state tokens stacked would be a second copy of X
            scaler.partial_fit(answer)
        self.n_features_in_ = scaler.n_features_in_
        self.mean_, self.scale_ = scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32)
        tokens = [torch.as_tensor(answer) for answer in self._standardized(answers)]
        generator = seeded_generator(self.random_state)
        val, train = validation_split(len(tokens), generator)
        with torch_threads(1):
            torch.manual_seed(self.random_state)
            net = self._train(nn.Linear(self.n_features_in_, 2), tokens, labels, train, val, generator)
        self.coef_ = net.weight.detach().numpy().copy()  # row 0: gate, row 1: token reward
        self.intercept_ = net.bias.detach().numpy().copy()
        self.feature_source_ = dict(feature_source or {})
        self.n_parameters_ = int(self.coef_.size + self.intercept_.size)
        self.classes_ = np.array([0, 1])
        return self

    def _train(
        self,
        net: nn.Linear,
        tokens: list[torch.Tensor],
        labels: torch.Tensor,
        train: torch.Tensor,
        val: torch.Tensor,
        generator: torch.Generator,
    ) -> nn.Linear:
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)

        def loss_on(rows: torch.Tensor) -> torch.Tensor:
            padded, mask = _padded([tokens[i] for i in rows.tolist()])
            return nn.functional.binary_cross_entropy_with_logits(gated_scores(net, padded, mask), labels[rows])

        def run_epoch() -> None:
            for batch in train[torch.randperm(len(train), generator=generator)].split(self.batch_size):
                optimizer.zero_grad()
                loss_on(batch).backward()
                optimizer.step()

        def validation_loss() -> float:
            batches = val.split(self.batch_size)
            return float(sum(loss_on(batch).item() * len(batch) for batch in batches) / len(val))

        return train_with_early_stopping(
            net, run_epoch, validation_loss, self.max_epochs, self.patience, min_delta=1e-5
        )

    def _standardized(self, answers: list[np.ndarray]) -> list[np.ndarray]:
        return [(answer - self.mean_) / self.scale_ for answer in answers]

    def decision_function(self, X: Answers) -> np.ndarray:
        """Each answer's score (n,): the logit of it being correct; higher is better."""
        check_is_fitted(self, "coef_")
        answers = self._standardized(check_answers(X, self.n_features_in_))
        net = nn.Linear(self.n_features_in_, 2)
        with torch_threads(1), torch.no_grad():
            net.weight.copy_(torch.as_tensor(self.coef_))
            net.bias.copy_(torch.as_tensor(self.intercept_))
            scores = [
                gated_scores(net, *_padded([torch.as_tensor(a) for a in answers[start : start + self.batch_size]]))
                for start in range(0, len(answers), self.batch_size)
            ]
        return torch.cat(scores).numpy().astype(np.float64)

    def predict_proba(self, X: Answers) -> np.ndarray:
        """(n, 2): the probability of each answer being wrong, then right."""
        right = expit(self.decision_function(X))
        return np.column_stack([1.0 - right, right])

    def predict(self, X: Answers) -> np.ndarray:
        """1 where an answer is more likely right than wrong, else 0."""
        return (self.decision_function(X) > 0).astype(int)

    def select(self, X: Answers) -> int:
        """The index of the best-scored candidate answer (the first of equals)."""
        return int(np.argmax(self.decision_function(X)))

    def check_feature_source(self, description: dict) -> None:
        """ValueError unless ``description`` (a source's ``describe()``) is the one the selector was fitted on."""
        check_is_fitted(self, "feature_source_")
        if description != self.feature_source_:
            raise ValueError(
                f"the selector was fitted on features {self.feature_source_}, not {description}; "
                f"fix: {REFIT_HINT} on features from this source"
            )


@dataclass
class SelectorArtifact:
    """A selector's file: the fitted selector and the format it was written in."""

    selector: TokenRewardSelector
    format_version: int = SELECTOR_FORMAT_VERSION


def save_selector(selector: TokenRewardSelector, path: Path) -> None:
    """Write a fitted selector to ``path`` atomically (a reader never sees a half-written file)."""
    check_is_fitted(selector, "coef_")
    artifacts.save(SelectorArtifact(selector), Path(path))


def load_selector(path: Path) -> TokenRewardSelector:
    """The selector saved at ``path``; ArtifactError (a ValueError) if it is missing, damaged or of another format."""
    artifact = artifacts.read_versioned(Path(path), SelectorArtifact, SELECTOR_FORMAT_VERSION, "selector", REFIT_HINT)
    return artifact.selector
