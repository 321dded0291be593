"""``model_registry.yaml``: the pool of models, their prices and predictors, and policy defaults.

Validated by pydantic; every error names the file, the key and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from predictors.embedding import ENCODER_NAMES

PriceSource = Literal["litellm"]


class RegistryError(ValueError):
    """A registry that cannot be used; the message says file, key and fix."""


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="name used in routing records and in the dataset's `model` column")
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
    predictor: Path = Field(description="fitted predictor file of this model, relative to the registry")
    enabled: bool = True

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


class _LiteLLMJudgeFields(BaseModel):
    """How a judge served through LiteLLM is reached; shared by every LiteLLM judge kind."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    litellm_model: str = Field(min_length=1, description="LiteLLM model string of the judge")
    api_base: str | None = None
    api_key_env: str | None = Field(None, description="environment variable holding the judge's API key")
    concurrency: int = Field(8, ge=1, description="judge calls in flight at once")
    timeout_s: float = Field(60.0, gt=0, description="timeout per judge call")
    retries: int = Field(4, ge=0, description="retries of a call on 429, 5xx, timeouts and connection errors")
    backoff_s: float = Field(1.0, ge=0, description="first retry wait; doubles per retry, up to 30 s")


class JudgeScorerEntry(_LiteLLMJudgeFields):
    """An LLM judge: `judge` writes a rationale and a 1-10 score; `judge_logprobs` answers one score token."""

    kind: Literal["judge", "judge_logprobs"]
    max_tokens: int = Field(512, gt=0, description="judge reply budget (judge_logprobs always asks for 1 token)")
    top_logprobs: int = Field(20, ge=1, le=20, description="judge_logprobs: log-probabilities returned per token")


class PairwiseJudgeScorerEntry(_LiteLLMJudgeFields):
    """A pairwise LLM judge ("Output (a) or Output (b)?"); asked in both orders, its certainty is their consistency."""

    kind: Literal["judge_pairwise"]
    orders: Literal[1, 2] = Field(2, description="2: ask in both orders (certainty = consistency); 1: once, none")
    max_tokens: int = Field(50, gt=0, description="judge reply budget")


class ReplayScorerEntry(BaseModel):
    """A pairwise judge answering from recorded verdicts (a judge-replay folder) instead of calling a model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["replay"]
    path: Path = Field(description="judge-replay folder (pairs.parquet, verdicts.parquet), relative to the registry")
    judge: str = Field(min_length=1, description="recorded judge, e.g. GPT-4")
    mode: str = Field(min_length=1, description="recorded mode, e.g. Vanilla or Metrics_Reference")
    orders: Literal[1, 2] = Field(2, description="2: both presentation orders (certainty = consistency); 1: one")
    tokens: Literal["all", "output"] = Field("all", description="count characters sent and received, or received only")


class RewardModelScorerEntry(BaseModel):
    """A local `AutoModelForSequenceClassification` reward model directory (e.g. a downloaded Skywork RM)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["reward_model"]
    path: Path = Field(description="model directory (config, weights, tokenizer), relative to the registry")
    batch_size: int = Field(8, ge=1)
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda or cuda:N")
    max_length: int = Field(4096, gt=0, description="tokens kept per (prompt, response) pair")
    trust_remote_code: bool = Field(False, description="needed by checkpoints with custom heads, e.g. ArmoRM")


class HybridScorerEntry(BaseModel):
    """Fast scorer first; the slow part only where the fast score is unsure or disagrees with the ERP predictor.

    A slow part that is itself a hybrid makes a cascade: each stage runs only where the one before is unsure.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["hybrid"]
    fast: str = Field(
        description="name of a scorer with a certainty: judge_logprobs, reward_model, or judge_pairwise/replay "
        "asked in both orders"
    )
    slow: str = Field(
        description="name of a judge, judge_logprobs, judge_pairwise or replay scorer, or of another hybrid "
        "(a cascade: its target_slow_fraction is then its share of what reaches it)"
    )
    target_slow_fraction: float = Field(0.2, gt=0, lt=1, description="share of items sent to the slow part")
    use_erp: bool = Field(True, description="also check agreement with the fitted ERP predictor's expected reward")
    thresholds: Path = Field(
        description="calibrated thresholds (JSON; in a cascade, every stage's), written by benchmarks/scorer_eval.py"
    )


ScorerEntry = Annotated[
    JudgeScorerEntry | PairwiseJudgeScorerEntry | ReplayScorerEntry | RewardModelScorerEntry | HybridScorerEntry,
    Field(discriminator="kind"),
]
FAST_KINDS = ("judge_logprobs", "reward_model", "judge_pairwise", "replay")
"""Kinds that report a certainty (the pairwise ones only when asked in both orders)."""
SLOW_KINDS = ("judge", "judge_logprobs", "judge_pairwise", "replay", "hybrid")
"""Kinds that score without a calibration of their own (a reward model needs one; a nested hybrid gets its own)."""
PAIRWISE_KINDS = ("judge_pairwise", "replay")


def _fits(entry: BaseModel, role: str) -> bool:
    """Whether a scorer entry can be a hybrid's `role` ("fast" or "slow") part."""
    if role == "fast":
        return entry.kind in FAST_KINDS and getattr(entry, "orders", 2) == 2
    return entry.kind in SLOW_KINDS


