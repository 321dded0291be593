"""Seeded arithmetic word problems with reference answers, written as a routing dataset's prompts.parquet.

Each problem starts with a quantity and applies one to ``--max-steps`` operations (add, subtract, multiply,
divide; at most five), with operands of one to ``--max-digits`` digits (at most four); every intermediate value
is a non-negative integer and divisions are exact. Steps and digits are balanced over the set (category
``N-step``, source ``D-digit``). Distinct number-free filler sentences are mixed in, more of them on average
the fewer the steps (0 to ``max_steps - steps + 2``), so a prompt's length says little about how hard it is.
With ``--style expression`` the same operations are written as one bracketed expression instead ("What is
(7 + 5) * 3?"), the form a very small model can sometimes do.

    python -m benchmarks.arithmetic_problems --n 600 --seed 0 --out data/arithmetic
    python -m benchmarks.arithmetic_problems --n 300 --max-steps 3 --max-digits 2 --style expression --out data/expr

writes ``DIR/prompts.parquet`` with ``prompt_id, prompt, category, source, prompt_chars, answer`` (the
answer as a string, read by ``predictors.scorers.answer.AnswerScorer``). The same seed gives the same file.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

MAX_STEPS = 5
MAX_DIGITS = 4
NAMES = [("Ana", "she"), ("Ben", "he"), ("Chloe", "she"), ("Dev", "he"), ("Elif", "she"), ("Femi", "he"), ("Greta", "she"), ("Hugo", "he")]
ITEMS = ["apples", "stickers", "marbles", "coins", "books", "stamps", "shells", "pencils", "cards", "beads"]
START = ["{Name} has {n} {item}.", "At the start of the week, {name} owns {n} {item}.", "{Name} keeps {n} {item} in a box."]
TEMPLATES = {
    "add": ["Then {name} buys {n} more {item}.", "A friend gives {name} another {n} {item}.", "Later {pronoun} finds {n} more {item}."],
    "sub": ["Then {name} sells {n} of the {item}.", "After that {pronoun} gives away {n} {item}.", "Sadly, {n} of the {item} get lost."],
    "mul": ["Then {name} ends up with {n} times as many {item} as before.", "Over the month the number of {item} grows to {n} times what it was."],
    "div": ["Then {name} splits the {item} equally into {n} groups and keeps just one group.", "After that {pronoun} shares the {item} equally among {n} friends, {pronoun} included, and keeps only {pronoun_pos} share."],
}
QUESTIONS = ["How many {item} does {name} have now?", "How many {item} are there at the end?", "What is the number of {item} {name} has in the end?"]
FILLERS = [
    "The weather that day was mild and pleasant.",
    "{Name} likes to keep everything neatly sorted.",
    "Nobody else in the family collects {item}.",
    "The shop on the corner opens early in the morning.",
    "{Pronoun} writes everything down in a small notebook.",
    "It is the kind of hobby that takes patience.",
    "{Name} has been doing this since last spring.",
    "Everyone at school knows about the collection.",
]


@dataclass(frozen=True)
class Step:
    """One operation applied to the running quantity: op in add, sub, mul, div."""

    op: str
    operand: int


@dataclass(frozen=True)
class Problem:
    """A word problem, the operations it encodes in order, and its integer answer."""

    prompt_id: str
    text: str
    start: int
    steps: tuple[Step, ...]
    digits: int
    answer: int


def apply(value: int, step: Step) -> int:
    """The running quantity after one step (divisions are exact by construction)."""
    if step.op == "add":
        return value + step.operand
    if step.op == "sub":
        return value - step.operand
    if step.op == "mul":
        return value * step.operand
    return value // step.operand


def _operand(rng: np.random.Generator, digits: int) -> int:
    low = 10 ** (digits - 1) if digits > 1 else 2
    return int(rng.integers(low, 10**digits))


def _next_step(rng: np.random.Generator, value: int, digits: int) -> Step:
    """A random valid operation: no negative values, exact divisions, multipliers growing with digits."""
    max_factor = (5, 9, 12, 19)[digits - 1]
    ops = ["add", "sub", "mul", "div"]
    rng.shuffle(ops)
    for op in ops:
        if op in ("add", "sub"):
            operand = _operand(rng, digits)
            if op == "add" or operand <= value:
                return Step(op, operand)
        elif op == "mul" and value < 10 ** (digits + 2):
            return Step(op, int(rng.integers(2, max_factor + 1)))
        elif op == "div":
            divisors = [k for k in range(2, max_factor + 1) if value % k == 0 and value // k > 0]
            if divisors:
                return Step(op, int(rng.choice(divisors)))
    return Step("add", _operand(rng, digits))


def _sentence(rng: np.random.Generator, options: list[str], words: dict[str, str], n: int | None = None) -> str:
    text = str(rng.choice(options)).format(n=n, **words)
    return text[0].upper() + text[1:]


def make_problem(rng: np.random.Generator, steps: int, digits: int, prompt_id: str, max_steps: int = MAX_STEPS) -> Problem:
    """One problem with `steps` operations on `digits`-digit operands, in randomly chosen words."""
    name, pronoun = NAMES[int(rng.integers(len(NAMES)))]
    words = {"name": name, "Name": name, "pronoun": pronoun, "Pronoun": pronoun.capitalize(),
             "pronoun_pos": {"she": "her", "he": "his"}[pronoun], "item": str(rng.choice(ITEMS))}
    value = start = _operand(rng, digits)
    sentences = [_sentence(rng, START, words, start)]
    operations = []
    for _ in range(steps):
        step = _next_step(rng, value, digits)
        operations.append(step)
        value = apply(value, step)
        sentences.append(_sentence(rng, TEMPLATES[step.op], words, step.operand))
    fillers = rng.permutation(len(FILLERS))[: int(rng.integers(0, max_steps - steps + 3))]
    for index in fillers:
        sentences.insert(int(rng.integers(1, len(sentences) + 1)), _sentence(rng, [FILLERS[index]], words))
    sentences.append(_sentence(rng, QUESTIONS, words))
    return Problem(prompt_id, " ".join(sentences), start, tuple(operations), digits, value)


SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def make_expression(rng: np.random.Generator, steps: int, digits: int, prompt_id: str) -> Problem:
    """One problem with `steps` operations on `digits`-digit operands, as a bracketed expression."""
    value = start = _operand(rng, digits)
    text, operations = str(start), []
    for i in range(steps):
        step = _next_step(rng, value, digits)
        operations.append(step)
        value = apply(value, step)
        text = f"{text} {SYMBOLS[step.op]} {step.operand}" if i == 0 else f"({text}) {SYMBOLS[step.op]} {step.operand}"
    return Problem(prompt_id, f"What is {text}?", start, tuple(operations), digits, value)


def generate(
    n: int, seed: int, max_steps: int = MAX_STEPS, max_digits: int = MAX_DIGITS, style: str = "words"
) -> list[Problem]:
    """`n` problems, steps and digits cycling over 1..max_steps x 1..max_digits, then shuffled; seeded."""
    if not (1 <= max_steps <= MAX_STEPS and 1 <= max_digits <= MAX_DIGITS):
        raise ValueError(f"max_steps must be in 1..{MAX_STEPS} and max_digits in 1..{MAX_DIGITS}")
    rng = np.random.default_rng(seed)
    grid = [(1 + i % max_steps, 1 + (i // max_steps) % max_digits) for i in range(n)]
    order = rng.permutation(n)
    if style == "expression":
        return [make_expression(rng, *grid[j], f"expr-s{seed}-{i:05d}") for i, j in enumerate(order)]
    return [make_problem(rng, *grid[j], f"arith-s{seed}-{i:05d}", max_steps) for i, j in enumerate(order)]


def to_frame(problems: list[Problem]) -> pd.DataFrame:
    """The routing-dataset prompts table: category = steps, source = operand digits, answer as text."""
    return pd.DataFrame(
        {
            "prompt_id": [p.prompt_id for p in problems],
            "prompt": [p.text for p in problems],
            "category": [f"{len(p.steps)}-step" for p in problems],
            "source": [f"{p.digits}-digit" for p in problems],
            "prompt_chars": [len(p.text) for p in problems],
            "answer": [str(p.answer) for p in problems],
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.arithmetic_problems", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=600, help="number of problems")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS, help=f"most operations per problem (1..{MAX_STEPS})")
    parser.add_argument("--max-digits", type=int, default=MAX_DIGITS, help=f"most digits per operand (1..{MAX_DIGITS})")
    parser.add_argument("--style", choices=("words", "expression"), default="words", help="word problems or bracketed expressions")
    parser.add_argument("--out", required=True, help="folder for prompts.parquet")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    try:
        frame = to_frame(generate(args.n, args.seed, args.max_steps, args.max_digits, args.style))
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / "prompts.parquet", index=False)
    print(f"wrote {len(frame)} problems to {out / 'prompts.parquet'}")
    print(frame.groupby(["category", "source"]).size().unstack(fill_value=0).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
