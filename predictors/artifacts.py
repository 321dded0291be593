"""The file formats of a fitted pool: atomic writes, versioned payloads, clear errors.

The shared featurizer and each model's predictor live in separate files, so fitting
one model rewrites only that model's file. ``PoolPredictor.save`` and ``.load`` are the
callers; a file of another format version is refused with the fix (refit).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import joblib

from predictors.featurizer import PromptFeaturizer
from predictors.model import ModelPredictor

FORMAT_VERSION = 6  # raised whenever a pickled class changes shape; the history is in git


class ArtifactError(ValueError):
    """A predictor file that is missing, corrupt, or fitted for another featurizer."""


@dataclass
class SharedArtifact:
    """The shared file: the featurizer, the encoder it reads, and what every model file must match."""

    featurizer: PromptFeaturizer
    encoder: str
    featurizer_id: str
    default_output_tokens: float
    dataset: str
    calibrated_lambda: float | None = None
    format_version: int = FORMAT_VERSION


@dataclass
class ModelArtifact:
    """One model's file: its predictor and the id of the shared featurizer it was fitted on."""

    model: str
    predictor: ModelPredictor
    featurizer_id: str
    format_version: int = FORMAT_VERSION


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


Artifact = TypeVar("Artifact")


def read_versioned(path: Path, kind: type[Artifact], format_version: int, what: str, fix: str, missing_fix: str | None = None) -> Artifact:
    """The ``kind`` object of ``format_version`` pickled at ``path``; ArtifactError naming the file, the
    problem (missing, unreadable, another kind or format) and the fix (``missing_fix`` for a missing file, if given)."""
    if not path.is_file():
        raise ArtifactError(f"{path}: {what} file not found; fix: {missing_fix or fix}")
    try:
        artifact = joblib.load(path)
    except Exception as exc:  # joblib surfaces pickle, EOF and zlib errors for damaged files
        raise ArtifactError(f"{path}: cannot be read ({type(exc).__name__}); fix: {fix}") from exc
    if not isinstance(artifact, kind) or getattr(artifact, "format_version", None) != format_version:
        raise ArtifactError(f"{path}: not a {what} file of format {format_version}; fix: {fix}")
    return artifact


def _load(path: Path, kind: type[Artifact]) -> Artifact:
    if kind is SharedArtifact:
        return read_versioned(path, kind, FORMAT_VERSION, "shared predictor", "refit the pool: `erp fit --data DIR`")
    return read_versioned(
        path, kind, FORMAT_VERSION, "model predictor", "refit it: `erp fit --data DIR --model NAME` (or the whole pool)",
        missing_fix="run `erp fit --data DIR` (a model added later: `erp fit --data DIR --model NAME`)",
    )


def load_shared(path: Path, encoder: str | None = None) -> SharedArtifact:
    """The shared file at ``path``; given ``encoder``, also refuse one fitted for another encoder."""
    artifact = _load(path, SharedArtifact)
    if encoder is not None and artifact.encoder != encoder:
        raise ArtifactError(
            f"{path}: fitted on {artifact.encoder!r} embeddings, but the registry's embedding is {encoder!r}; "
            "fix: refit the pool with `erp fit --data DIR`"
        )
    return artifact


def load_model(path: Path, shared: SharedArtifact) -> ModelArtifact:
    """The model file at ``path``, refused unless it was fitted on ``shared``'s featurizer."""
    artifact = _load(path, ModelArtifact)
    if artifact.featurizer_id != shared.featurizer_id:
        raise ArtifactError(
            f"{path}: fitted on another shared featurizer than the current one; "
            f"fix: run `erp fit --data DIR --model {artifact.model}`"
        )
    return artifact
