"""`erp collect` through the real LiteLLM path against the stub upstream on 127.0.0.1.

Two pool models (alpha, beta) and an LLM judge are all served by the stub; the judge's replies are scripted
so alpha's answers score 8/10 and beta's 3/10.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from predictors.dataset import load_dataset
from router.cli import main
from router.collect import CollectError
from router.collect.journal import Journal, Record
from router.collect.pipeline import CollectConfig, run_collect
from router.collect.prompts import read_prompts, stratified_head
from router.collect.sampling import SamplingConfig
from serving_fixtures import UPSTREAM_KEY, UPSTREAM_KEY_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
POOL = ["alpha", "beta"]
PRICES = {"alpha": (1.0, 2.0), "beta": (0.5, 1.0), "gamma": (0.1, 0.1)}
JUDGE_SCORES = {"alpha": 8, "beta": 3, "gamma": 5}
SOURCES = [
    "meta-math/MetaMathQA",
    "microsoft/orca-math-word-problems-200k",
    "theblackcat102/evol-codealpaca-v1",
    "openbmb/UltraInteract_sft",
    "Post-training-Data-Flywheel/AutoIF-instruct-61k",
    "HuggingFaceH4/ultrachat_200k",
    "lmsys/lmsys-arena-human-preference-55k",
    "somebody/unlisted-set",
]
CATEGORIES = ["math", "math", "code", "code", "instruction_following", "chat", "chat", "other"]


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch):
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)


def conversations(n: int = 8) -> list[dict]:
    """Open-perfectblend rows: a system turn on the first, answers after the human turns."""
    rows = []
    for i in range(n):
        turns = [{"from": "human", "value": f"Question {i}: what is {i} + {i}?"}, {"from": "gpt", "value": f"{2 * i}"}]
        if i == 0:
            turns.insert(0, {"from": "system", "value": "Answer tersely."})
        rows.append({"conversations": turns, "source": SOURCES[i % len(SOURCES)]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_registry(path: Path, stub_url: str, models: list[str] = POOL) -> Path:
    entries = [
        {
            "name": name,
            "litellm_model": f"openai/{name}",
            "api_base": stub_url,
            "api_key_env": UPSTREAM_KEY_ENV,
            "input_usd_per_mtok": PRICES[name][0],
            "output_usd_per_mtok": PRICES[name][1],
            "predictor": f"artifacts/{name}.joblib",
        }
        for name in models
    ]
    judge = {"name": "judge", "kind": "judge", "litellm_model": "openai/judge", "api_base": stub_url,
             "api_key_env": UPSTREAM_KEY_ENV, "retries": 0}
    document = {"shared_predictor": "artifacts/shared.joblib", "models": entries, "scorers": [judge]}
    path.write_text(yaml.safe_dump(document))
    return path


def judge_reply(messages: list[dict]) -> str:
    """A score by the pool model whose answer is being graded (the stub's echo starts with its name)."""
    graded = re.search(r"\[Assistant response\]\n(\w+) says:", messages[-1]["content"]).group(1)
    return json.dumps({"rationale": "scripted", "score": JUDGE_SCORES[graded]})


@pytest.fixture
def setup(tmp_path, stub):
    stub.state.replies["judge"] = judge_reply
    return tmp_path, write_registry(tmp_path / "model_registry.yaml", stub.url), stub


def collect_args(prompts: Path, registry: Path, out: Path, *extra: str, samples: int = 2) -> list[str]:
    return ["collect", "--prompts", str(prompts), "--registry", str(registry), "--samples", str(samples),
            "--scorer", "judge", "--out", str(out), *extra]


def pool_hits(stub) -> Counter:
    return Counter(model for model in stub.state.models_hit() if model != "judge")


def journal_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]


