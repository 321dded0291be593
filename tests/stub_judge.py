"""Synthetic noisy-oracle judges for the stub upstream, to exercise the scorer benchmark without API keys.

Items carry their id in the prompt ("Demo question 17: ...") and their 0/1 label in a lookup table. The
slow judge (`SLOW_MODEL`) is right 95% of the time; the fast log-probability judge (`FAST_MODEL`) gets a
per-item difficulty d ~ U(0, 1), is wrong with probability 0.5 d, and puts 0.95 - 0.45 d on its top token,
so its certainty tells which of its scores to distrust. The numbers this produces show the hybrid's
mechanism, not any real judge's quality.

    python tests/stub_judge.py --port 9000 --demo /tmp/scorer-demo

writes labeled.jsonl, calibration.jsonl and model_registry.yaml there and serves the judges on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import uvicorn
import yaml
from stub_upstream import StubState, create_stub_app

SLOW_MODEL, FAST_MODEL = "demo-slow-judge", "demo-fast-judge"
_ITEM = re.compile(r"Demo question (\d+):")


def demo_rows(start: int, n: int, seed: int = 0) -> list[dict]:
    """Labeled rows (prompt, response, label); about 60% of responses are good."""
    labels = np.random.default_rng(seed + start).uniform(size=n) < 0.6
    return [
        {"prompt": f"Demo question {i}: what is {i} squared?", "response": f"It is {i * i}.", "label": int(label)}
        for i, label in zip(range(start, start + n), labels, strict=True)
    ]


def item_id(messages: list[dict]) -> int:
    return int(_ITEM.search(" ".join(str(m.get("content")) for m in messages)).group(1))


def _verdict(label: int, right: bool) -> int:
    """A score on the side of the label when right, on the other side when wrong."""
    return 9 if bool(label) == right else 2


def script_judges(state: StubState, labels: dict[int, int]) -> None:
    """Make the stub answer SLOW_MODEL and FAST_MODEL as noisy oracles of `labels` (item id -> 0/1)."""

    def slow(messages: list[dict]) -> str:
        i = item_id(messages)
        right = np.random.default_rng([i, 1]).uniform() > 0.05
        return json.dumps({"rationale": "synthetic verdict", "score": _verdict(labels[i], right)})

    def fast(messages: list[dict]) -> dict[str, float]:
        i = item_id(messages)
        difficulty, draw = np.random.default_rng([i, 2]).uniform(size=2)
        top = _verdict(labels[i], right=draw > 0.5 * difficulty)
        mass = 0.95 - 0.45 * difficulty
        return {str(top): mass, str(11 - top): 0.95 - mass, "The": 0.05}

    state.replies[SLOW_MODEL] = slow
    state.logprobs[FAST_MODEL] = fast


def demo_registry(api_base: str, key_env: str = "ERP_DEMO_JUDGE_KEY") -> dict:
    """A registry whose hybrid pairs the two synthetic judges (no ERP check: no fitted pool needed)."""
    judge = {"api_base": api_base, "api_key_env": key_env, "backoff_s": 0.05}
    return {
        "shared_predictor": "artifacts/shared.joblib",
        "models": [
            {
                "name": "demo-model",
                "litellm_model": "openai/demo-model",
                "input_usd_per_mtok": 0.1,
                "output_usd_per_mtok": 0.2,
                "predictor": "artifacts/demo-model.joblib",
            }
        ],
        "scorers": [
            {"name": "slow", "kind": "judge", "litellm_model": f"openai/{SLOW_MODEL}", **judge},
            {"name": "fast", "kind": "judge_logprobs", "litellm_model": f"openai/{FAST_MODEL}", **judge},
            {
                "name": "hybrid",
                "kind": "hybrid",
                "fast": "fast",
                "slow": "slow",
                "use_erp": False,
                "target_slow_fraction": 0.3,
                "thresholds": "hybrid-thresholds.json",
            },
        ],
    }


def write_demo(directory: Path, api_base: str, n_calibration: int = 300, n_labeled: int = 400) -> dict[int, int]:
    """calibration.jsonl, labeled.jsonl and model_registry.yaml; returns every item's label."""
    directory.mkdir(parents=True, exist_ok=True)
    labels: dict[int, int] = {}
    files = (("calibration.jsonl", demo_rows(0, n_calibration)), ("labeled.jsonl", demo_rows(10_000, n_labeled)))
    for name, rows in files:
        (directory / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
        labels.update({item_id([{"content": row["prompt"]}]): row["label"] for row in rows})
    (directory / "model_registry.yaml").write_text(yaml.safe_dump(demo_registry(api_base), sort_keys=False))
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description="Stub upstream with synthetic noisy-oracle judges on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--demo", type=Path, required=True, help="folder for the demo data and registry")
    args = parser.parse_args()
    state = StubState()
    script_judges(state, write_demo(args.demo, f"http://127.0.0.1:{args.port}/v1"))
    print(f"demo data and registry in {args.demo}; export ERP_DEMO_JUDGE_KEY=stub before running the benchmark")
    uvicorn.run(create_stub_app(state), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
