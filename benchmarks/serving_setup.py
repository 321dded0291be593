"""Registries for the serving benchmarks: the real pool, refitted into a scratch folder, optionally on a stub."""

from __future__ import annotations

from pathlib import Path

import yaml

from router.fitting import fit_all
from router.registry import load_registry

UPSTREAM_KEY_ENV = "ERP_BENCH_UPSTREAM_KEY"


def bench_registry(
    source: Path, workdir: Path, fit_data: Path, embedding: str | None = None, api_base: str | None = None
) -> Path:
    """Copy ``source``'s enabled models with explicit prices, fit them on ``fit_data`` into ``workdir``.

    With ``api_base`` every model is called as ``openai/<name>`` there (the stub upstream), so prices must
    be explicit rather than looked up by the provider's model string.
    """
    registry = load_registry(source)
    enabled = registry.enabled
    prices = registry.usd_per_token(enabled) * 1e6
    models = []
    for entry, (input_price, output_price) in zip(enabled, prices, strict=True):
        model = {
            "name": entry.name,
            "litellm_model": f"openai/{entry.name}" if api_base else entry.litellm_model,
            "input_usd_per_mtok": float(input_price),
            "output_usd_per_mtok": float(output_price),
            "predictor": f"artifacts/models/{entry.name}.joblib",
        }
        if entry.default_output_tokens:
            model["default_output_tokens"] = entry.default_output_tokens
        if api_base:
            model.update(api_base=api_base, api_key_env=UPSTREAM_KEY_ENV)
        models.append(model)
    document = {
        "embedding": embedding or registry.embedding,
        "shared_predictor": "artifacts/shared.joblib",
        "policy": {"lambda": registry.policy.lambda_},
        "models": models,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "model_registry.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    if not (workdir / "artifacts" / "shared.joblib").is_file():
        fit_all(path, fit_data)
    return path
