"""The pool predictor: the frozen shared featurizer plus one independent predictor per model.

Used identically by ``erp fit``, ``erp route``, the SDK, the proxy and the simulator.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from predictors import artifacts
from predictors.featurizer import PromptFeaturizer
from predictors.model import ModelPredictor
from predictors.onboarding import OnboardedModelPredictor
from predictors.training import TrainingSet


class PoolPrediction(NamedTuple):
    """Expected rewards and output tokens, each (prompts, models) with models in the order asked for."""

    rewards: np.ndarray
    output_tokens: np.ndarray


class PoolPredictor(BaseEstimator):
    """Shared featurizer + one ``ModelPredictor`` per model, under the scikit-learn estimator contract.

    ``fit`` learns the featurizer on every model's rewards, then each model's predictor on its
    features; ``add_model`` fits one more model's predictor on the frozen featurizer (an
    ``OnboardedModelPredictor`` that borrows from the others), leaving the others untouched. Learned state: ``featurizer_``, ``model_predictors_`` (name -> ModelPredictor),
    ``default_output_tokens_`` (the length assumed for a model the data knows no lengths of and the
    training set states none for), ``featurizer_id_`` (ties model files to their shared file),
    ``dataset_`` and, after ``load``, ``calibrated_lambda_`` (the budget-mode lambda saved with it).
    ``encoder`` names the encoder whose embeddings it reads; ``load`` refuses another.
    """

    def __init__(
        self,
        encoder: str = "minilm",
        backend: str = "auto",
        n_members: int = 5,
        n_jobs: int = 2,
        random_state: int = 0,
        progress: bool = False,
    ) -> None:
        self.encoder = encoder
        self.backend = backend
        self.n_members = n_members
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.progress = progress

    def fit(self, training: TrainingSet) -> "PoolPredictor":
        """Fit the shared featurizer on every model's rewards, then each model's own predictor."""
        self.featurizer_ = PromptFeaturizer(
            n_members=self.n_members, n_jobs=self.n_jobs, random_state=self.random_state
        ).fit(training.embeddings, training.rewards, training.weights, training.categories, training.sources)
        self.featurizer_id_ = uuid.uuid4().hex
        self.dataset_ = training.source
        self.calibrated_lambda_ = None
        self.default_output_tokens_ = training.median_output_tokens()
        reference_rows = np.arange(len(training))  # the reference set is the featurizer's training prompts, in order
        self.model_predictors_ = self._fit_model_predictors(training, reference_rows, self.n_jobs)
        return self

    def add_model(self, name: str, training: TrainingSet, borrow_from_pool: bool = True) -> "PoolPredictor":
        """Fit (or refit) only ``name``'s predictor, from its column of ``training``, on the frozen featurizer.

        Its prompts may be any prompts. With ``borrow_from_pool`` (and other jointly fitted models in the
        pool) it is an ``OnboardedModelPredictor``: its own predictor shrunk toward the nearest pool models,
        so a few hundred labels suffice; without, a plain ``ModelPredictor`` on its labels alone.
        """
        check_is_fitted(self, "featurizer_")
        training = training.select([name])
        reference_rows = self.featurizer_.reference_rows(training.embeddings)
        prior = {m: p for m, p in self.model_predictors_.items() if m != name and isinstance(p, ModelPredictor)}
        if not (borrow_from_pool and prior):
            self.model_predictors_.update(self._fit_model_predictors(training, reference_rows, n_jobs=1))
            return self
        onboarded = OnboardedModelPredictor(
            prior, self.backend, self._default_output_tokens(training)[0], self.featurizer_.layout, random_state=self.random_state
        )
        self.model_predictors_[name] = onboarded.fit(
            self.featurizer_.transform(training.embeddings),
            training.input_tokens,
            training.rewards[:, 0],
            training.weights[:, 0],
            training.output_tokens[:, 0],
            reference_rows,
            self.featurizer_.neighbors(training.embeddings),
        )
        return self

    def _default_output_tokens(self, training: TrainingSet) -> list[float]:
        """Each model's length where its data knows none: the training set's stated one, else the pool's."""
        return [float(training.default_output_tokens.get(m) or self.default_output_tokens_) for m in training.models]

    def _fit_model_predictors(
        self, training: TrainingSet, reference_rows: np.ndarray, n_jobs: int
    ) -> dict[str, ModelPredictor]:
        """Each model's predictor, fitted independently (one column each) in parallel.

        The shared arrays go to the workers as arguments, so joblib memory-maps them once
        instead of pickling them into every task.
        """
        features = self.featurizer_.transform(training.embeddings)
        layout = self.featurizer_.layout
        defaults = self._default_output_tokens(training)
        jobs = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(ModelPredictor(self.backend, defaults[j], layout, random_state=self.random_state).fit)(
                features,
                training.input_tokens,
                training.rewards[:, j],
                training.weights[:, j],
                training.output_tokens[:, j],
                reference_rows,
            )
            for j in range(len(training.models))
        )
        fitted = tqdm(jobs, total=len(training.models), desc="fitting model predictors", disable=not self.progress, leave=False)
        return dict(zip(training.models, fitted))

    def _featurize(self, embeddings: np.ndarray, models: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        check_is_fitted(self, "model_predictors_")
        missing = [m for m in models if m not in self.model_predictors_]
        if missing:
            raise KeyError(f"no fitted predictor for model(s) {', '.join(missing)}")
        return self.featurizer_.transform(embeddings), self.featurizer_.neighbors(embeddings)

    def predict(self, embeddings: np.ndarray, input_tokens: np.ndarray, models: list[str]) -> PoolPrediction:
        """Every listed model's expected reward and output tokens on these prompts."""
        features, neighbors = self._featurize(embeddings, models)
        predictors = [self.model_predictors_[m] for m in models]
        rewards = np.column_stack([p.predict_reward(features, input_tokens, neighbors) for p in predictors])
        tokens = np.column_stack([p.predict_output_tokens(features, input_tokens) for p in predictors])
        return PoolPrediction(rewards, tokens)

    def predict_parts(self, embeddings: np.ndarray, input_tokens: np.ndarray, models: list[str]) -> dict[str, np.ndarray]:
        """Each part of the expected reward as (prompts, len(models)), NaN for a model without that part: for ablations."""
        features, neighbors = self._featurize(embeddings, models)
        per_model = [self.model_predictors_[m].predict_parts(features, input_tokens, neighbors) for m in models]
        names = dict.fromkeys(name for parts in per_model for name in parts)
        absent = np.full(len(features), np.nan)
        return {name: np.column_stack([parts.get(name, absent) for parts in per_model]) for name in names}

    def model_default_output_tokens(self, models: list[str]) -> np.ndarray:
        """Each model's assumed output length where a length is unknown (its fitted length predictor's default)."""
        check_is_fitted(self, "model_predictors_")
        return np.array([self.model_predictors_[m].default_output_tokens_ for m in models])

    def save(
        self, model_paths: Mapping[str, Path], shared_path: Path | None = None, calibrated_lambda: float | None = None
    ) -> None:
        """Write each named model's predictor file and, given ``shared_path``, the shared file; each write is atomic.

        Writing only a model's file (no ``shared_path``) is how a model joins: no other file changes.
        """
        check_is_fitted(self, "model_predictors_")
        for name, path in model_paths.items():
            artifacts.save(artifacts.ModelArtifact(name, self.model_predictors_[name], self.featurizer_id_), path)
        if shared_path is not None:
            shared = artifacts.SharedArtifact(
                self.featurizer_, self.encoder, self.featurizer_id_, self.default_output_tokens_, self.dataset_, calibrated_lambda
            )
            artifacts.save(shared, shared_path)

    @classmethod
    def load(cls, shared_path: Path, model_paths: Mapping[str, Path], encoder: str) -> "PoolPredictor":
        """The pool saved at ``shared_path`` with the named models' predictors; ArtifactError for a missing,
        damaged or outdated file, a model file of another featurizer, or a pool fitted for another encoder."""
        shared = artifacts.load_shared(shared_path, encoder)
        pool = cls(encoder=shared.encoder)
        pool.featurizer_ = shared.featurizer
        pool.featurizer_id_ = shared.featurizer_id
        pool.default_output_tokens_ = shared.default_output_tokens
        pool.dataset_ = shared.dataset
        pool.calibrated_lambda_ = shared.calibrated_lambda
        pool.model_predictors_ = {name: artifacts.load_model(path, shared).predictor for name, path in model_paths.items()}
        return pool
