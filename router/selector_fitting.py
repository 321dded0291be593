"""``erp fit-selector``: fit a best-of-N selector on a candidate's collected samples and their correctness.

The samples come from ``erp collect`` (``outcomes.parquet`` with each response; ``--logprobs K`` for the
log-probability source). Each answer is featurized as the router will see it when serving: the conversation
with the candidate's system prompt (``dispatch.entry_request``) and the answer's tokens. Labels are
``reward >= 0.5``. The fitted file is what a registry arm names as ``selector:`` next to ``best_of: N``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from predictors.dataset import DatasetError
from predictors.embedding import default_cache_dir
from predictors.selector import TokenRewardSelector, load_selector, save_selector
from predictors.token_features import HiddenStateFeatures, LogprobFeatures, MissingLogprobsError, TokenFeatureSource
from router.collect.prompts import prompt_key, prompt_messages
from router.dispatch import entry_request
from router.registry import ModelEntry, load_registry
from router.schemas import ChatParameters

MIN_PER_CLASS = 5  # right and wrong answers each, below which there is nothing to learn
DEFAULT_LAYERS = [-4, -3, -2, -1]


def feature_cache_dir() -> Path:
    """Where hidden-state features are cached (read at call time: ERP_CACHE_DIR may change between calls)."""
    return default_cache_dir() / "selector-features"


@dataclass(frozen=True)
class SelectorFit:
    """What was fitted on: answers, the share right, and the selector's parameter count."""

    answers: int
    prompts: int
    right: float
    parameters: int


def candidate_samples(data_dir: Path, model: str) -> pd.DataFrame:
    """The collected samples of ``model`` with their prompts: prompt_id, prompt, system, sample, response, reward,
    and where collected output_tokens, cost_usd and logprobs (JSON text or None).

    A conversation that appears under several prompt ids is kept once (its first row in prompts.parquet): collection keys
    samples by content, so the copies carry the very same samples, which would otherwise count twice
    and could sit on both sides of a train/test split."""
    try:
        outcomes = pd.read_parquet(Path(data_dir) / "outcomes.parquet")
        prompts = pd.read_parquet(Path(data_dir) / "prompts.parquet")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{data_dir}: cannot read outcomes.parquet and prompts.parquet ({exc}); fix: pass an `erp collect` --out folder") from None
    if "response" not in outcomes.columns:
        raise DatasetError(f"{data_dir}/outcomes.parquet has no response column; fix: collect it with `erp collect`")
    rows = outcomes[outcomes["model"] == model]
    if rows.empty:
        known = ", ".join(sorted(outcomes["model"].unique()))
        raise DatasetError(f"{data_dir}: no samples of {model!r} (it has {known}); fix: collect that candidate first")
    if "system" not in prompts.columns:
        prompts = prompts.assign(system=None)
    keys = pd.Series([prompt_key(system, prompt) for system, prompt in zip(prompts["system"], prompts["prompt"])])
    prompts = prompts[~keys.duplicated().to_numpy()]
    optional = [c for c in ("output_tokens", "cost_usd", "logprobs") if c in rows.columns]
    columns = ["prompt_id", "sample", "response", "reward", *optional]
    table = rows[columns].merge(prompts[["prompt_id", "prompt", "system"]], on="prompt_id")
    return table.sort_values(["prompt_id", "sample"]).reset_index(drop=True)


def conversation(entry: ModelEntry, prompt: str, system: str | None) -> list[dict]:
    """The messages ``entry`` was called with for this prompt (its own system prompt first), as in collection."""
    return entry_request(entry, prompt_messages(prompt, system), ChatParameters())[0]


def answer_features(source: TokenFeatureSource, entry: ModelEntry, samples: pd.DataFrame) -> list[np.ndarray]:
    """One (tokens, features) array per sample row, in row order. Hidden-state features take a forward pass
    per answer, so they are kept (float16) in the cache folder, keyed by the source, the conversation and the
    answer texts; a rerun, or a study over the same samples, reads them back."""
    if isinstance(source, LogprobFeatures):
        kept = samples["logprobs"] if "logprobs" in samples.columns else pd.Series(None, index=samples.index)
        missing = int(kept.isna().sum())
        if missing:
            raise MissingLogprobsError(
                f"{missing} of {len(samples)} samples hold no log-probabilities",
                f"collect them with `erp collect --logprobs {source.top_k}` (into a new --out folder)",
            )
        try:
            return [source.for_content(json.loads(text), index, item="sample") for index, text in enumerate(kept)]
        except MissingLogprobsError as exc:
            raise MissingLogprobsError(
                exc.problem,
                f"--top-k at most the alternatives these samples hold, or collect again with "
                f"`erp collect --logprobs {source.top_k}` into a new --out folder",
            ) from None
    key = hashlib.sha256(json.dumps([source.describe(), entry.system_prompt, samples[["prompt", "response"]].values.tolist()],
                                    default=str).encode()).hexdigest()[:24]
    path = feature_cache_dir() / f"{key}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return [stored[f"a{i}"].astype(np.float32) for i in range(len(samples))]
    features = _hidden_features(source, entry, samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"a{i}": array.astype(np.float16) for i, array in enumerate(features)})
    return features


