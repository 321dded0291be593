"""The run manifest in --out: the settings that give a reward its meaning, so reruns never mix two meanings.

A rerun may change the prompts (file, --limit, --seed), --samples and the set of models: results are
keyed by prompt content, model and sample, so it extends the journal and the compacted dataset is always
the current command's. It is refused when the scorer, the temperature or max_tokens differ, or when a
model name now points at a different LiteLLM model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from router.collect import CollectError

MANIFEST_NAME = "manifest.json"


class Manifest(BaseModel):
    scorer: str
    temperature: float
    max_tokens: int
    models: dict[str, str]  # registry name -> litellm_model


def reconcile(folder: Path, current: Manifest) -> None:
    """Check ``current`` against the folder's manifest, then store their union (models accumulate)."""
    path = Path(folder) / MANIFEST_NAME
    stored = current
    if path.is_file():
        try:
            previous = Manifest.model_validate_json(path.read_text())
        except (OSError, ValidationError) as exc:
            raise CollectError(f"{path}: unreadable run manifest ({type(exc).__name__}); restore it or use another --out") from None
        for field, option in (("scorer", "--scorer"), ("temperature", "--temperature"), ("max_tokens", "--max-tokens")):
            before, now = getattr(previous, field), getattr(current, field)
            if before != now:
                raise CollectError(
                    f"--out {folder} was collected with {option} {before}, this run asks for {now}; "
                    f"rerun with {option} {before} or use another --out (results must not mix settings)"
                )
        for name, litellm_model in current.models.items():
            if previous.models.get(name, litellm_model) != litellm_model:
                raise CollectError(
                    f"--out {folder}: model {name!r} was collected as {previous.models[name]!r} and is now "
                    f"{litellm_model!r}; rename the registry entry or use another --out"
                )
        stored = current.model_copy(update={"models": {**previous.models, **current.models}})
    staging = path.with_name(f".{MANIFEST_NAME}.tmp")
    staging.write_text(json.dumps(stored.model_dump(), indent=2) + "\n")
    os.replace(staging, path)
