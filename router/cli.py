"""The ``erp`` command: fit predictors, route a prompt, run offline simulations, collect a dataset.

Bad input exits with code 2 and a one-line message; no tracebacks. ``erp collect`` exits 1 when some
(prompt, model, sample) triples failed and the dataset holds only the rest.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from predictors.token_features import TokenFeatureSource

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_REGISTRY = "model_registry.yaml"


class UsageError(Exception):
    """Input the user can fix; printed as one line, exit code 2."""


def _fit(args: argparse.Namespace) -> None:
    from router.fitting import fit_all, fit_one

    if args.model:
        fit_one(Path(args.registry), Path(args.data), args.model, args.backend, args.seed, args.replace)
    elif args.replace:
        raise UsageError("--replace applies to --model (the pool's fit always writes every file); add --model or drop it")
    else:
        fit_all(Path(args.registry), Path(args.data), args.backend, args.seed)


def _route(args: argparse.Namespace) -> None:
    from router.engine import RoutingEngine

    engine = RoutingEngine.from_registry(args.registry)
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    if not args.prompt.strip():
        raise UsageError("the prompt is empty; pass the prompt text as the argument")
    try:
        decision = engine.route([args.prompt], args.lambda_, models, args.max_cost)[0]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"{'model':40s} {'E[reward]':>10s} {'cost (USD)':>12s} {'score':>12s}")
    for c in decision.ranked():
        mark = "  <- chosen" if c.model == decision.model else ""
        print(f"{c.model:40s} {c.expected_reward:10.4f} {c.predicted_cost_usd:12.6f} {c.score:12.4f}{mark}")
    print(f"lambda={decision.lambda_:g} reward/USD  decision={decision.decision_ms:.1f} ms  choice: {decision.model}")


def _simulate(args: argparse.Namespace) -> None:
    from router.simulation.folds import SimulationConfig
    from router.simulation.run import run_simulate

    config = SimulationConfig(
        folds=args.folds, seed=args.seed, backend=args.backend, encoder=args.encoder, holdout_model=args.holdout_model
    )
    run_simulate(Path(args.data), Path(args.out), config)


def _layers(listed: str | None) -> list[int] | None:
    """A --layers value as distinct integers (None when not given); their range is checked against the model."""
    if listed is None:
        return None
    try:
        layers = [int(part) for part in listed.split(",")]
    except ValueError:
        raise UsageError(f"--layers {listed!r}: give comma-separated integers, e.g. --layers=-4,-3,-2,-1") from None
    if len(set(layers)) != len(layers):
        raise UsageError(f"--layers {listed!r}: a layer is named twice; give distinct layers, e.g. --layers=-4,-3,-2,-1")
    return layers


def _feature_source(kind: str, top_k: int, layers: list[int] | None) -> TokenFeatureSource:
    from router.selector_fitting import FeatureSourceError, build_source

    try:  # reads the local model's config for hidden states: a bad --layers is refused before any other work
        return build_source(kind, top_k, layers)
    except FeatureSourceError as exc:
        raise UsageError(str(exc)) from None


def _collect(args: argparse.Namespace) -> int:
    from router.collect.pipeline import CollectConfig, run_collect
    from router.collect.sampling import SamplingConfig

    layers = _layers(args.layers)
    if layers is not None and not args.hidden_states:
        raise UsageError("--layers applies to --hidden-states; add --hidden-states or drop --layers")
    sampling = SamplingConfig(
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        retries=args.retries,
        logprobs=args.logprobs,
    )
    config = CollectConfig(
        prompts=Path(args.prompts),
        registry=Path(args.registry),
        scorer=args.scorer,
        out=Path(args.out),
        samples=args.samples,
        limit=args.limit,
        seed=args.seed,
        categories=Path(args.categories) if args.categories else None,
        models=_names(args.models),
        sampling=sampling,
    )
    source = _feature_source("hidden_states", 0, layers) if args.hidden_states else None  # before any call: fail fast
    status = run_collect(config)
    if source is None:
        return status
    if status != 0:
        print("erp: hidden-state features not cached while triples failed; rerun the same command", file=sys.stderr)
        return status
    from router.selector_fitting import cache_hidden_features

    answers, folder = cache_hidden_features(config.registry, config.out, source)
    print(f"hidden-state selector features of {answers} answers cached in {folder} (what erp fit-selector reads)")
    return status


def _names(listed: str | None) -> tuple[str, ...]:
    """A comma-separated --models value as names; an empty list is an error (it would silently mean every model)."""
    if listed is None:
        return ()
    names = tuple(dict.fromkeys(name.strip() for name in listed.split(",") if name.strip()))
    if not names:
        raise UsageError(f"--models {listed!r}: no names; give MODEL or MODEL@ARM, comma-separated")
    return names


def _fit_selector(args: argparse.Namespace) -> None:
    from predictors.token_features import MissingLogprobsError
    from router.selector_fitting import FeatureSourceError, SelectorOutputError, fit_selector

    layers = _layers(args.layers)
    if layers is not None and args.source != "hidden_states":
        raise UsageError("--layers applies to --source hidden_states; add it or drop --layers")
    if args.source == "logprobs" and not 1 <= args.top_k <= 20:
        raise UsageError(f"--top-k must be in 1..20 (the alternatives collected per token), got {args.top_k}")
    try:
        fitted = fit_selector(
            Path(args.registry), Path(args.data), args.model, args.source, Path(args.out), args.top_k, layers, args.seed
        )
    except (MissingLogprobsError, FeatureSourceError, SelectorOutputError) as exc:
        raise UsageError(str(exc)) from None
    print(
        f"{args.model}: selector on {args.source} fitted on {fitted.answers} answers to {fitted.prompts} prompts "
        f"({fitted.right:.1%} right), {fitted.parameters} parameters -> {args.out}"
    )


def _serve(args: argparse.Namespace) -> None:
    from router.server import serve

    serve(args.registry, args.host, args.port)


def _serve_local(args: argparse.Namespace) -> int:
    from router.local_model import LocalModelError, config_from, serve_forever

    try:
        return serve_forever(config_from(args), args.timeout)
    except LocalModelError as exc:
        raise UsageError(str(exc)) from None


def _add_serve_local(sub: argparse._SubParsersAction) -> None:
    from router.local_model import add_arguments

    parser = sub.add_parser("serve-local", help="serve SmolLM2-135M-Instruct on 127.0.0.1 with llama.cpp (OpenAI-compatible)")
    add_arguments(parser)
    parser.set_defaults(handler=_serve_local)


def build_parser() -> argparse.ArgumentParser:
    from predictors.embedding import ENCODER_NAMES
    from predictors.reward import CANDIDATES

    backends = ["auto", *CANDIDATES]
    parser = argparse.ArgumentParser(prog="erp", description="Expected-reward LLM router.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="fit the pool's predictors (or one model's) on a routing dataset")
    fit.add_argument("--data", required=True, help="routing dataset folder")
    fit.add_argument("--registry", default=DEFAULT_REGISTRY)
    fit.add_argument("--model", help="fit only this model's predictor on the frozen shared featurizer")
    fit.add_argument("--replace", action="store_true", help="with --model: replace the model's existing predictor file")
    fit.add_argument("--backend", default="auto", choices=backends)
    fit.add_argument("--seed", type=int, default=0)
    fit.set_defaults(handler=_fit)

    route = sub.add_parser("route", help="show every model's predicted reward, cost and score, and the choice")
    route.add_argument("prompt")
    route.add_argument("--registry", default=DEFAULT_REGISTRY)
    route.add_argument("--lambda", dest="lambda_", type=float, help="reward per USD (default: the registry's)")
    route.add_argument("--models", help="comma-separated allowed models")
    route.add_argument("--max-cost", type=float, help="maximum predicted USD per call")
    route.set_defaults(handler=_route)

    simulate = sub.add_parser("simulate", help="K-fold offline routing simulation against baselines")
    simulate.add_argument("--data", required=True, help="routing dataset folder")
    simulate.add_argument("--out", required=True, help="folder for report.json, frontier.png and results.md")
    simulate.add_argument("--folds", type=int, default=5)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--backend", default="auto", choices=backends)
    simulate.add_argument("--encoder", default="minilm", choices=ENCODER_NAMES)
    simulate.add_argument("--holdout-model", help="fit the pool without this model, then add it with one head fit")
    simulate.set_defaults(handler=_simulate)

    collect = sub.add_parser(
        "collect", help="sample every enabled model (or those --models names) on prompts, score the responses, write a routing dataset"
    )
    collect.add_argument("--prompts", required=True, help="open-perfectblend parquet/JSONL file, or a prompts.parquet")
    collect.add_argument("--registry", default=DEFAULT_REGISTRY)
    collect.add_argument("--samples", type=int, default=1, help="responses per (prompt, model)")
    collect.add_argument("--scorer", required=True, help="name of a scorer in the registry's scorers: section")
    collect.add_argument("--out", required=True, help="folder for the dataset, the journal and the run manifest")
    collect.add_argument("--limit", type=int, help="collect on this many prompts, stratified by category")
    collect.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    collect.add_argument("--categories", help="YAML mapping category -> source substrings, tried before the built-ins")
    collect.add_argument(
        "--models", help="comma-separated candidates to sample: MODEL@ARM, or MODEL for a model's enabled arms; default: every enabled one"
    )
    collect.add_argument("--concurrency", type=int, default=8, help="calls in flight per model")
    collect.add_argument("--temperature", type=float, default=0.7)
    collect.add_argument("--max-tokens", type=int, default=1024, help="response budget per call")
    collect.add_argument("--timeout", type=float, default=120.0, help="seconds per call attempt")
    collect.add_argument("--retries", type=int, default=4, help="retries per call on 429, 5xx, timeouts")
    collect.add_argument(
        "--logprobs", type=int, metavar="K",
        help="keep per-token log-probabilities with K alternatives, 0 to 20 (0: the chosen tokens' only; for erp fit-selector)"
    )
    collect.add_argument(
        "--hidden-states", action="store_true",
        help="then cache the local model's hidden-state selector features of every answer, outside git (for erp fit-selector)",
    )
    collect.add_argument("--layers", help="hidden-state layers for --hidden-states, written --layers=-4,-3 (default the last four)")
    collect.set_defaults(handler=_collect)

    selector = sub.add_parser("fit-selector", help="fit a best-of-N selector on a candidate's collected samples")
    selector.add_argument("--data", required=True, help="an `erp collect` --out folder with the candidate's samples")
    selector.add_argument("--model", required=True, help="the candidate (MODEL or MODEL@ARM) whose samples to learn from")
    selector.add_argument("--out", required=True, help="selector file to write (name it in the arm's selector:)")
    selector.add_argument("--source", default="hidden_states", choices=("hidden_states", "logprobs"))
    selector.add_argument("--top-k", type=int, default=5, help="alternatives per token (logprobs source)")
    selector.add_argument("--layers", help="comma-separated hidden-state layers, written --layers=-4,-3 (default the last four)")
    selector.add_argument("--registry", default=DEFAULT_REGISTRY)
    selector.add_argument("--seed", type=int, default=0)
    selector.set_defaults(handler=_fit_selector)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible routing proxy (state in Redis if REDIS_URL is set)")
    serve.add_argument("--registry", default=DEFAULT_REGISTRY)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=_serve)
    _add_serve_local(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from predictors.artifacts import ArtifactError
    from predictors.dataset import DatasetError
    from router.collect import CollectError
    from router.registry import RegistryError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except (UsageError, CollectError, DatasetError, RegistryError, ArtifactError) as exc:
        print(f"erp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("erp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
