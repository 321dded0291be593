"""``model_registry.yaml``: the pool of models, their prices and predictors, and policy defaults.

Validated by pydantic; every error names the file, the key and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from predictors.embedding import ENCODER_NAMES
from router.schemas import ChatParameters
from router.scorer_config import ScorerEntry, check_cascades, check_hybrid_parts

PriceSource = Literal["litellm"]


class RegistryError(ValueError):
    """A registry that cannot be used; the message says file, key and fix."""


ARM_SEPARATOR = "@"


def _allowed_call_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """Call parameters of a model or arm: the proxy's allow-list, so an arm cannot redirect a call either."""
    try:
        return ChatParameters.model_validate(params).forwarded()
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"params.{where}: {error['msg']} (allowed: {', '.join(ChatParameters.model_fields)})") from None


class BestOfSettings(BaseModel):
    """Best-of-N sampling: ask for ``best_of`` answers, keep the one the fitted ``selector`` scores highest."""

    best_of: int | None = Field(None, ge=2, le=32, description="answers sampled per request; the selector keeps one")
    selector: Path | None = Field(None, description="fitted selector file (`erp fit-selector`), relative to the registry")
    best_of_sampling: Literal["n", "calls"] = Field(
        "n", description="'n': one call asking for best_of choices; 'calls': best_of calls (servers that ignore n)"
    )

    @model_validator(mode="after")
    def _selector_with_best_of(self) -> "BestOfSettings":
        if self.best_of is not None and self.selector is None:
            raise ValueError("best_of needs selector: PATH, a fitted selector (fit one with `erp fit-selector`)")
        if self.selector is not None and self.best_of is None:
            raise ValueError("selector is only used with best_of: N; set best_of or remove selector")
        return self


