"""Proxy overhead: the same chat requests sent straight to a stub upstream, through ``erp serve`` and through
LiteLLM's own proxy (``litellm --config``), at concurrency 1, 8 and 32.

    python -m benchmarks.proxy_overhead --data ../shared/data/zeroeval

Everything listens on 127.0.0.1 only. The proxies run on CPU 0; the stub upstream and the load generator
(a separate process, bounded by a request count and a time limit per run) share CPU 1. Requests are
non-streaming, carry real dataset prompts and ask for at most 64 tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o-mini-2024-07-18"
TARGETS = [
    # (label, base URL key, request model, prompts: fresh per request or a repeated set)
    ("stub upstream, direct", "stub", MODEL, "fresh"),
    ("erp proxy, model=erp (uncached decisions)", "erp", "erp", "fresh"),
    ("erp proxy, model=erp (cached decisions)", "erp", "erp", "repeated"),
    (f"erp proxy, model={MODEL} (no routing)", "erp", MODEL, "fresh"),
    (f"LiteLLM proxy, model={MODEL}", "litellm", MODEL, "fresh"),
]


async def _load(url: str, model: str, prompts: list[str], concurrency: int, max_seconds: float, key: str) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    pending = iter(prompts)
    deadline = time.perf_counter() + max_seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker() -> None:
            for prompt in pending:
                if time.perf_counter() > deadline:
                    return
                body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
                started = time.perf_counter()
                try:
                    async with session.post(url, json=body, headers={"authorization": f"Bearer {key}"}) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    errors.append(type(exc).__name__)
                    continue
                if status == 200:
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    errors.append(str(status))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"latencies_ms": latencies, "errors": errors, "elapsed_s": elapsed}


def loadgen(args: argparse.Namespace) -> None:
    """The load generator process: prints one JSON result line."""
    prompts = json.loads(Path(args.prompts).read_text())
    key = os.environ["ERP_BENCH_CLIENT_KEY"]
    result = asyncio.run(_load(args.url, args.model, prompts, args.concurrency, args.max_seconds, key))
    print(json.dumps(result))


@contextmanager
def _process(command: list[str], ready_url: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Start a server process, wait until ``ready_url`` answers 200, stop it afterwards."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}; see {log}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ready_url} did not come up; see {log}")
            time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _litellm_config(path: Path, stub_url: str, registry: Path, master_key: str) -> Path:
    import yaml

    names = [model["name"] for model in yaml.safe_load(registry.read_text())["models"]]
    models = [
        {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": stub_url, "api_key": "bench"}}
        for name in names
    ]
    settings = {
        "model_list": models,
        "litellm_settings": {"num_retries": 0},
        "general_settings": {"master_key": master_key},
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def _run_load(
    url: str, model: str, prompts: list[str], concurrency: int, max_seconds: float, workdir: Path, env: dict
) -> dict:
    prompts_file = workdir / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    command = [
        "taskset",
        "-c",
        "1",
        sys.executable,
        "-m",
        "benchmarks.proxy_overhead",
        "loadgen",
        "--url",
        url,
        "--model",
        model,
        "--prompts",
        str(prompts_file),
        "--concurrency",
        str(concurrency),
        "--max-seconds",
        str(max_seconds),
    ]
    output = subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def orchestrate(args: argparse.Namespace) -> None:
    import pandas as pd

    from benchmarks.serving_setup import UPSTREAM_KEY_ENV, bench_registry

    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("stub", "erp", "litellm")}
    stub_url = f"http://127.0.0.1:{ports['stub']}/v1"
    registry = bench_registry(args.registry, workdir / "pool", args.data, api_base=stub_url)
    client_key = f"sk-{secrets.token_hex(32)}"
    config = _litellm_config(workdir / "litellm_config.yaml", stub_url, registry, client_key)
    env = {
        **os.environ,
        UPSTREAM_KEY_ENV: "bench",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("REDIS_URL", None)
    env.update(ERP_API_KEYS=client_key, ERP_BENCH_CLIENT_KEY=client_key)  # both proxies check the client's key
    texts = pd.read_parquet(args.data / "prompts.parquet")["prompt"].tolist()
    with ExitStack() as stack:
        _start_services(stack, ports, registry, config, env, workdir, args.litellm)
        urls = {name: f"http://127.0.0.1:{port}/v1/chat/completions" for name, port in ports.items()}
        _measure(args, urls, texts, workdir, env)


def _start_services(
    stack: ExitStack, ports: dict[str, int], registry: Path, config: Path, env: dict, workdir: Path, litellm: Path | None
) -> None:
    """The stub upstream on core 1; the ERP proxy and LiteLLM's proxy on core 0; each stopped when ``stack`` closes."""
    bin_dir = Path(sys.executable).parent
    services = {
        "stub": (
            ["taskset", "-c", "1", sys.executable, "tests/stub_upstream.py", "--port", str(ports["stub"])],
            "/docs",
        ),
        "erp": (
            ["taskset", "-c", "0", str(bin_dir / "erp"), "serve", "--registry", str(registry), "--port", str(ports["erp"])],
            "/healthz",
        ),
        "litellm": (
            ["taskset", "-c", "0", str(litellm or bin_dir / "litellm"), "--config", str(config), "--port", str(ports["litellm"]),
             "--host", "127.0.0.1", "--num_workers", "1"],
            "/health/liveliness",
        ),
    }
    for name, (command, ready_path) in services.items():
        stack.enter_context(_process(command, f"http://127.0.0.1:{ports[name]}{ready_path}", env, workdir / f"{name}.log"))


