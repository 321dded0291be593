"""Scoring best-of-N answers with a local LLM judge instead of a selector: time per answer.

    erp serve-local --port 8080 --threads 1 &
    ERP_LOCAL_MODEL_KEY=local python -m benchmarks.judge_timing --data ~/.cache/erp-router/arms/best-of-120 \
        --model smollm2@direct --answers 24

Scores ``--answers`` collected answers with the project's ``judge`` scorer (rationale and a 1-10 score;
``judge_logprobs``: one score token) running on the local SmolLM2 server, one call at a time, and prints the
seconds per answer and the judge's output tokens, to set beside the selectors' per-answer cost (best_of_study).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from predictors.scorers.base import ScoringItem
from router.registry import Registry
from router.scoring import build_scorer
from router.selector_fitting import candidate_samples

JUDGE = {"litellm_model": "openai/smollm2", "api_base": "http://127.0.0.1:8080/v1", "api_key_env": "ERP_LOCAL_MODEL_KEY",
         "concurrency": 1, "retries": 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.judge_timing", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--answers", type=int, default=24)
    args = parser.parse_args(argv)
    samples = candidate_samples(args.data, args.model).head(args.answers)
    items = [ScoringItem(row.prompt, row.response, model=args.model) for row in samples.itertuples()]
    registry = Registry.model_validate({
        "shared_predictor": "unused.joblib",
        "models": [{"name": "unused", "litellm_model": "openai/unused", "predictor": "unused.joblib",
                    "input_usd_per_mtok": 0, "output_usd_per_mtok": 0}],
        "scorers": [{"name": "judge", "kind": "judge", "max_tokens": 256, **JUDGE},
                    {"name": "judge_logprobs", "kind": "judge_logprobs", **JUDGE}],
    })
    for name in ("judge_logprobs", "judge"):
        scorer = build_scorer(registry, name)
        started = time.perf_counter()
        batch = asyncio.run(scorer.score(items))
        seconds = (time.perf_counter() - started) / len(items)
        failed = sum(1 for error in batch.errors if error)
        print(f"{name}: {seconds * 1000:.0f} ms per answer, {batch.tokens / len(items):.0f} judge tokens per answer, "
              f"{failed} of {len(items)} unscored")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