def test_collects_a_dataset_the_loader_accepts(setup, capsys):
    tmp_path, registry, stub = setup
    prompts = write_jsonl(tmp_path / "blend.jsonl", conversations())
    out = tmp_path / "out"
    assert main(collect_args(prompts, registry, out)) == 0

    data = load_dataset(out)
    assert len(data.prompts) == 8 and data.models == POOL
    assert list(data.categories) == CATEGORIES
    outcomes = data.outcomes
    assert len(outcomes) == 8 * 2 * 2 and not outcomes.duplicated(["prompt_id", "model", "sample"]).any()
    assert {"response", "input_tokens", "output_tokens", "cost_usd", "output_chars", "output_tokens_est"} <= set(outcomes)
    expected = outcomes["model"].map({"alpha": 7 / 9, "beta": 2 / 9})
    assert (outcomes["reward"] - expected).abs().max() < 1e-9
    assert all(r.startswith(f"{m} says: Question") for r, m in zip(outcomes["response"], outcomes["model"]))
    input_price, output_price = outcomes["model"].map(lambda m: PRICES[m][0]), outcomes["model"].map(lambda m: PRICES[m][1])
    cost = (outcomes["input_tokens"] * input_price + outcomes["output_tokens"] * output_price) / 1e6
    assert (outcomes["cost_usd"] - cost).abs().max() < 1e-15 and (outcomes["cost_usd"] > 0).all()
    assert (outcomes["output_tokens_est"] == (outcomes["output_chars"] / 4).round()).all()
    assert pd.read_csv(out / "models.csv")["input_usd_per_mtok"].tolist() == [1.0, 0.5]
    assert data.prompts.loc[0, "system"] == "Answer tersely." and data.prompts["system"].iloc[1:].isna().all()

    calls = [hit.body for hit in stub.state.hits if hit.model in POOL]
    assert len(calls) == 32 and {body["temperature"] for body in calls} == {0.7}
    assert any(body["messages"][0] == {"role": "system", "content": "Answer tersely."} for body in calls)
    assert sorted(p.name for p in out.iterdir()) == ["journal.jsonl", "manifest.json", "models.csv", "outcomes.parquet", "prompts.parquet"]
    printed = capsys.readouterr().out
    assert "32/32 triples scored" in printed and "wrote" in printed

    # The same prompts as parquet are the same prompts (content-keyed): nothing is called again.
    pd.DataFrame(conversations()).to_parquet(tmp_path / "blend.parquet")
    stub.state.hits.clear()
    assert main(collect_args(tmp_path / "blend.parquet", registry, out)) == 0
    assert pool_hits(stub) == Counter() and len(journal_lines(out)) == 32
    # A routing dataset's prompts.parquet is input too; its ids and categories are kept.
    assert main(collect_args(out / "prompts.parquet", registry, tmp_path / "again", samples=1)) == 0
    again = load_dataset(tmp_path / "again")
    assert list(again.prompt_ids) == list(data.prompt_ids) and list(again.categories) == CATEGORIES
    assert len(again.outcomes) == 16


def test_categories_follow_the_built_in_table_an_override_file_and_the_limit(tmp_path):
    override = tmp_path / "categories.yaml"
    override.write_text(yaml.safe_dump({"reasoning": ["orca-math", "unlisted"], "chat": "AutoIF"}))
    prompts, duplicates = read_prompts(write_jsonl(tmp_path / "p.jsonl", conversations() + conversations()[:3]), override)
    assert duplicates == 3
    assert list(prompts["category"]) == ["math", "reasoning", "code", "code", "chat", "chat", "chat", "reasoning"]

    many = pd.DataFrame({"category": ["math"] * 60 + ["code"] * 30 + ["chat"] * 10, "prompt_id": [str(i) for i in range(100)]})
    picked = stratified_head(many, 10, seed=0)
    assert Counter(picked["category"]) == {"math": 6, "code": 3, "chat": 1}
    assert picked.equals(stratified_head(many, 10, seed=0)) and not picked.equals(stratified_head(many, 10, seed=1))
    assert stratified_head(many, 500, seed=0) is many


def test_models_samples_only_the_named_candidates(setup):
    tmp_path, registry, stub = setup
    prompts = write_jsonl(tmp_path / "blend.jsonl", conversations(3))
    assert main(collect_args(prompts, registry, tmp_path / "out", "--models", "beta")) == 0
    assert pool_hits(stub) == Counter({"beta": 6})
    assert load_dataset(tmp_path / "out").models == ["beta"]


