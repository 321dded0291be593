"""LLM judges through LiteLLM: a chain-of-thought rubric judge and a fast single-token log-probability judge.

Both grade one (prompt, response) pair on a 1-10 rubric and rescale to [0, 1] as (score - 1) / 9. Output
that yields no score is asked for once more, then recorded as missing (NaN with a message), never as 0:
a parse failure says nothing about the response's quality.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

import numpy as np

from predictors.scorers.base import ScoreBatch, ScoringItem
from predictors.scorers.completion import CompletionClient, total_tokens

RUBRIC = """Rate the assistant's response to the user's prompt on a scale of 1 to 10.

Rubric:
- 9-10: correct, complete and helpful; nothing important missing.
- 7-8: correct and helpful, with minor omissions or rough edges.
- 4-6: partly correct or incomplete; noticeable errors or missing key parts.
- 2-3: mostly wrong, off-topic or unhelpful.
- 1: wrong, harmful, or no real answer.
Judge correctness first, then helpfulness, then clarity. Do not reward length or confident tone."""

COT_INSTRUCTION = (
    'Reply with a JSON object only: {"rationale": "<at most three sentences>", "score": <integer 1-10>}'
)
SINGLE_TOKEN_INSTRUCTION = "Reply with the score only: a single integer from 1 to 10, nothing else."
REMINDER = (
    "Your reply did not contain a score I could read. Reply again with the JSON object only, "
    'e.g. {"rationale": "...", "score": 7}, or end with a line "Score: N" where N is an integer from 1 to 10.'
)
SYSTEM = "You are a strict, impartial grader of AI assistant responses."
SCORE_TOKENS = {str(score): score for score in range(1, 11)}

_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_SCORE_FIELD = re.compile(r"score[\s*\"']{0,4}[:=][\s*\"']{0,4}(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def judge_prompt(item: ScoringItem, instruction: str) -> list[dict]:
    """The rubric, the conversation being graded (its system prompt when given) and the reply format."""
    parts = [RUBRIC]
    if item.system:
        parts.append(f"[System prompt the assistant was given]\n{item.system}")
    parts += [f"[User prompt]\n{item.prompt}", f"[Assistant response]\n{item.response}", instruction]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def to_reward(score: float) -> float:
    """A 1-10 score, clamped to that range, rescaled to [0, 1]."""
    return (min(max(score, 1.0), 10.0) - 1.0) / 9.0


def parse_score(text: str) -> float | None:
    """The 1-10 score in a judge's reply: a JSON object's `score`, else the last `Score: N`; None if neither."""
    match = _JSON_OBJECT.search(text)
    if match:
        try:
            document = json.loads(match.group(0))
        except json.JSONDecodeError:
            document = None
        if isinstance(document, dict):
            try:
                value = float(document.get("score"))
            except (TypeError, ValueError):
                value = math.nan
            if math.isfinite(value):
                return value
    fields = _SCORE_FIELD.findall(text)
    return float(fields[-1]) if fields else None


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def score_distribution(response: Any) -> dict[int, float]:
    """Probability of each score 1-10 among the first token's top log-probabilities (variants like ' 7' merged).

    "10" counts only where the tokenizer has it as one token; tokenizers that split digits put its mass on "1".
    """
    choices = _field(response, "choices") or []
    logprobs = _field(choices[0], "logprobs") if choices else None
    content = _field(logprobs, "content") or []
    distribution: dict[int, float] = {}
    for candidate in (_field(content[0], "top_logprobs") or []) if content else []:
        score = SCORE_TOKENS.get(str(_field(candidate, "token") or "").strip())
        if score is not None:
            distribution[score] = distribution.get(score, 0.0) + math.exp(float(_field(candidate, "logprob")))
    return distribution


class _Judge:
    """Shared judge loop: ask, parse, ask once more on unreadable output, count every token."""

    name: str
    client: CompletionClient

    def _request(self, item: ScoringItem) -> tuple[list[dict], dict]:
        raise NotImplementedError

    def _parse(self, response: Any) -> tuple[float, float] | None:
        """(reward in [0, 1], certainty) or None when the reply holds no score."""
        raise NotImplementedError

    def _retry_messages(self, messages: list[dict], response: Any) -> list[dict]:
        return messages

    async def _score_one(self, item: ScoringItem) -> tuple[float, float, int, str | None]:
        messages, kwargs = self._request(item)
        tokens, response = 0, None
        for _ in range(2):
            if response is not None:
                messages = self._retry_messages(messages, response)
            try:
                response = await self.client.complete(messages, **kwargs)
            except Exception as exc:  # one item's failure is recorded, never raised (RewardScorer contract)
                return math.nan, math.nan, tokens, f"{type(exc).__name__}: {str(exc)[:300]}"
            tokens += total_tokens(response)
            parsed = self._parse(response)
            if parsed is not None:
                return parsed[0], parsed[1], tokens, None
        text = _field(_field(response.choices[0], "message"), "content") or ""
        return math.nan, math.nan, tokens, f"no score in the judge's output after one retry: {text[:200]!r}"

    async def _score_all(self, items: list[ScoringItem]) -> tuple[np.ndarray, np.ndarray, int, list[str | None]]:
        results = await asyncio.gather(*(self._score_one(item) for item in items))
        rewards = np.array([r[0] for r in results], dtype=np.float64)
        certainty = np.array([r[1] for r in results], dtype=np.float64)
        return rewards, certainty, sum(r[2] for r in results), [r[3] for r in results]


class LLMJudge(_Judge):
    """The slow judge: a short rationale, then a 1-10 score (JSON, or a final `Score: N`)."""

    def __init__(self, name: str, client: CompletionClient, max_tokens: int = 512) -> None:
        self.name, self.client, self.max_tokens = name, client, max_tokens

    def _request(self, item: ScoringItem) -> tuple[list[dict], dict]:
        return judge_prompt(item, COT_INSTRUCTION), {"max_tokens": self.max_tokens, "temperature": 0.0}

    def _parse(self, response: Any) -> tuple[float, float] | None:
        score = parse_score(_field(_field(response.choices[0], "message"), "content") or "")
        return None if score is None else (to_reward(score), math.nan)

    def _retry_messages(self, messages: list[dict], response: Any) -> list[dict]:
        text = _field(_field(response.choices[0], "message"), "content") or ""
        return [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": REMINDER}]

    async def score(self, items: list[ScoringItem]) -> ScoreBatch:
        rewards, _, tokens, errors = await self._score_all(items)
        return ScoreBatch(rewards, tokens, errors, slow=np.zeros(len(items), dtype=bool))


class LogprobJudge(_Judge):
    """The fast judge: one score token; reward = expected score under its log-probabilities.

    Certainty is the probability mass on the most likely score token (not renormalized: mass the judge put
    on non-score tokens counts as doubt).
    """

    def __init__(self, name: str, client: CompletionClient, top_logprobs: int = 20) -> None:
        self.name, self.client, self.top_logprobs = name, client, top_logprobs

    def _request(self, item: ScoringItem) -> tuple[list[dict], dict]:
        kwargs = {"max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": self.top_logprobs}
        return judge_prompt(item, SINGLE_TOKEN_INSTRUCTION), kwargs

    def _parse(self, response: Any) -> tuple[float, float] | None:
        distribution = score_distribution(response)
        mass = sum(distribution.values())
        if mass <= 0:
            return None
        expected = sum(score * p for score, p in distribution.items()) / mass
        return to_reward(expected), max(distribution.values())

    async def score(self, items: list[ScoringItem]) -> ScoreBatch:
        rewards, certainty, tokens, errors = await self._score_all(items)
        return ScoreBatch(rewards, tokens, errors, slow=np.zeros(len(items), dtype=bool), certainty=certainty)
