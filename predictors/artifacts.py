"""Saving and loading fitted predictors: atomic writes, versioned payloads, clear errors.

The shared featurizer and each model's predictor live in separate files, so fitting
one model rewrites only that model's file.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import joblib

from predictors.featurizer import PromptFeaturizer
from predictors.pool import ModelPredictor

FORMAT_VERSION = 5  # 2: bagged members, a reward head each; 3: smeared length head, reference prompts; 4: reference mean; 5: sources


class ArtifactError(ValueError):
    """A predictor file that is missing, corrupt, or fitted for another featurizer."""


@dataclass
class SharedArtifact:
    featurizer: PromptFeaturizer
    encoder: str
    featurizer_id: str
    typical_output_tokens: float
    dataset: str
    calibrated_lambda: float | None = None
    format_version: int = FORMAT_VERSION


@dataclass
class ModelArtifact:
    model: str
    predictor: ModelPredictor
    featurizer_id: str
    format_version: int = FORMAT_VERSION


def new_featurizer_id() -> str:
    return uuid.uuid4().hex


def save(artifact: SharedArtifact | ModelArtifact, path: Path) -> None:
    """Write to a temporary file beside the target, then rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        joblib.dump(artifact, staging)
        os.chmod(staging, 0o644)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


def _load(path: Path, kind: type) -> SharedArtifact | ModelArtifact:
    if not path.is_file():
        raise ArtifactError(f"{path}: predictor file not found; fix: run `erp fit --data DIR`")
    try:
        artifact = joblib.load(path)
    except Exception as exc:  # joblib surfaces pickle, EOF and zlib errors for damaged files
        raise ArtifactError(f"{path}: cannot be read ({type(exc).__name__}); fix: refit it with `erp fit`") from exc
    if not isinstance(artifact, kind) or artifact.format_version != FORMAT_VERSION:
        raise ArtifactError(f"{path}: not a {kind.__name__} of format {FORMAT_VERSION}; fix: refit it with `erp fit`")
    return artifact


def load_shared(path: Path) -> SharedArtifact:
    return _load(path, SharedArtifact)


def load_model(path: Path, shared: SharedArtifact) -> ModelArtifact:
    artifact = _load(path, ModelArtifact)
    if artifact.featurizer_id != shared.featurizer_id:
        raise ArtifactError(
            f"{path}: fitted on another shared featurizer than the current one; "
            f"fix: run `erp fit --data DIR --model {artifact.model}`"
        )
    return artifact