def test_a_killed_run_resumes_with_only_the_missing_triples(setup):
    tmp_path, registry, stub = setup
    prompts = write_jsonl(tmp_path / "blend.jsonl", conversations())
    out = tmp_path / "out"
    stub.state.delay_s = 0.15
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    command = [sys.executable, "-m", "router.cli", *collect_args(prompts, registry, out, "--concurrency", "2")]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 60
    while not (journal.exists() and journal.read_bytes().count(b"\n") >= 4):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    survived = {(r["key"], r["model"], r["sample"]) for r in journal_lines(out) if r["reward"] is not None}
    assert 4 <= len(survived) < 32
    assert not (out / "outcomes.parquet").exists()

    stub.state.delay_s = 0.0
    stub.state.hits.clear()
    assert main(collect_args(prompts, registry, out)) == 0
    assert sum(pool_hits(stub).values()) == 32 - len(survived)
    outcomes = load_dataset(out).outcomes
    triples = list(zip(outcomes["prompt_id"], outcomes["model"], outcomes["sample"]))
    prompt_ids = pd.read_parquet(out / "prompts.parquet")["prompt_id"]
    assert len(triples) == len(set(triples)) == 32
    assert set(triples) == {(p, m, s) for p in prompt_ids for m in POOL for s in range(2)}
    scored = Counter((r["key"], r["model"], r["sample"]) for r in journal_lines(out) if r["reward"] is not None)
    assert len(scored) == 32 and max(scored.values()) == 1


def run_direct(tmp_path: Path, registry: Path, prompts: Path, retries: int = 3, samples: int = 1) -> int:
    sampling = SamplingConfig(concurrency=4, retries=retries, backoff_s=0.01, timeout_s=10)
    config = CollectConfig(prompts=prompts, registry=registry, scorer="judge", out=tmp_path / "out",
                           samples=samples, sampling=sampling)
    return run_collect(config)


def test_rate_limits_and_server_errors_are_retried_until_they_succeed(setup):
    tmp_path, registry, stub = setup
    prompts = write_jsonl(tmp_path / "blend.jsonl", conversations(4))
    stub.state.fail_first.update(alpha=(2, "429"), beta=(2, "500"))
    assert run_direct(tmp_path, registry, prompts) == 0
    assert pool_hits(stub) == {"alpha": 4 + 2, "beta": 4 + 2}
    assert len(load_dataset(tmp_path / "out").outcomes) == 8
    assert all(line["error"] is None for line in journal_lines(tmp_path / "out"))


def test_a_model_that_always_fails_is_reported_while_the_others_finish(setup, capsys):
    tmp_path, _, stub = setup
    registry = write_registry(tmp_path / "three.yaml", stub.url, ["alpha", "beta", "gamma"])
    prompts = write_jsonl(tmp_path / "blend.jsonl", conversations(4))
    stub.state.failures.update(beta="500", gamma="400")
    assert run_direct(tmp_path, registry, prompts, retries=1) == 1
    assert pool_hits(stub) == {"alpha": 4, "beta": 4 * 2, "gamma": 4}  # 400 is not retried
    errors = {line["model"]: line["error"] for line in journal_lines(tmp_path / "out") if line["error"]}
    assert "the upstream had an internal error" in errors["beta"] and "Invalid value" in errors["gamma"]
    captured = capsys.readouterr()
    assert "failed: beta: 4 triple(s); first error:" in captured.out
    assert "left out of the dataset: model(s) beta, gamma (no scored sample)" in captured.out
    assert "erp: 8 triple(s) failed (beta, gamma)" in captured.err
    assert load_dataset(tmp_path / "out").models == ["alpha"]

    # Failures are retried by the next run, and only they are.
    stub.state.failures.clear()
    stub.state.hits.clear()
    assert run_direct(tmp_path, registry, prompts, retries=1) == 0
    assert pool_hits(stub) == {"beta": 4, "gamma": 4}
    assert load_dataset(tmp_path / "out").models == ["alpha", "beta", "gamma"]


def test_a_scoring_failure_is_rescored_without_sampling_again(setup):
    tmp_path, registry, stub = setup
    prompts = write_jsonl(tmp_path / "blend.jsonl", conversations(2))
    stub.state.replies["judge"] = lambda messages: "I refuse to grade."
    assert run_direct(tmp_path, registry, prompts) == 1
    lines = journal_lines(tmp_path / "out")
    assert len(lines) == 4 and all(line["response"] and "no score" in line["error"] for line in lines)
    assert not (tmp_path / "out" / "outcomes.parquet").exists()

    stub.state.replies["judge"] = judge_reply
    stub.state.hits.clear()
    assert run_direct(tmp_path, registry, prompts) == 0
    assert pool_hits(stub) == Counter() and stub.state.models_hit().count("judge") == 4
    assert len(load_dataset(tmp_path / "out").outcomes) == 4


