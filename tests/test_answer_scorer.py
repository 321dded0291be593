"""The answer-checking scorer: final-answer extraction, numeric and exact comparison, 0/1 rewards."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pandas as pd
import pytest

from predictors.scorers.answer import NO_REFERENCE, AnswerScorer, final_answer, is_correct, parse_number
from predictors.scorers.base import RewardScorer, ScoringItem


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("First 3 + 4 = 7, then 7 * 2 = 14.", "14"),
        ("So the total is 1,234 apples.", "1,234"),
        ("Work: 12 - 5 = 7\n#### 7", "7"),
        ("She has 9 left, so \\boxed{9} is it; check: 10 - 1 = 9 and 4", "9"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("Step 1: 5 + 5 = 10.\nAnswer: 10 apples", "10 apples"),
        ("The final answer is: 42.", "42."),
        ("I am not sure.", None),
        ("", None),
    ],
)
def test_final_answer_prefers_marked_answers_then_the_last_number(response: str, expected: str | None) -> None:
    assert final_answer(response) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [("42", 42.0), ("-3.5", -3.5), ("$1,200.50", 1200.5), ("3/4", 0.75), ("12%", 12.0), ("10-3", 10.0), ("none", None)],
)
def test_parse_number(text: str, value: float | None) -> None:
    assert parse_number(text) == value


def test_numbers_compare_within_tolerance_and_ignore_formatting() -> None:
    assert is_correct("so she has 1,500 coins", "1500")
    assert is_correct("Answer: $1500.0", "1500")
    assert is_correct("#### 0.3333333334", "0.3333333333")
    assert not is_correct("#### 0.334", "0.3333333333")
    assert is_correct("#### 0.334", "0.3333333333", rel_tol=0.01)
    assert not is_correct("The answer is 1501", "1500")
    assert is_correct("The answer is 7 (10 - 3).", "7")
    assert is_correct("so 10 - 3 = -7? no: 10 - 3 = 7", "7")
    assert is_correct("it drops to -7", "-7")


def test_a_marked_answer_wins_over_later_numbers() -> None:
    assert is_correct("Answer: 8. (Check: 2 + 2 = 4, 4 * 2 = 8, for 3 boxes)", "8")
    assert not is_correct("Total 8. Then add 3 boxes", "8")


def test_non_numeric_references_match_exactly_after_normalising() -> None:
    assert is_correct("Answer: **Paris**.", "paris")
    assert is_correct("The answer is  New   York", "new york")
    assert not is_correct("Answer: Lyon", "Paris")


def test_an_unparseable_response_is_wrong_not_missing() -> None:
    assert not is_correct("I cannot compute that.", "12")


def test_scorer_rewards_are_zero_one_with_nan_only_without_a_reference() -> None:
    scorer = AnswerScorer({"What is 2+3?": "5", "Capital of France?": "Paris"})
    assert isinstance(scorer, RewardScorer)
    items = [
        ScoringItem("What is 2+3?", "2 + 3 = 5"),
        ScoringItem("What is 2+3?", "It is 6."),
        ScoringItem("What is 2+3?", "no idea"),
        ScoringItem("Capital of France?", "Answer: Paris"),
        ScoringItem("Unknown prompt", "5"),
    ]
    batch = asyncio.run(scorer.score(items))
    assert batch.rewards[:4].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert math.isnan(batch.rewards[4])
    assert batch.errors == [None, None, None, None, NO_REFERENCE]
    assert batch.tokens == 0


def test_from_prompts_reads_a_routing_dataset_answer_column(tmp_path: Path) -> None:
    path = tmp_path / "prompts.parquet"
    pd.DataFrame({"prompt_id": ["a", "b"], "prompt": ["p1", "p2"], "answer": ["12", None]}).to_parquet(path)
    batch = asyncio.run(AnswerScorer.from_prompts(path).score([ScoringItem("p1", "#### 12"), ScoringItem("p2", "12")]))
    assert batch.rewards[0] == 1.0
    assert batch.errors[1] == NO_REFERENCE