def _measure(args: argparse.Namespace, urls: dict[str, str], texts: list[str], workdir: Path, env: dict) -> None:
    """Print one table row per (concurrency, target): latency percentiles, the latency added over the stub, throughput."""
    rng = np.random.default_rng(0)
    print("| target | concurrency | requests | errors | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        count = args.requests * max(1, concurrency // 8) if concurrency > 1 else args.requests
        direct = None
        for label, target, model, kind in TARGETS:
            fresh = [f"[{rng.integers(1 << 62):x}] {texts[rng.integers(len(texts))]}" for _ in range(count)]
            repeated = fresh[: args.repeat_set]
            prompts = fresh if kind == "fresh" else [repeated[i % len(repeated)] for i in range(count)]
            warmup = repeated if kind == "repeated" else [f"warm-up {i}: {texts[i]}" for i in range(20)]
            _run_load(urls[target], model, warmup, 1, args.max_seconds, workdir, env)
            result = _run_load(urls[target], model, prompts, concurrency, args.max_seconds, workdir, env)
            latencies = np.array(result["latencies_ms"])
            p50, p99 = (np.percentile(latencies, q) for q in (50, 99)) if len(latencies) else (np.nan, np.nan)
            direct = (p50, p99) if target == "stub" else direct
            added = f"{p50 - direct[0]:.1f} | {p99 - direct[1]:.1f}" if target != "stub" else "- | -"
            print(
                f"| {label} | {concurrency} | {len(latencies)} | {len(result['errors'])} | {p50:.1f} | "
                f"{p99:.1f} | {added} | {len(latencies) / result['elapsed_s']:.0f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    load = sub.add_parser("loadgen", help="(internal) the load generator process")
    load.add_argument("--url", required=True)
    load.add_argument("--model", required=True)
    load.add_argument("--prompts", required=True)
    load.add_argument("--concurrency", type=int, required=True)
    load.add_argument("--max-seconds", type=float, required=True)
    parser.add_argument("--data", type=Path, help="routing dataset to fit on and draw prompts from")
    parser.add_argument("--registry", type=Path, default=REPO / "model_registry.yaml", help="pool to copy")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "erp-bench-proxy")
    parser.add_argument(
        "--litellm", type=Path, help="LiteLLM proxy executable (default: this venv's; its `bench` extra pins may clash)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=300, help="requests per run at concurrency 1 and 8")
    parser.add_argument("--repeat-set", type=int, default=50, help="distinct prompts of the cached-decision run")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time limit of each run")
    args = parser.parse_args()
    if args.command == "loadgen":
        loadgen(args)
        return
    if args.data is None:
        parser.error("--data is required")
    orchestrate(args)


if __name__ == "__main__":
    main()