def test_the_journal_survives_a_torn_last_line_and_locks_its_folder(tmp_path):
    record = Record("k", "p", "alpha", 0, response="hi", reward=0.5)
    with Journal(tmp_path) as journal:
        journal.append([record, Record("k", "p", "alpha", 1, error="boom")])
        with pytest.raises(CollectError, match="another `erp collect` is writing to it"):
            Journal(tmp_path)
    with open(tmp_path / "journal.jsonl", "ab") as handle:
        handle.write(b'{"key": "k", "prompt_id": "p", "mod')
    with Journal(tmp_path) as journal:
        assert journal.records == [record, Record("k", "p", "alpha", 1, error="boom")]
        journal.append([Record("k", "p", "alpha", 1, response="ok", reward=1.0)])
        assert {triple: r.reward for triple, r in journal.latest().items()} == {("k", "alpha", 0): 0.5, ("k", "alpha", 1): 1.0}
    assert len(journal_lines(tmp_path)) == 3


def bad_input(tmp_path: Path, registry: Path, case: str) -> tuple[list[str], str]:
    prompts = write_jsonl(tmp_path / "blend.jsonl", conversations(3))
    out = tmp_path / "out"
    if case == "csv":
        (tmp_path / "prompts.csv").write_text("a,b\n1,2\n")
        return collect_args(tmp_path / "prompts.csv", registry, out), "cannot be read as parquet"
    if case == "columns":
        write_jsonl(tmp_path / "other.jsonl", [{"text": "hi"}])
        return collect_args(tmp_path / "other.jsonl", registry, out), "neither open-perfectblend (columns conversations, source)"
    if case == "empty-conversation":
        rows = conversations(3)
        rows[2]["conversations"] = []
        return collect_args(write_jsonl(tmp_path / "e.jsonl", rows), registry, out), "row 2 (0-based): empty conversations"
    if case == "no-human-turn":
        rows = conversations(3)
        rows[1]["conversations"] = [{"from": "gpt", "value": "hello"}]
        return collect_args(write_jsonl(tmp_path / "e.jsonl", rows), registry, out), "row 1 (0-based): no human turn"
    if case in ("null-conversations", "missing-conversations", "number-conversations"):
        rows = conversations(3)
        if case == "missing-conversations":
            del rows[1]["conversations"]
        else:
            rows[1]["conversations"] = None if case == "null-conversations" else 3
        message = "row 1 (0-based): conversations must be a list"
        return collect_args(write_jsonl(tmp_path / "e.jsonl", rows), registry, out), message
    if case == "unwritable-out":
        (tmp_path / "a-file").write_text("")
        return collect_args(prompts, registry, tmp_path / "a-file" / "out"), "cannot create the folder"
    if case == "unknown-scorer":
        return [*collect_args(prompts, registry, out)[:-4], "--scorer", "nope", "--out", str(out)], "no scorer named 'nope'"
    if case == "samples":
        return collect_args(prompts, registry, out, samples=0), "--samples must be at least 1"
    if case == "no-enabled-models":
        document = yaml.safe_load(registry.read_text())
        for entry in document["models"]:
            entry["enabled"] = False
        registry.write_text(yaml.safe_dump(document))
        return collect_args(prompts, registry, out), "no enabled models"
    if case == "unknown-candidate":
        return collect_args(prompts, registry, out, "--models", "alpha,gamma"), "--models: no candidate named 'gamma'"
    if case == "disabled-candidate":
        document = yaml.safe_load(registry.read_text())
        document["models"][1]["enabled"] = False
        registry.write_text(yaml.safe_dump(document))
        return collect_args(prompts, registry, out, "--models", "beta"), "'beta' is disabled"
    if case == "disabled-arms":
        document = yaml.safe_load(registry.read_text())
        beta = document["models"][1]
        predictor = beta.pop("predictor", "beta.joblib")
        beta["arms"] = [{"name": name, "predictor": predictor, "enabled": False} for name in ("low", "high")]
        registry.write_text(yaml.safe_dump(document))
        return collect_args(prompts, registry, out, "--models", "beta"), "'beta' is disabled"
    if case == "empty-folder":
        (tmp_path / "no-prompts").mkdir()
        return collect_args(tmp_path / "no-prompts", registry, out), "a folder without parquet files"
    if case == "empty-models":
        return collect_args(prompts, registry, out, "--models", " , "), "--models ' , ': no names"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "csv", "columns", "empty-conversation", "no-human-turn", "null-conversations", "missing-conversations",
        "number-conversations", "unwritable-out", "unknown-scorer", "samples", "no-enabled-models", "unknown-candidate",
        "disabled-candidate", "disabled-arms", "empty-folder", "empty-models",
    ],
)
def test_bad_input_exits_2_with_one_line_before_any_call(setup, capsys, case):
    tmp_path, registry, stub = setup
    args, message = bad_input(tmp_path, registry, case)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("erp: error:")
    assert not stub.state.hits and not (tmp_path / "out").exists()


