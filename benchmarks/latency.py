"""Decision latency of ``Router.route()`` at about 50, 500 and 2,000 prompt tokens: p50 and p99, uncached and cached.

    taskset -c 0 python -m benchmarks.latency --data ../shared/data/zeroeval --embedding minilm-static minilm

Pin it to one core (taskset); it sets every thread pool to one thread itself. The pool of
model_registry.yaml is refitted per encoder into --workdir. Prompts are real dataset prompts stitched to
the target length. Every uncached call gets a prompt never seen before, so neither the router's cache nor
the encoder's on-disk cache (pointed at a scratch folder here) can answer; cached calls repeat one prompt.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.serving_setup import bench_registry  # noqa: E402
from predictors.dataset import CHARS_PER_TOKEN  # noqa: E402
from predictors.embedding import default_cache_dir  # noqa: E402
from router.engine import RoutingEngine  # noqa: E402
from router.sdk import Router  # noqa: E402
from router.store import MemoryStore  # noqa: E402

SIZES = (50, 500, 2000)


def prompt_of_length(pool: list[str], tokens: int, rng: np.random.Generator) -> str:
    """Real prompts joined until the text has ``tokens`` * CHARS_PER_TOKEN characters, with a unique tag."""
    target = int(tokens * CHARS_PER_TOKEN)
    parts: list[str] = [f"[{rng.integers(1 << 62):x}]"]
    while sum(map(len, parts)) < target:
        parts.append(pool[rng.integers(len(pool))])
    return " ".join(parts)[:target]


def measure(router: Router, prompts: list[str]) -> np.ndarray:
    times = []
    for prompt in prompts:
        started = time.perf_counter()
        router.route([{"role": "user", "content": prompt}])
        times.append((time.perf_counter() - started) * 1000)
    return np.array(times)


def scratch_encoder_cache() -> Path:
    """An empty embedding cache that reuses the distilled static model (so nothing is distilled again)."""
    scratch = Path(tempfile.mkdtemp(prefix="erp-latency-cache-"))
    (default_cache_dir() / "encoders").mkdir(parents=True, exist_ok=True)
    (scratch / "encoders").symlink_to(default_cache_dir() / "encoders", target_is_directory=True)
    return scratch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="routing dataset to fit on and draw prompts from")
    parser.add_argument("--registry", type=Path, default=Path("model_registry.yaml"), help="pool to copy")
    parser.add_argument("--embedding", nargs="+", default=["minilm-static", "minilm"])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "erp-bench")
    parser.add_argument("--uncached", type=int, default=200, help="calls per size with fresh prompts")
    parser.add_argument("--cached", type=int, default=1000, help="calls per size with a repeated prompt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    texts = pd.read_parquet(args.data / "prompts.parquet")["prompt"].tolist()
    cache_dir = scratch_encoder_cache()
    affinity = sorted(os.sched_getaffinity(0))
    print(f"cpus allowed: {affinity}; torch threads: {torch.get_num_threads()}\n")
    print("| encoder | prompt tokens | uncached p50 ms | uncached p99 ms | cached p50 ms | cached p99 ms |")
    print("|---|---|---|---|---|---|")
    for embedding in args.embedding:
        registry = bench_registry(args.registry, args.workdir / embedding, args.data, embedding=embedding)
        router = Router(RoutingEngine.from_registry(registry, cache_dir=cache_dir), MemoryStore())
        rng = np.random.default_rng(args.seed)
        measure(router, [prompt_of_length(texts, 500, rng) for _ in range(20)])  # warm-up
        for tokens in SIZES:
            uncached = measure(router, [prompt_of_length(texts, tokens, rng) for _ in range(args.uncached)])
            repeated = prompt_of_length(texts, tokens, rng)
            cached = measure(router, [repeated] * (args.cached + 1))[1:]
            print(
                f"| {embedding} | {tokens} | {np.percentile(uncached, 50):.2f} | {np.percentile(uncached, 99):.2f} "
                f"| {np.percentile(cached, 50):.3f} | {np.percentile(cached, 99):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
