"""``erp collect``: sample every enabled model (or those ``--models`` names) on the prompts, score the responses,
journal them, compact.

Per model, ``concurrency`` workers take that model's missing (prompt, sample) pairs and call it; responses
pass through a bounded queue to scoring workers, which score them in batches and append each batch to the
journal. Sampling failures are journaled at once. The compacted dataset is written when the run ends.

Exit status: 0 when every triple has a reward; 1 when some failed (the dataset holds the rest, the summary
names each failing model with its first error, and rerunning the command retries them); 2 when the run
cannot start (a CollectError, RegistryError or DatasetError, printed as one line).
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from predictors.scorers.base import RewardScorer, ScoreBatch, ScoringItem
from router.collect import CollectError, error_message
from router.collect.compact import Compaction, compact
from router.collect.journal import Journal, Record
from router.collect.manifest import Manifest, call_configuration, reconcile
from router.collect.prompts import prompt_messages, read_prompts, stratified_head
from router.collect.sampling import Sample, Sampler, SamplingConfig
from router.registry import ARM_SEPARATOR, ModelEntry, Registry, load_registry

SCORE_BATCH = 16  # responses per scorer call
SCORE_WORKERS = 4  # scorer calls in flight


@dataclass(frozen=True)
class CollectConfig:
    prompts: Path
    registry: Path
    scorer: str
    out: Path
    samples: int = 1
    limit: int | None = None
    seed: int = 0
    categories: Path | None = None
    models: tuple[str, ...] = ()  # the enabled candidates to sample; empty: all of them
    sampling: SamplingConfig = SamplingConfig()


@dataclass(frozen=True)
class _Task:
    """One missing triple; ``saved`` is its journaled response when only scoring failed before."""

    key: str
    prompt_id: str
    prompt: str
    system: str | None
    reference: str | None
    model: str
    sample: int
    saved: Sample | None = None

    def messages(self) -> list[dict]:
        return prompt_messages(self.prompt, self.system)

    def record(self, sample: Sample | None, reward: float | None = None, error: str | None = None) -> Record:
        response = {} if sample is None else {
            "response": sample.text, "input_tokens": sample.input_tokens,
            "output_tokens": sample.output_tokens, "cost_usd": sample.cost_usd,
            "reasoning_tokens": sample.reasoning_tokens, "logprobs": sample.logprobs,
        }
        return Record(self.key, self.prompt_id, self.model, self.sample, reward=reward, error=error, **response)


@dataclass
class _Tally:
    """What this run did, shown on the progress bar and in the summary."""

    bar: tqdm
    scored: int = 0
    spend_usd: float = 0.0
    scorer_tokens: int = 0
    errors: Counter = field(default_factory=Counter)
    first_error: dict[str, str] = field(default_factory=dict)

    def add(self, records: list[Record]) -> None:
        for record in records:
            if record.done:
                self.scored += 1
            else:
                self.errors[record.model] += 1
                self.first_error.setdefault(record.model, record.error or "unknown error")
        self.bar.update(len(records))
        self.bar.set_postfix(errors=sum(self.errors.values()), spend=f"${self.spend_usd:.4f}", refresh=False)


def run_collect(config: CollectConfig) -> int:
    """Validate everything, collect the missing triples, compact; the exit status (see the module doc)."""
    _check_numbers(config)
    registry = load_registry(config.registry)
    entries = _chosen_candidates(config, registry)
    per_token = dict(zip([e.name for e in entries], map(tuple, registry.usd_per_token(entries)), strict=True))
    prompts, duplicates = read_prompts(config.prompts, config.categories)
    if prompts.empty:
        raise CollectError(f"{config.prompts}: no prompts in the file")
    prompts = stratified_head(prompts, config.limit, config.seed)

    from router.scoring import build_scorer  # LiteLLM and the judge load only once the inputs are valid

    scorer = build_scorer(registry, config.scorer)
    try:
        config.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CollectError(f"--out {config.out}: cannot create the folder ({exc.strerror}); pass a writable folder") from None
    with Journal(config.out) as journal:
        manifest = Manifest(
            scorer=config.scorer, temperature=config.sampling.temperature, max_tokens=config.sampling.max_tokens,
            models={e.name: e.litellm_model for e in entries}, logprobs=config.sampling.logprobs,
            configurations={e.name: call_configuration(registry, e) for e in entries},
        )
        kept_logprobs = any(r.logprobs is not None for r in journal.records) if journal.records else None
        reconcile(config.out, manifest, kept_logprobs)
        tasks, done = _plan(prompts, list(per_token), config.samples, journal)
        total = done + len(tasks)
        dropped = f" ({duplicates} duplicate conversations dropped)" if duplicates else ""
        print(
            f"collect: {prompts['key'].nunique()} prompts{dropped} x {len(entries)} models x {config.samples} "
            f"samples = {total} triples; {done} already in {journal.path}, {len(tasks)} to do"
        )
        with tqdm(total=total, initial=done, unit="triple", desc="collect", dynamic_ncols=True) as bar:
            tally = _Tally(bar)
            sampler = Sampler(registry, entries, per_token, config.sampling)
            asyncio.run(_collect(tasks, sampler, scorer, journal, tally, config.sampling.concurrency))
        prices = {name: (i * 1e6, o * 1e6) for name, (i, o) in per_token.items()}
        compaction = compact(config.out, prompts, prices, config.samples, journal.latest())
        _summarize(config, journal, tally, done, total, compaction)
    return 1 if tally.errors else 0


def _chosen_candidates(config: CollectConfig, registry: Registry) -> list[ModelEntry]:
    """The registry's enabled candidates, or those ``--models`` names (a model with arms stands for its enabled
    arms); CollectError naming the fix for a name that is unknown, disabled, or matches nothing."""
    enabled = registry.enabled
    if not enabled:
        raise CollectError(f"{config.registry}: no enabled models; set enabled: true on at least one")
    if not config.models:
        return enabled
    chosen: dict[str, ModelEntry] = {}
    for name in config.models:
        matches = [e for e in enabled if e.name == name or e.name.startswith(name + ARM_SEPARATOR)]
        if not matches:
            every = [c for model in registry.models for c in model.candidates(include_disabled=True)]
            if not any(c.name == name or c.name.startswith(name + ARM_SEPARATOR) for c in every):
                raise CollectError(
                    f"--models: no candidate named {name!r} in {config.registry}; choose from {', '.join(e.name for e in enabled)}"
                )
            raise CollectError(
                f"--models: {name!r} is disabled in {config.registry} (a model with arms: all of its arms); "
                "set enabled: true on it to collect it"
            )
        chosen.update((e.name, e) for e in matches)
    return list(chosen.values())


def _check_numbers(config: CollectConfig) -> None:
    sampling = config.sampling
    checks = [
        (config.samples >= 1, f"--samples must be at least 1, got {config.samples}"),
        (config.limit is None or config.limit >= 1, f"--limit must be at least 1, got {config.limit}"),
        (sampling.concurrency >= 1, f"--concurrency must be at least 1, got {sampling.concurrency}"),
        (sampling.temperature > 0, f"--temperature must be > 0 to sample distinct responses, got {sampling.temperature}"),
        (sampling.max_tokens >= 1, f"--max-tokens must be at least 1, got {sampling.max_tokens}"),
        (sampling.timeout_s > 0, f"--timeout must be > 0 seconds, got {sampling.timeout_s}"),
        (sampling.retries >= 0, f"--retries must be >= 0, got {sampling.retries}"),
        (sampling.logprobs is None or 0 <= sampling.logprobs <= 20, f"--logprobs must be in 0..20, got {sampling.logprobs}"),
    ]
    for ok, message in checks:
        if not ok:
            raise CollectError(message)


def _plan(prompts: pd.DataFrame, models: list[str], samples: int, journal: Journal) -> tuple[list[_Task], int]:
    """The triples still to do (failed ones included) and how many are done already."""
    latest = journal.latest()
    tasks, done = [], 0
    for row in prompts.drop_duplicates("key").itertuples(index=False):
        for model in models:
            for sample in range(samples):
                record = latest.get((row.key, model, sample))
                if record is not None and record.done:
                    done += 1
                    continue
                saved = None
                if record is not None and record.response is not None:
                    saved = Sample(record.response, record.input_tokens, record.output_tokens, record.cost_usd,
                                   record.reasoning_tokens, record.logprobs)
                system = row.system if isinstance(row.system, str) else None  # missing is NaN in a str column
                reference = None if pd.isna(row.answer) else str(row.answer)
                tasks.append(_Task(row.key, row.prompt_id, row.prompt, system, reference, model, sample, saved))
    return tasks, done


async def _collect(
    tasks: list[_Task], sampler: Sampler, scorer: RewardScorer, journal: Journal, tally: _Tally, concurrency: int
) -> None:
    queue: asyncio.Queue[tuple[_Task, Sample] | None] = asyncio.Queue(maxsize=SCORE_BATCH * SCORE_WORKERS)

    async def sample_worker(model: str, pending: Iterator[_Task]) -> None:
        for task in pending:
            try:
                sample = await sampler.sample(model, task.messages())
            except Exception as exc:  # any failure of this call is this triple's error, never the run's
                failed = [task.record(None, error=error_message(exc))]
                journal.append(failed)
                tally.add(failed)
                continue
            tally.spend_usd += sample.cost_usd
            await queue.put((task, sample))

    async def produce() -> None:
        async with asyncio.TaskGroup() as producers:
            for model in sampler.clients:
                pending = [t for t in tasks if t.saved is None and t.model == model]
                shared = iter(pending)
                for _ in range(min(concurrency, len(pending))):
                    producers.create_task(sample_worker(model, shared))
            for task in tasks:
                if task.saved is not None:
                    await queue.put((task, task.saved))
        for _ in range(SCORE_WORKERS):
            await queue.put(None)

    async def score_worker() -> None:
        while (first := await queue.get()) is not None:
            batch, stop = [first], False
            while len(batch) < SCORE_BATCH and not queue.empty():
                item = queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            records = await _score(scorer, batch, tally)
            journal.append(records)
            tally.add(records)
            if stop:
                return

    async with asyncio.TaskGroup() as group:
        group.create_task(produce())
        for _ in range(SCORE_WORKERS):
            group.create_task(score_worker())


async def _score(scorer: RewardScorer, batch: list[tuple[_Task, Sample]], tally: _Tally) -> list[Record]:
    """Journal records for one batch; a reward that is missing or outside [0, 1] is an error, not a score."""
    items = [ScoringItem(t.prompt, s.text, model=t.model, system=t.system, reference=t.reference) for t, s in batch]
    try:
        scores = await scorer.score(items)
    except Exception as exc:  # the contract says a scorer records failures; a broken one still must not end the run
        message = f"scorer {scorer.name} failed: {error_message(exc)}"
        scores = ScoreBatch(rewards=np.full(len(items), np.nan), tokens=0, errors=[message] * len(items))
    tally.scorer_tokens += scores.tokens
    records = []
    for i, (task, sample) in enumerate(batch):
        reward = float(scores.rewards[i])
        if 0.0 <= reward <= 1.0:
            records.append(task.record(sample, reward=reward))
            continue
        reason = scores.errors[i] if i < len(scores.errors) and scores.errors[i] else None
        if reason is None:
            reason = "scorer returned no reward" if math.isnan(reward) else f"scorer returned {reward:g}, outside [0, 1]"
        records.append(task.record(sample, error=f"scoring: {reason}"))
    return records


def _summarize(config: CollectConfig, journal: Journal, tally: _Tally, done_before: int, total: int, result: Compaction) -> None:
    failed = sum(tally.errors.values())
    print(
        f"done: {done_before + tally.scored}/{total} triples scored ({tally.scored} this run, {failed} failed); "
        f"sampling spend this run {tally.spend_usd:.6f} USD; scorer tokens {tally.scorer_tokens}"
    )
    for model, count in tally.errors.most_common():
        print(f"failed: {model}: {count} triple(s); first error: {tally.first_error[model]}")
    if journal.skipped:
        print(f"note: {journal.skipped} unreadable line(s) in {journal.path} were ignored")
    if result.written:
        print(
            f"wrote {config.out}: {result.prompts} prompts x {len(result.models)} models, {result.outcomes} outcomes "
            "(prompts.parquet, outcomes.parquet, models.csv)"
        )
    else:
        print(f"wrote nothing to {config.out}: no prompt has a scored sample from every model yet")
    if result.dropped_models or result.dropped_prompts:
        models = f"model(s) {', '.join(result.dropped_models)} (no scored sample) and " if result.dropped_models else ""
        print(
            f"left out of the dataset: {models}{result.dropped_prompts} prompt(s) lacking a model's outcome; "
            f"their results stay in {journal.path}"
        )
    if failed:
        print(
            f"erp: {failed} triple(s) failed ({', '.join(sorted(tally.errors))}); rerun the same command to retry them",
            file=sys.stderr,
        )
