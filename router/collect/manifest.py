"""The run manifest in --out: the settings that give a reward its meaning, so reruns never mix two meanings.

A rerun may change the prompts (file, --limit, --seed), --samples and the set of models: results are
keyed by prompt content, model and sample, so it extends the journal and the compacted dataset is always
the current command's. It is refused when the scorer, the temperature, max_tokens or --logprobs differ, when a
model name now points at a different LiteLLM model, or when a candidate's call configuration (its parameters,
system prompt, best-of settings and selector file) changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from router.collect import CollectError
from router.registry import ModelEntry, Registry

MANIFEST_NAME = "manifest.json"


class Manifest(BaseModel):
    scorer: str
    temperature: float
    max_tokens: int
    models: dict[str, str]  # registry name -> litellm_model
    logprobs: int | None = None  # alternatives kept per token (None: none kept)
    configurations: dict[str, dict[str, Any]] = {}  # registry name -> what the candidate is called with


def call_configuration(registry: Registry, entry: ModelEntry) -> dict[str, Any]:
    """What a candidate's samples depend on besides its LiteLLM model and the run's settings: its call parameters,
    system prompt and best-of settings, the selector by its file's content (a refitted selector picks others)."""
    selector = None
    if entry.selector is not None:
        path = registry.path_of(entry.selector)
        selector = f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}" if path.is_file() else str(entry.selector)
    best_of = {"best_of": entry.best_of, "best_of_sampling": entry.best_of_sampling, "selector": selector}
    return {"params": entry.params, "system_prompt": entry.system_prompt, **(best_of if entry.best_of else {})}


def _check_unrecorded_logprobs(folder: Path, previous: Manifest, current: Manifest, kept_logprobs: bool | None) -> None:
    """A manifest written before --logprobs was recorded: whether the folder's samples hold log-probabilities
    stands in for it."""
    if "logprobs" in previous.model_fields_set or kept_logprobs is None or kept_logprobs == (current.logprobs is not None):
        return
    held, asked = ("with", "none") if kept_logprobs else ("without", f"--logprobs {current.logprobs}")
    raise CollectError(
        f"--out {folder} holds samples {held} log-probabilities, this run asks for {asked}; rerun "
        f"{'with --logprobs as before' if kept_logprobs else 'without --logprobs'} or use another --out "
        "(results must not mix settings)"
    )


def reconcile(folder: Path, current: Manifest, kept_logprobs: bool | None = None) -> None:
    """Check ``current`` against the folder's manifest, then store their union (models accumulate).

    ``kept_logprobs`` says whether the folder's samples hold log-probabilities (None: no samples yet); it stands in
    for a manifest written before --logprobs was recorded."""
    path = Path(folder) / MANIFEST_NAME
    stored = current
    if path.is_file():
        try:
            previous = Manifest.model_validate_json(path.read_text())
        except (OSError, ValidationError) as exc:
            raise CollectError(f"{path}: unreadable run manifest ({type(exc).__name__}); restore it or use another --out") from None
        _check_unrecorded_logprobs(folder, previous, current, kept_logprobs)
        settings = (("scorer", "--scorer"), ("temperature", "--temperature"), ("max_tokens", "--max-tokens"), ("logprobs", "--logprobs"))
        for field, option in settings:
            if field not in previous.model_fields_set:  # a manifest written before this setting was recorded
                continue
            before, now = getattr(previous, field), getattr(current, field)
            if before != now:
                was = f"{option} {before}" if before is not None else f"no {option}"
                raise CollectError(
                    f"--out {folder} was collected with {was}, this run asks for {now if now is not None else 'none'}; "
                    f"rerun with {was} or use another --out (results must not mix settings)"
                )
        for name, configuration in current.configurations.items():
            before = previous.configurations.get(name, configuration)
            changed = sorted(key for key in {*before, *configuration} if before.get(key) != configuration.get(key))
            if changed:
                raise CollectError(
                    f"--out {folder}: {name!r} was collected with other {', '.join(changed)} "
                    f"({', '.join(f'{key}={before.get(key)!r}' for key in changed)}); restore them, name the changed "
                    "candidate differently, or use another --out (results must not mix settings)"
                )
        for name, litellm_model in current.models.items():
            if previous.models.get(name, litellm_model) != litellm_model:
                raise CollectError(
                    f"--out {folder}: model {name!r} was collected as {previous.models[name]!r} and is now "
                    f"{litellm_model!r}; rename the registry entry or use another --out"
                )
        stored = current.model_copy(
            update={
                "models": {**previous.models, **current.models},
                "configurations": {**previous.configurations, **current.configurations},
            }
        )
    staging = path.with_name(f".{MANIFEST_NAME}.tmp")
    staging.write_text(json.dumps(stored.model_dump(), indent=2) + "\n")
    os.replace(staging, path)
