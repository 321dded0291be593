"""How SmolLM2 fares on generated arithmetic at three reasoning budgets ("arms"), through LiteLLM.

    python -m benchmarks.local_arms_probe --n 40 --seed 0 [--threads 2] [--base-url http://127.0.0.1:8080/v1] [--out FILE.json]

Without --base-url it starts the local llama.cpp server itself (router.local_model). Every problem is asked
greedily (temperature 0) once per arm; answers are graded by predictors.scorers.answer. Per arm it reports
accuracy (overall and by number of steps), mean output tokens, the share cut off by max_tokens, and
generation speed (output tokens / wall seconds of the calls, prompt processing included).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks.arithmetic_problems import Problem, generate
from predictors.litellm_offline import litellm
from predictors.scorers.answer import is_correct
from router.local_model import LocalModelServer, LocalServerConfig

DIRECT = "{problem}\nAnswer with just the number."
STEPS = "{problem}\nSolve it step by step, then give the final answer on its own line as 'Answer: <number>'."


@dataclass(frozen=True)
class Arm:
    """A named way to call the model: a prompt template and an output budget."""

    name: str
    template: str
    max_tokens: int


ARMS = (Arm("direct-16", DIRECT, 16), Arm("steps-128", STEPS, 128), Arm("steps-512", STEPS, 512))


def ask(problem: Problem, arm: Arm, model: str, base_url: str) -> dict:
    """One greedy call; the row records correctness, output tokens, truncation and wall seconds."""
    started = time.perf_counter()
    response = litellm.completion(
        model=model,
        api_base=base_url,
        api_key="none",
        messages=[{"role": "user", "content": arm.template.format(problem=problem.text)}],
        max_tokens=arm.max_tokens,
        temperature=0.0,
        timeout=120,
    )
    choice = response.choices[0]
    return {
        "arm": arm.name,
        "prompt_id": problem.prompt_id,
        "steps": len(problem.steps),
        "correct": is_correct(choice.message.content or "", str(problem.answer)),
        "output_tokens": response.usage.completion_tokens,
        "truncated": choice.finish_reason == "length",
        "seconds": time.perf_counter() - started,
    }


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per arm: accuracy, accuracy by steps, mean output tokens, truncated share, tokens per second."""
    arms = rows.groupby("arm", sort=False)
    summary = pd.DataFrame(
        {
            "accuracy": arms["correct"].mean(),
            "mean_output_tokens": arms["output_tokens"].mean(),
            "truncated": arms["truncated"].mean(),
            "tokens_per_s": arms["output_tokens"].sum() / arms["seconds"].sum(),
        }
    )
    by_steps = rows.pivot_table(index="arm", columns="steps", values="correct", aggfunc="mean", sort=False)
    return summary.join(by_steps.rename(columns=lambda s: f"acc_{s}_step"))


def run(problems: list[Problem], model: str, base_url: str) -> pd.DataFrame:
    """Every problem under every arm, in order."""
    rows = []
    for arm in ARMS:
        rows += [ask(problem, arm, model, base_url) for problem in problems]
        print(f"{arm.name}: {sum(row['correct'] for row in rows[-len(problems):])}/{len(problems)} right", flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.local_arms_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40, help="problems (benchmarks.arithmetic_problems)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-url", help="a running server's /v1 URL (default: start one)")
    parser.add_argument("--model", default="openai/smollm2", help="LiteLLM model name on that server")
    parser.add_argument("--threads", type=int, default=2, help="generation threads of the server it starts")
    parser.add_argument("--out", help="write the per-call rows and the summary here as JSON")
    args = parser.parse_args(argv)
    problems = generate(args.n, args.seed)
    if args.base_url:
        rows = run(problems, args.model, args.base_url)
    else:
        with LocalModelServer(LocalServerConfig(n_threads=args.threads)) as server:
            rows = run(problems, server.litellm_model, server.base_url)
    summary = summarize(rows)
    print(summary.round(3).to_string())
    if args.out:
        document = {"rows": rows.to_dict("records"), "summary": summary.reset_index().to_dict("records")}
        Path(args.out).write_text(json.dumps(document, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
