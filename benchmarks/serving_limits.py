"""Serving limits: a key budget under a burst of concurrent requests, and the proxy's memory over a long soak.

    python -m benchmarks.serving_limits --data ../shared/data/zeroeval [--requests 20000] [--concurrency 16]

Everything listens on 127.0.0.1. The stub upstream answers every request with 300 distinct words (long
answers), honouring ``max_tokens``. Budget: 200 concurrent requests (routed and named models, no
``max_tokens``) with a key whose budget is 0.005 USD, against one proxy (in-process store) and against two
proxies sharing Redis (database 12 of the local server, emptied first); the spend is read from the proxy's
metrics or from Redis. Soak: ``--requests`` routed requests with distinct real prompts at ``--concurrency``,
the proxy's resident memory (VmRSS) read from /proc after the first 1,000 and then every 2,500.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.proxy_overhead import _process, free_port
from benchmarks.serving_setup import UPSTREAM_KEY_ENV, bench_registry

REPO = Path(__file__).resolve().parents[1]
BUDGET_USD = 0.005
BUDGET_REDIS_URL = "redis://127.0.0.1:6379/12"
NAMED = "gpt-4o-mini-2024-07-18"


def _with_keys(registry: Path) -> None:
    document = yaml.safe_load(registry.read_text())
    document["serving"] = {
        "api_keys": [
            {"name": "capped", "key_env": "BENCH_CAPPED_KEY", "budget_usd": BUDGET_USD},
            {"name": "soak", "key_env": "BENCH_SOAK_KEY"},
        ]
    }
    registry.write_text(yaml.safe_dump(document, sort_keys=False))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def _burst(urls: list[str], count: int, max_tokens: int | None) -> dict[int, int]:
    cap = {"max_tokens": max_tokens} if max_tokens else {}
    bodies = [{"model": "erp", **cap}, {"model": NAMED, **cap}]
    headers = {"authorization": "Bearer sk-bench-capped"}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=count)) as client:
        calls = [
            client.post(
                f"{urls[i % len(urls)]}/v1/chat/completions",
                json={**bodies[i % 2], "messages": [{"role": "user", "content": f"Explain topic {i} at length."}]},
                headers=headers,
            )
            for i in range(count)
        ]
        responses = await asyncio.gather(*calls)
    statuses: dict[int, int] = {}
    for response in responses:
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    return statuses


def _metric_spend(url: str, key: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "erp_spend_usd_total" and sample.labels.get("api_key") == key
    )


async def _soak(url: str, prompts: list[str], total: int, concurrency: int, pid: int) -> list[tuple[int, float]]:
    done, samples = 0, []
    checkpoints = {1_000, *range(2_500, total + 1, 2_500), total}
    headers = {"authorization": "Bearer sk-bench-soak"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def worker() -> None:
            nonlocal done
            while not queue.empty():
                i = queue.get_nowait()
                prompt = f"{prompts[i % len(prompts)]}\n(request {i})"
                body = {"model": "erp", "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
                response = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
                response.raise_for_status()
                done += 1
                if done in checkpoints:
                    samples.append((done, _rss_mb(pid)))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


def _proxy(stack: ExitStack, registry: Path, env: dict, workdir: Path, name: str) -> tuple[str, int]:
    port = free_port()
    command = [str(Path(sys.executable).parent / "erp"), "serve", "--registry", str(registry), "--port", str(port)]
    process = stack.enter_context(_process(command, f"http://127.0.0.1:{port}/healthz", env, workdir / f"{name}.log"))
    return f"http://127.0.0.1:{port}", process.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "zeroeval")
    parser.add_argument("--registry", type=Path, default=REPO / "model_registry.yaml")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "erp-serving-limits")
    args = parser.parse_args()
    import pandas as pd

    stub_port = free_port()
    registry = bench_registry(args.registry, args.workdir / "pool", args.data, api_base=f"http://127.0.0.1:{stub_port}/v1")
    _with_keys(registry)
    env = {**os.environ, UPSTREAM_KEY_ENV: "bench", "BENCH_CAPPED_KEY": "sk-bench-capped", "BENCH_SOAK_KEY": "sk-bench-soak",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("REDIS_URL", None)
    results: dict = {}
    with ExitStack() as stack:
        stub = [sys.executable, "tests/stub_upstream.py", "--port", str(stub_port), "--answer-words", "300"]
        stack.enter_context(_process(stub, f"http://127.0.0.1:{stub_port}/docs", env, args.workdir / "stub.log"))
        shared = redis.Redis.from_url(BUDGET_REDIS_URL)
        for max_tokens in (None, 400):
            label = f"max_tokens={max_tokens}" if max_tokens else "no max_tokens"
            with ExitStack() as single:
                url, _ = _proxy(single, registry, env, args.workdir, "budget-one")
                statuses = asyncio.run(_burst([url], 200, max_tokens))
                results[f"one replica, {label}"] = {"statuses": statuses, "spent_usd": _metric_spend(url, "capped")}
            shared.flushdb()
            with ExitStack() as pair:
                redis_env = {**env, "REDIS_URL": BUDGET_REDIS_URL}
                urls = [_proxy(pair, registry, redis_env, args.workdir, f"budget-{i}")[0] for i in range(2)]
                statuses = asyncio.run(_burst(urls, 200, max_tokens))
                spent = int(shared.get("erp:spend:key:capped") or 0) / 1e9
                results[f"two replicas on Redis, {label}"] = {"statuses": statuses, "spent_usd": spent}
            shared.flushdb()
        texts = pd.read_parquet(args.data / "prompts.parquet")["prompt"].tolist()
        url, pid = _proxy(stack, registry, env, args.workdir, "soak")
        started = time.perf_counter()
        samples = asyncio.run(_soak(url, texts, args.requests, args.concurrency, pid))
        results["soak"] = {"requests": args.requests, "concurrency": args.concurrency,
                           "seconds": round(time.perf_counter() - started, 1), "rss_mb": samples}
    print(json.dumps(results, indent=2))
    for name, row in results.items():
        if name == "soak":
            continue
        print(f"{name}: spent {row['spent_usd']:.6f} of {BUDGET_USD} USD ({row['spent_usd'] / BUDGET_USD:.3f}x), "
              f"statuses {row['statuses']}")
    first, last = samples[0][1], samples[-1][1]
    print(f"soak: RSS {first:.1f} MB after 1,000 requests, {last:.1f} MB after {args.requests:,} (+{last - first:.1f} MB)")


if __name__ == "__main__":
    main()
