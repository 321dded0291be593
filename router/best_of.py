"""Best-of-N candidates: sample N answers, score each with the candidate's fitted selector, keep the best.

One implementation for the dispatcher (SDK and proxy) and for ``erp collect``, so an arm is served exactly as
its data was collected. The upstream is asked for N choices in one call (``best_of_sampling: n``) or with N
calls (``calls``, for servers such as llama.cpp's that ignore ``n``); a selector on log-probabilities makes
each call ask for ``logprobs`` and ``top_logprobs``. The answer keeps only the winning choice, while its usage
counts every sample (input once per call), which is what the caller is charged. A choice the selector cannot
score (no log-probabilities in the response) fails the request with ``SelectionError``: nothing is picked
silently.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictors.selector import TokenRewardSelector, load_selector
from predictors.token_features import HiddenStateFeatures, LogprobFeatures, TokenFeatureSource
from router.registry import ModelEntry, Registry
from router.schemas import BestOfRecord


class SelectionError(RuntimeError):
    """The samples came back but the selector could not score them (e.g. the upstream sent no logprobs)."""


@dataclass(frozen=True)
class Scorer:
    """A fitted selector with the feature source it was fitted on."""

    path: Path
    selector: TokenRewardSelector
    source: TokenFeatureSource


def feature_source(description: dict) -> TokenFeatureSource:
    """The feature source a selector was fitted on, rebuilt from its ``describe()``; the hidden-state source
    needs the bundled local model (the only GGUF it can find without a path)."""
    from router.local_model import find_gguf

    kind = description.get("kind")
    if kind == "logprobs":
        return LogprobFeatures(top_k=int(description["top_k"]))
    if kind == "hidden_states":
        gguf = find_gguf()
        if gguf.name != description.get("model"):
            raise SelectionError(
                f"the selector reads hidden states of {description.get('model')}, but the local model here is "
                f"{gguf.name}; fix: fit the selector on this model's features"
            )
        return HiddenStateFeatures(gguf, layers=description["layers"])
    raise SelectionError(f"unknown selector feature source {description}; fix: refit with `erp fit-selector`")


class Selectors:
    """The registry's selectors, each loaded (with its feature source) on first use and kept."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._loaded: dict[Path, Scorer] = {}

    def scorer(self, entry: ModelEntry) -> Scorer:
        path = self.registry.path_of(entry.selector)
        if path not in self._loaded:
            selector = load_selector(path)
            self._loaded[path] = Scorer(path, selector, feature_source(selector.feature_source_))
        return self._loaded[path]

    def request_arguments(self, entry: ModelEntry, args: dict) -> list[dict]:
        """The upstream calls of one attempt: one asking ``n`` choices, or ``best_of`` calls of one each."""
        args = {**args, "stream": False}
        args.pop("stream_options", None)
        source = self.scorer(entry).source
        if isinstance(source, LogprobFeatures):
            args.update(logprobs=True, top_logprobs=source.top_k)
        if entry.best_of_sampling == "n":
            return [{**args, "n": entry.best_of}]
        args.pop("n", None)
        return [dict(args) for _ in range(entry.best_of)]

    def pick(self, entry: ModelEntry, messages: list[dict], response: Any) -> tuple[Any, BestOfRecord]:
        """``response`` reduced to its best-scored choice (usage unchanged), and the record of every score."""
        scorer = self.scorer(entry)
        choices = list(response.choices)
        try:
            scores = scorer.selector.decision_function(scorer.source.features(messages, choices))
        except ValueError as exc:  # MissingLogprobsError, or features of another width
            raise SelectionError(f"{entry.name}: cannot score the {len(choices)} samples: {exc}") from exc
        chosen = int(np.argmax(scores))
        picked = copy.copy(response)
        winner = copy.copy(choices[chosen])
        winner.index = 0
        picked.choices = [winner]
        record = BestOfRecord(scores=[float(s) for s in scores], chosen=chosen, selector=scorer.path.name)
        return picked, record


def as_chunks(response: Any) -> list[Any]:
    """A finished response's first choice as the chunks of a stream: the message, the finish reason, then the
    usage (on its own, as OpenAI sends it when ``stream_options.include_usage`` is set)."""
    from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices

    choice = response.choices[0]
    message = choice.message
    common = {"id": response.id, "created": response.created, "model": response.model}
    delta = Delta(role="assistant", content=message.content, tool_calls=getattr(message, "tool_calls", None))
    return [
        ModelResponseStream(**common, choices=[StreamingChoices(index=0, delta=delta)]),
        ModelResponseStream(**common, choices=[StreamingChoices(index=0, delta=Delta(), finish_reason=choice.finish_reason or "stop")]),
        ModelResponseStream(**common, choices=[], usage=response.usage),
    ]


def merge_responses(responses: list[Any]) -> Any:
    """One response holding every choice of ``responses`` (renumbered), with their usages added up."""
    merged = copy.copy(responses[0])
    choices = []
    for response in responses:
        for choice in response.choices:
            choice.index = len(choices)
            choices.append(choice)
    merged.choices = choices
    usage = copy.copy(responses[0].usage)
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        setattr(usage, name, sum(int(getattr(r.usage, name, 0) or 0) for r in responses))
    details = [getattr(r.usage, "completion_tokens_details", None) for r in responses]
    if all(d is not None and getattr(d, "reasoning_tokens", None) is not None for d in details):
        usage.completion_tokens_details = copy.copy(details[0])
        usage.completion_tokens_details.reasoning_tokens = sum(d.reasoning_tokens for d in details)
    merged.usage = usage
    return merged