def _hidden_features(source: TokenFeatureSource, entry: ModelEntry, samples: pd.DataFrame) -> list[np.ndarray]:
    """Each prompt's answers featurized together (one batch of forward passes per prompt)."""
    features: list[np.ndarray | None] = [None] * len(samples)
    for _, group in samples.groupby("prompt_id", sort=False):
        first = group.iloc[0]
        answers = source.for_answers(conversation(entry, first["prompt"], first["system"]), list(group["response"]))
        for row, array in zip(group.index, answers, strict=True):
            features[row] = array
    return features  # type: ignore[return-value]


def cache_hidden_features(registry_path: Path, data_dir: Path, source: TokenFeatureSource) -> tuple[int, Path]:
    """Compute and cache ``source``'s features of every answer in ``data_dir`` (each collected candidate
    without best_of; a best-of outcome is already a selection), so ``fit_selector`` later reads them back:
    the features the selector needs, not whole hidden-state tensors. Returns the answers featurized and the
    cache folder."""
    registry = load_registry(registry_path)
    try:
        collected = pd.read_parquet(Path(data_dir) / "outcomes.parquet", columns=["model"])["model"].unique()
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{data_dir}: cannot read outcomes.parquet ({exc}); fix: pass an `erp collect` --out folder") from None
    answers = 0
    for name in collected:
        entry = registry.entry(name)
        if entry.best_of is None:
            samples = candidate_samples(data_dir, name)
            answer_features(source, entry, samples)
            answers += len(samples)
    return answers, feature_cache_dir()


class FeatureSourceError(ValueError):
    """A feature source that cannot be built as asked: layers out of range, or no local model installed."""


def build_source(kind: str, top_k: int, layers: list[int] | None = None) -> TokenFeatureSource:
    """The feature source named on the command line; hidden states are the bundled local SmolLM2's, whichever
    model wrote the answers. FeatureSourceError, with the fix, when it cannot be built."""
    if kind == "logprobs":
        return LogprobFeatures(top_k=top_k)
    from router.local_model import LocalModelError, find_gguf

    try:
        return HiddenStateFeatures(find_gguf(), layers=layers or DEFAULT_LAYERS)
    except LocalModelError as exc:
        raise FeatureSourceError(str(exc)) from None
    except ValueError as exc:
        raise FeatureSourceError(f"--layers: {exc}") from None


class SelectorOutputError(ValueError):
    """An --out the selector cannot, or must not, be written to."""


def check_selector_out(out: Path, data_dir: Path) -> None:
    """Refuse, before any fitting, an ``out`` that is a folder, lies inside the data folder (it would replace
    collected data), is an existing file that is not a selector, or sits where no file can be written."""
    if out.is_dir():
        raise SelectorOutputError(f"--out {out} is a folder; fix: give a file path, e.g. {out / 'selector.joblib'}")
    if out.resolve().is_relative_to(data_dir.resolve()):
        raise SelectorOutputError(f"--out {out} is inside --data {data_dir}; fix: write the selector outside the data folder")
    if out.exists():
        try:
            load_selector(out)
        except ValueError:
            raise SelectorOutputError(
                f"--out {out} exists and is not a selector file; fix: remove it or choose another path"
            ) from None
    folder = next(parent for parent in out.resolve().parents if parent.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise SelectorOutputError(f"--out {out}: cannot write under {folder}; fix: choose a writable path")


def fit_selector(
    registry_path: Path, data_dir: Path, model: str, kind: str, out: Path, top_k: int = 5, layers: list[int] | None = None, seed: int = 0
) -> SelectorFit:
    """Fit and save ``model``'s selector; DatasetError/ValueError with the fix when the data cannot train one."""
    check_selector_out(Path(out), Path(data_dir))
    entry = load_registry(registry_path).entry(model)
    samples = candidate_samples(data_dir, model)
    labels = (samples["reward"].to_numpy() >= 0.5).astype(int)
    right, wrong = int(labels.sum()), int(len(labels) - labels.sum())
    if min(right, wrong) == 0:
        raise DatasetError(
            f"{data_dir}: {model} is {'right' if wrong == 0 else 'wrong'} on all {len(labels)} samples, so a selector "
            "has nothing to tell apart; fix: collect prompts where its answers vary (or give it no best-of arm)"
        )
    if min(right, wrong) < MIN_PER_CLASS:
        raise DatasetError(
            f"{data_dir}: {model} has {right} right and {wrong} wrong samples; a selector "
            f"needs at least {MIN_PER_CLASS} of each; fix: collect more prompts or samples (--samples)"
        )
    source = build_source(kind, top_k, layers)
    selector = TokenRewardSelector(random_state=seed).fit(
        answer_features(source, entry, samples), labels, feature_source=source.describe()
    )
    save_selector(selector, out)
    return SelectorFit(len(samples), samples["prompt_id"].nunique(), float(labels.mean()), selector.n_parameters_)
