"""The seeded arithmetic problem generator: deterministic, correct answers, varied difficulty."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from benchmarks.arithmetic_problems import MAX_DIGITS, MAX_STEPS, generate, main
from predictors.dataset import PROMPT_COLUMNS

OPS = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b, "div": lambda a, b: a / b}


def test_the_same_seed_gives_the_same_problems_and_another_seed_others() -> None:
    assert generate(50, seed=3) == generate(50, seed=3)
    assert [p.text for p in generate(50, seed=3)] != [p.text for p in generate(50, seed=4)]


def test_answers_recompute_from_the_numbers_in_the_text() -> None:
    for problem in generate(400, seed=1):
        numbers = [int(n) for n in re.findall(r"\d+", problem.text)]
        assert numbers == [problem.start, *(step.operand for step in problem.steps)], problem.text
        values = [problem.start]
        for step in problem.steps:
            values.append(OPS[step.op](values[-1], step.operand))
        assert all(v >= 0 and float(v).is_integer() for v in values), problem.text
        assert values[-1] == problem.answer


def test_every_step_count_and_number_size_appears_evenly() -> None:
    problems = generate(200, seed=0)
    counts = pd.Series([(len(p.steps), p.digits) for p in problems]).value_counts()
    assert len(counts) == MAX_STEPS * MAX_DIGITS
    assert counts.max() - counts.min() <= 1
    ops = {step.op for p in problems for step in p.steps}
    assert ops == {"add", "sub", "mul", "div"}


def test_length_says_little_about_the_number_of_steps() -> None:
    problems = generate(600, seed=0)
    frame = pd.DataFrame({"steps": [len(p.steps) for p in problems], "chars": [len(p.text) for p in problems]})
    assert frame.corr(method="spearman").loc["steps", "chars"] < 0.6
    by_steps = frame.groupby("steps")["chars"]
    assert by_steps.max()[1] > by_steps.median()[MAX_STEPS], "some one-step problems are longer than a typical five-step one"


def test_the_command_writes_a_routing_dataset_prompts_table(tmp_path: Path) -> None:
    assert main(["--n", "40", "--seed", "0", "--out", str(tmp_path)]) == 0
    frame = pd.read_parquet(tmp_path / "prompts.parquet")
    assert set(PROMPT_COLUMNS) | {"source", "prompt_chars", "answer"} <= set(frame.columns)
    assert len(frame) == 40 and frame["prompt_id"].is_unique
    assert (frame["prompt_chars"] == frame["prompt"].str.len()).all()
    assert frame["answer"].str.fullmatch(r"\d+").all()
    assert set(frame["category"]) == {f"{s}-step" for s in range(1, MAX_STEPS + 1)}
    assert set(frame["source"]) == {f"{d}-digit" for d in range(1, MAX_DIGITS + 1)}
