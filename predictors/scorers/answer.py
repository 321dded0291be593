"""The `answer` scorer: reward 1 when a response's final answer matches the prompt's reference, else 0.

The final answer is, in this order of precedence, the last ``\\boxed{X}``, the last ``#### X``, the last
"Answer: X" / "the (final) answer is X", or else the last number anywhere in the response. A numeric
reference is compared with the first number of that final answer within a tolerance (``1,234``, ``$5``,
``-3.5``, ``3/4`` and ``12%`` parse); any other reference by exact match after normalising case,
whitespace, surrounding markup and a trailing period.

A response with no parseable answer scores 0, not NaN: failing to state an answer is a wrong answer (the
model spent its budget and the user got nothing usable), and recording it as missing would hide exactly
the short-budget failures a router must learn to avoid. NaN is kept for what the scorer cannot judge: a
prompt without a reference answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from predictors.scorers.base import ScoreBatch, ScoringItem

NO_REFERENCE = "no reference answer for this prompt"

_NUMBER = re.compile(r"(?:(?<![\w)])-)?\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?%?")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_HASHES = re.compile(r"####\s*([^\n]+)")
_MARKED = re.compile(r"(?:final\s+answer|answer)\s*(?:is\s*:?|:|=)\s*([^\n]+)", re.IGNORECASE)
_MARKUP = " \t\n*_`$\"'"


def final_answer(response: str) -> str | None:
    """The response's final answer as written (marked answer first, else the last number); None if none."""
    for pattern in (_BOXED, _HASHES, _MARKED):
        found = pattern.findall(response)
        if found and found[-1].strip():
            return found[-1].strip()
    numbers = _NUMBER.findall(response)
    return numbers[-1] if numbers else None


def parse_number(text: str) -> float | None:
    """The first number in `text` as a float (commas, `$`, `%` and `a/b` fractions allowed); None if none."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    token = match.group(0).replace(",", "").replace("$", "").rstrip("%")
    if "/" in token:
        numerator, denominator = (float(part) for part in token.split("/"))
        return numerator / denominator if denominator else None
    return float(token)


def normalize(text: str) -> str:
    """Lower case, single spaces, without surrounding markup, quotes or a trailing period."""
    return " ".join(text.strip(_MARKUP).rstrip(".").strip(_MARKUP).lower().split())


def is_correct(response: str, reference: str, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Whether the response's final answer equals the reference (numbers within the tolerances)."""
    answer = final_answer(response)
    if answer is None:
        return False
    expected = parse_number(reference) if _NUMBER.fullmatch(reference.strip().rstrip(".")) else None
    if expected is None:
        return normalize(answer) == normalize(reference)
    got = parse_number(answer)
    return got is not None and math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol)


class AnswerScorer:
    """Scores each item 0/1 against the reference answer of its prompt (looked up by prompt text).

    An item's own `reference` (set by `erp collect` from the prompts' `answer` column) is used first, else
    `references`, a map from prompt text to reference answer; an item with neither gets NaN with the error
    NO_REFERENCE. Scoring calls no model, so `tokens` is 0.
    """

    name = "answer"

    def __init__(self, references: Mapping[str, str] | None = None, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> None:
        self.references = dict(references or {})
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol

    @classmethod
    def from_prompts(cls, path: Path, **tolerances: float) -> "AnswerScorer":
        """A scorer over a routing dataset's prompts.parquet (its `prompt` and `answer` columns)."""
        prompts = pd.read_parquet(path, columns=["prompt", "answer"]).dropna()
        return cls(dict(zip(prompts["prompt"], prompts["answer"].astype(str))), **tolerances)

    async def score(self, items: list[ScoringItem]) -> ScoreBatch:
        """1.0 for a correct final answer, 0.0 for a wrong or unparseable one, NaN without a reference."""
        rewards = np.full(len(items), np.nan)
        errors: list[str | None] = [None] * len(items)
        for i, item in enumerate(items):
            reference = item.reference if item.reference is not None else self.references.get(item.prompt)
            if reference is None:
                errors[i] = NO_REFERENCE
                continue
            rewards[i] = float(is_correct(item.response, reference, self.rel_tol, self.abs_tol))
        return ScoreBatch(rewards=rewards, tokens=0, errors=errors)