def _judges_pairs(by_name: dict[str, BaseModel], name: str) -> bool:
    """Whether scorer `name` judges pairs (response against alternative); a hybrid judges what its fast part does."""
    entry = by_name[name]
    return by_name[entry.fast].kind in PAIRWISE_KINDS if entry.kind == "hybrid" else entry.kind in PAIRWISE_KINDS


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
    def _hybrids_name_their_parts(self) -> "Registry":
        by_name = {entry.name: entry for entry in self.scorers}
        for i, entry in enumerate(self.scorers):
            if entry.kind != "hybrid":
                continue
            for role, wanted in (("fast", FAST_KINDS), ("slow", SLOW_KINDS)):
                name = getattr(entry, role)
                part = by_name.get(name)
                if part is not None and _fits(part, role):
                    continue
                found = f"{name!r} is a {part.kind} scorer" if part else f"no scorer named {name!r}"
                if part is not None and part.kind in wanted:
                    found += " asked in one order (no certainty to threshold; set orders: 2 on it)"
                candidates = [n for n, e in by_name.items() if _fits(e, role) and n != entry.name]
                raise ValueError(
                    f"scorers[{i}].{role}: {found}; the {role} part must be a {' or '.join(wanted)} scorer, "
                    f"one of: {', '.join(candidates) or '(none yet)'}"
                )
        return self

    @model_validator(mode="after")
    def _cascades_end_and_match(self) -> "Registry":
        """A cascade (hybrids nested on the slow side) ends in a non-hybrid, and judges one shape of item."""
        by_name = {entry.name: entry for entry in self.scorers}
        for i, entry in enumerate(self.scorers):
            if entry.kind != "hybrid":
                continue
            chain = [entry.name]
            while by_name[chain[-1]].kind == "hybrid":
                chain.append(by_name[chain[-1]].slow)
                if chain[-1] in chain[:-1]:
                    raise ValueError(
                        f"scorers[{i}].slow: the cascade {' -> '.join(chain)} is a cycle; "
                        "end it with a slow part that is not a hybrid"
                    )
            pairwise = by_name[entry.fast].kind in PAIRWISE_KINDS
            if _judges_pairs(by_name, entry.slow) != pairwise:
                shapes = ("single responses", "pairs (response against alternative)")
                raise ValueError(
                    f"scorers[{i}].slow: {entry.slow!r} judges {shapes[not pairwise]} but the fast part "
                    f"{entry.fast!r} judges {shapes[pairwise]}; both parts must judge the same"
                )
            if pairwise and entry.use_erp:
                raise ValueError(
                    f"scorers[{i}].use_erp: a pairwise hybrid compares two responses, the ERP predictor "
                    "rates one; set use_erp: false"
                )
        return self

    @property
    def root(self) -> Path:
        return self.source.parent

    @property
    def enabled(self) -> list[ModelEntry]:
        return [m for m in self.models if m.enabled]

    def entry(self, name: str) -> ModelEntry:
        for model in self.models:
            if model.name == name:
                return model
        raise RegistryError(
            f"{self.source}: no model named {name!r}; registry models: {', '.join(m.name for m in self.models)}"
        )

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
                rows.append(_litellm_prices(entry, self.source, self.models.index(entry)))
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
        for i, entry in enumerate(self.models):
            if entry.enabled and not self.path_of(entry.predictor).is_file():
                raise RegistryError(
                    f"{self.source}: key 'models[{i}].predictor': file {self.path_of(entry.predictor)} not found; "
                    f"fix: run `erp fit --data DIR --model {entry.name}` (or set enabled: false)"
                )


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