class ArmEntry(BestOfSettings):
    """One configuration of a model (a reasoning effort, a prompt style, a token budget, best-of-N sampling),
    routed as the candidate ``MODEL@ARM`` with its own predictor."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[^@\s]+$", description="the arm's name; the candidate is MODEL@NAME")
    params: dict[str, Any] = Field(default_factory=dict, description="OpenAI call parameters, e.g. reasoning_effort")
    system_prompt: str | None = Field(None, description="a system message put before the conversation")
    predictor: Path = Field(description="fitted predictor file of this arm, relative to the registry")
    default_output_tokens: float | None = Field(None, gt=0, description="typical output length where data has none")
    max_output_tokens: int | None = Field(None, gt=0, description="most tokens one call may generate")
    enabled: bool = True

    _params_allowed = field_validator("params")(_allowed_call_parameters)


class ModelEntry(BestOfSettings):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        pattern=r"^[^@]+$",
        description="name used in routing records and in the dataset's `model` column (MODEL@ARM for an arm)",
    )
    litellm_model: str = Field(min_length=1, description="LiteLLM model string, e.g. openai/gpt-4o-mini")
    api_base: str | None = None
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key")
    input_usd_per_mtok: float | None = Field(None, ge=0)
    output_usd_per_mtok: float | None = Field(None, ge=0)
    prices_from: PriceSource | None = Field(None, description="'litellm' takes both prices from LiteLLM's price map")
    default_output_tokens: float | None = Field(None, gt=0, description="typical output length where data has none")
    max_output_tokens: int | None = Field(
        None, gt=0, description="most tokens one call may generate; budgets reserve it (default: LiteLLM's model info)"
    )
    predictor: Path | None = Field(None, description="fitted predictor file of this model (not with arms)")
    params: dict[str, Any] = Field(default_factory=dict, description="OpenAI call parameters sent on every call")
    system_prompt: str | None = Field(None, description="a system message put before the conversation")
    arms: list[ArmEntry] = Field(default_factory=list, description="configurations routed as MODEL@ARM")
    enabled: bool = True

    _params_allowed = field_validator("params")(_allowed_call_parameters)

    @model_validator(mode="after")
    def _predictor_or_arms(self) -> "ModelEntry":
        if not self.arms and self.predictor is None:
            raise ValueError("missing predictor: set predictor, or declare arms, each with its own predictor")
        if self.arms and self.predictor is not None:
            raise ValueError("a model with arms is routed through its arms: move predictor onto each arm")
        if self.arms and self.best_of is not None:
            raise ValueError("a model with arms is routed through its arms: move best_of and selector onto an arm")
        names = [arm.name for arm in self.arms]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate arm name(s) {', '.join(duplicates)}; arm names must be unique per model")
        return self

    def candidates(self, include_disabled: bool = False) -> list["ModelEntry"]:
        """What the router chooses among: this model, or one entry per arm named MODEL@ARM, carrying the arm's
        parameters (over the model's), system prompt, predictor and lengths. Enabled ones only, unless asked."""
        if not self.arms:
            return [self] if self.enabled or include_disabled else []
        return [
            self.model_copy(
                update={
                    "name": f"{self.name}{ARM_SEPARATOR}{arm.name}",
                    "params": {**self.params, **arm.params},
                    "system_prompt": arm.system_prompt if arm.system_prompt is not None else self.system_prompt,
                    "predictor": arm.predictor,
                    "default_output_tokens": arm.default_output_tokens or self.default_output_tokens,
                    "max_output_tokens": arm.max_output_tokens or self.max_output_tokens,
                    "best_of": arm.best_of,
                    "selector": arm.selector,
                    "best_of_sampling": arm.best_of_sampling,
                    "arms": [],
                    "enabled": self.enabled and arm.enabled,
                }
            )
            for arm in self.arms
            if include_disabled or (self.enabled and arm.enabled)
        ]

    @model_validator(mode="after")
    def _prices_given_once(self) -> "ModelEntry":
        explicit = self.input_usd_per_mtok is not None or self.output_usd_per_mtok is not None
        if self.prices_from and explicit:
            raise ValueError("give either prices_from: litellm or input_usd_per_mtok/output_usd_per_mtok, not both")
        if not self.prices_from and (self.input_usd_per_mtok is None or self.output_usd_per_mtok is None):
            raise ValueError(
                "missing prices: set input_usd_per_mtok and output_usd_per_mtok, or prices_from: litellm"
            )
        return self

    @property
    def api_key(self) -> str | None:
        """The key read from `api_key_env` at call time (None when unset, so LiteLLM's own env lookup applies)."""
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None


class PolicyDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    lambda_: float = Field(0.0, alias="lambda", ge=0, description="reward per USD traded for cost")
    target_mean_cost_usd: float | None = Field(
        None, gt=0, description="if set, `erp fit` calibrates lambda so the mean cost per request meets it"
    )


class ApiKeyEntry(BaseModel):
    """One client API key of the proxy; its spend is counted under ``name`` and capped by ``budget_usd``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="label for spend counters and metrics; never the key itself")
    key: str | None = Field(None, min_length=1, description="the key itself (prefer key_env)")
    key_env: str | None = Field(None, min_length=1, description="environment variable holding the key")
    budget_usd: float | None = Field(None, ge=0, description="spend limit across all replicas; 429 once spent")

    @model_validator(mode="after")
    def _key_given_once(self) -> "ApiKeyEntry":
        if (self.key is None) == (self.key_env is None):
            raise ValueError("give exactly one of key or key_env")
        return self


class ServingSettings(BaseModel):
    """How the SDK and the proxy call models and keep state; every key is optional."""

    model_config = ConfigDict(extra="forbid")

    api_keys_env: str | None = Field(
        "ERP_API_KEYS", description="environment variable with comma-separated proxy API keys (no budget)"
    )
    api_keys: list[ApiKeyEntry] = Field(default_factory=list)
    max_prompt_chars: int = Field(400_000, gt=0, description="larger conversations get HTTP 413")
    fallback_attempts: int = Field(3, ge=1, description="models tried per request, best score first")
    timeout_s: float = Field(60.0, gt=0, description="upstream timeout per attempt")
    context_chars: int = Field(2_000, ge=0, description="earlier turns embedded along with the last user turn")
    cache_ttl_s: int = Field(3_600, gt=0, description="lifetime of cached embeddings and predictions")
    cache_max_entries: int = Field(10_000, gt=0, description="bound of the in-process cache")
    decision_log_max_len: int = Field(100_000, gt=0, description="entries kept in the decision log")
    decision_log_max_bytes: int = Field(
        8 * 2**20, gt=0, description="bytes the in-process decision log (and the outage journal's log) may hold"
    )
    default_max_output_tokens: int = Field(
        4_096, gt=0, description="output cap reserved against budgets for a model whose cap nobody states"
    )
    outage_allowance_usd: float = Field(
        0.0, ge=0, description="per budgeted key and replica, spend allowed while Redis is unreachable (0: refuse)"
    )

    @model_validator(mode="after")
    def _unique_key_names(self) -> "ServingSettings":
        names = [entry.name for entry in self.api_keys]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate api_keys name(s) {', '.join(duplicates)}; names must be unique")
        return self


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embedding: Literal[ENCODER_NAMES] = "minilm-static"  # type: ignore[valid-type]
    shared_predictor: Path = Field(description="fitted shared featurizer, relative to the registry")
    policy: PolicyDefaults = PolicyDefaults()
    models: list[ModelEntry] = Field(min_length=1)
    serving: ServingSettings = ServingSettings()
    scorers: list[ScorerEntry] = Field(default_factory=list, description="reward scorers used by `erp collect`")
    source: Path = Field(Path("model_registry.yaml"), exclude=True)

    @model_validator(mode="after")
    def _unique_names(self) -> "Registry":
        for section, noun in (("models", "model"), ("scorers", "scorer")):
            seen: dict[str, int] = {}
            for i, entry in enumerate(getattr(self, section)):
                if entry.name in seen:
                    raise ValueError(
                        f"{section}[{i}].name: duplicate {noun} name {entry.name!r} "
                        f"(also {section}[{seen[entry.name]}]); names must be unique"
                    )
                seen[entry.name] = i
        return self

    @model_validator(mode="after")
    def _scorers_fit_together(self) -> "Registry":
        check_hybrid_parts(self.scorers)
        check_cascades(self.scorers)
        return self

    @property
    def root(self) -> Path:
        return self.source.parent

    @property
    def enabled(self) -> list[ModelEntry]:
        """The candidates: every enabled model without arms, and every enabled arm as MODEL@ARM."""
        return [candidate for model in self.models for candidate in model.candidates()]

    def entry(self, name: str) -> ModelEntry:
        """The model or the arm (MODEL@ARM) of this name, enabled or not."""
        candidates = [c for model in self.models for c in model.candidates(include_disabled=True)]
        for candidate in candidates:
            if candidate.name == name:
                return candidate
        arms = [c.name for c in candidates if c.name.startswith(name + ARM_SEPARATOR)]
        if arms:
            raise RegistryError(f"{self.source}: {name!r} is a model with arms; fix: name one arm, one of {', '.join(arms)}")
        known = ", ".join(c.name for c in candidates)
        raise RegistryError(
            f"{self.source}: no model named {name!r}; registry models and arms (MODEL@ARM): {known}; "
            "fix: use one of them or add it under `models:`"
        )

    def index_of(self, name: str) -> int:
        """Position in ``models`` of the model a candidate (a model or MODEL@ARM) belongs to, for error keys."""
        model_name = name.partition(ARM_SEPARATOR)[0]
        return next(i for i, model in enumerate(self.models) if model.name == model_name)

    def scorer(self, name: str) -> ScorerEntry:
        for entry in self.scorers:
            if entry.name == name:
                return entry
        known = ", ".join(entry.name for entry in self.scorers) or "none"
        raise RegistryError(
            f"{self.source}: no scorer named {name!r}; registry scorers: {known}; "
            "fix: pass one of them or add it under the `scorers:` key"
        )

    def path_of(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.root / relative

    def usd_per_token(self, entries: list[ModelEntry]) -> np.ndarray:
        """(models, 2) input/output USD per token, from the registry or LiteLLM's local price map."""
        rows = []
        for entry in entries:
            if entry.prices_from == "litellm":
                rows.append(_litellm_prices(entry, self.source, self.index_of(entry.name)))
            else:
                rows.append((entry.input_usd_per_mtok / 1e6, entry.output_usd_per_mtok / 1e6))
        return np.array(rows, dtype=np.float64)

    def require_artifacts(self) -> None:
        """Every enabled model's predictor and the shared featurizer exist on disk."""
        if not self.path_of(self.shared_predictor).is_file():
            raise RegistryError(
                f"{self.source}: key 'shared_predictor': file {self.path_of(self.shared_predictor)} not found; "
                "fix: run `erp fit --data DIR` to fit the pool"
            )
        for entry in self.enabled:
            if not self.path_of(entry.predictor).is_file():
                raise RegistryError(
                    f"{self.source}: key '{self.key_of(entry.name)}.predictor': file {self.path_of(entry.predictor)} "
                    f"not found; fix: run `erp fit --data DIR --model {entry.name}` (or set enabled: false)"
                )
            if entry.selector is not None and not self.path_of(entry.selector).is_file():
                raise RegistryError(
                    f"{self.source}: key '{self.key_of(entry.name)}.selector': file {self.path_of(entry.selector)} "
                    f"not found; fix: run `erp fit-selector --data DIR --model {entry.name} --out PATH`"
                )

    def check_fit_targets(self, names: list[str], shared: bool = False) -> None:
        """Before ``erp fit`` writes these candidates' predictor files (and, fitting the pool, the shared one):
        RegistryError, naming the keys and the fix, if one of them is also another candidate's predictor, the shared
        featurizer or a selector. Serving may share a file read-only; a fit would overwrite the other's."""
        owners: dict[str, list[str]] = {os.path.normpath(self.path_of(self.shared_predictor)): ["shared_predictor"]}
        for model in self.models:
            for candidate in model.candidates(include_disabled=True):
                key = self.key_of(candidate.name)
                owners.setdefault(os.path.normpath(self.path_of(candidate.predictor)), []).append(f"{key}.predictor")
                if candidate.selector is not None:
                    owners.setdefault(os.path.normpath(self.path_of(candidate.selector)), []).append(f"{key}.selector")
        shared_path = self.path_of(self.shared_predictor)
        others = owners[os.path.normpath(shared_path)][1:]
        if shared and others:
            raise RegistryError(
                f"{self.source}: key 'shared_predictor': {shared_path} is also {', '.join(others)}, and fitting the pool "
                "would overwrite it; fix: give the shared featurizer a file of its own"
            )
        for name in names:
            path = self.path_of(self.entry(name).predictor)
            others = [key for key in owners[os.path.normpath(path)] if key != f"{self.key_of(name)}.predictor"]
            if others:
                raise RegistryError(
                    f"{self.source}: key '{self.key_of(name)}.predictor': {path} is also {', '.join(others)}, and fitting "
                    f"{name} would overwrite it; fix: give {name} a predictor file of its own"
                )

    def key_of(self, name: str) -> str:
        """The registry key of a candidate, for error messages: models[i] or models[i].arms[j]."""
        i = self.index_of(name)
        arm = name.partition(ARM_SEPARATOR)[2]
        return f"models[{i}].arms[{[a.name for a in self.models[i].arms].index(arm)}]" if arm else f"models[{i}]"


def output_token_cap(entry: ModelEntry, settings: ServingSettings) -> int:
    """The most tokens one call of this model may generate: the entry's ``max_output_tokens``, else LiteLLM's
    model info, else ``serving.default_max_output_tokens``."""
    if entry.max_output_tokens is not None:
        return entry.max_output_tokens
    cap = next((info.get("max_output_tokens") for info in _litellm_info(entry) if info.get("max_output_tokens")), None)
    return int(cap) if cap else settings.default_max_output_tokens


def _litellm_info(entry: ModelEntry) -> list[dict]:
    """LiteLLM's local model-map entries for this model string, with and without its provider prefix."""
    from predictors.litellm_offline import litellm

    keys = [entry.litellm_model, entry.litellm_model.split("/", 1)[-1]]
    return [litellm.model_cost[key] for key in keys if key in litellm.model_cost]


def _litellm_prices(entry: ModelEntry, source: Path, index: int) -> tuple[float, float]:
    for info in _litellm_info(entry):
        if info and info.get("input_cost_per_token") is not None and info.get("output_cost_per_token") is not None:
            return float(info["input_cost_per_token"]), float(info["output_cost_per_token"])
    raise RegistryError(
        f"{source}: key 'models[{index}].prices_from': LiteLLM's price map has no prices for {entry.litellm_model!r}; "
        "fix: set input_usd_per_mtok and output_usd_per_mtok instead"
    )


def _key_path(loc: tuple) -> str:
    if len(loc) > 2 and loc[0] == "scorers" and isinstance(loc[1], int):
        loc = loc[:2] + loc[3:]  # drop the `kind` tag pydantic puts in a tagged union's location
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _fix_for(error: dict) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "remove this key (see model_registry.yaml in the repository for the allowed keys)"
    if kind == "missing":
        return "add this key"
    if kind == "literal_error":
        return f"use one of the allowed values ({error.get('ctx', {}).get('expected', '')})"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"set kind to one of {error.get('ctx', {}).get('expected_tags', '')}"
    return "correct the value"


_KEYED_MESSAGE = re.compile(r"^\w+\[\d+\](\.\w+)*: ")


def _format_validation(path: Path, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = _key_path(tuple(part for part in error["loc"] if part != "__root__"))
        message = error["msg"].removeprefix("Value error, ")
        if not key and _KEYED_MESSAGE.match(message):  # a whole-registry check that names its own key
            key, message = message.split(": ", 1)
        lines.append(f"{path}: key '{key or '<top level>'}': {message}; fix: {_fix_for(error)}")
    return "\n".join(lines)


def load_registry(path: str | Path, require_artifacts: bool = False) -> Registry:
    """Parse and validate a registry file; raise RegistryError with file, key and fix."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"{path}: registry file not found; fix: pass --registry PATH to an existing model_registry.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RegistryError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}; fix: correct the YAML syntax") from None
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: expected a mapping with keys embedding, shared_predictor, policy, models; fix: see README")
    try:
        registry = Registry.model_validate({**raw, "source": path})
    except ValidationError as exc:
        raise RegistryError(_format_validation(path, exc)) from None
    if require_artifacts:
        registry.require_artifacts()
    return registry