@pytest.mark.parametrize("change", ["logprobs", "params", "system_prompt"])
def test_a_rerun_that_would_mix_call_configurations_is_refused(setup, capsys, change):
    """Samples of one candidate under two configurations (another max_tokens, system prompt or --logprobs) would
    sit side by side as one candidate's outcomes; the rerun is refused before any call, the data untouched."""
    tmp_path, registry, stub = setup
    prompts = write_jsonl(tmp_path / "blend.jsonl", conversations(2))
    out = tmp_path / "out"
    assert main(collect_args(prompts, registry, out, "--models", "alpha", "--logprobs", "2", samples=1)) == 0
    before, hits = (out / "outcomes.parquet").read_bytes(), len(stub.state.hits)
    logprobs = "2"
    if change == "logprobs":
        logprobs, message = "5", "was collected with --logprobs 2, this run asks for 5"
    else:
        document = yaml.safe_load(registry.read_text())
        value = {"max_tokens": 2} if change == "params" else "Answer in one word."
        document["models"][0][change] = value
        registry.write_text(yaml.safe_dump(document))
        message = f"'alpha' was collected with other {change} ({change}="
    capsys.readouterr()
    args = collect_args(prompts, registry, out, "--models", "alpha", "--logprobs", logprobs, samples=2)
    assert main(args) == 2
    error = capsys.readouterr().err
    assert message in error and "use another --out" in error
    assert (out / "outcomes.parquet").read_bytes() == before and len(stub.state.hits) == hits


def test_a_manifest_from_before_logprobs_and_configurations_were_recorded_still_resumes(setup):
    tmp_path, registry, stub = setup
    stub.state.token_confidence.update({"alpha": lambda text: 0.9, "beta": lambda text: 0.6})  # logprobs when asked
    prompts = write_jsonl(tmp_path / "blend.jsonl", conversations(2))
    out = tmp_path / "out"
    assert main(collect_args(prompts, registry, out, "--logprobs", "2", samples=1)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    old = {key: manifest[key] for key in ("scorer", "temperature", "max_tokens", "models")}
    (out / "manifest.json").write_text(json.dumps(old))
    assert main(collect_args(prompts, registry, out, samples=3)) == 2, "samples with and without logprobs would mix"
    assert main(collect_args(prompts, registry, out, "--logprobs", "2", samples=2)) == 0
    assert json.loads((out / "manifest.json").read_text())["logprobs"] == 2


def test_a_rerun_with_other_settings_is_refused_and_the_command_prints_no_traceback(setup):
    tmp_path, registry, _ = setup
    prompts = write_jsonl(tmp_path / "blend.jsonl", conversations(2))
    out = tmp_path / "out"
    assert main(collect_args(prompts, registry, out, samples=1)) == 0
    before = (out / "outcomes.parquet").read_bytes()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    result = subprocess.run(
        [sys.executable, "-m", "router.cli", *collect_args(prompts, registry, out, "--temperature", "1.0", samples=1)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("erp: error:") and "was collected with --temperature 0.7" in result.stderr
    assert (out / "outcomes.parquet").read_bytes() == before
