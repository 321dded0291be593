"""The replay scorer, pairwise hybrids and cascades on recorded judge verdicts (../shared/data/judge-replay)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmarks.judge_replay import (
    HALF_ROLE,
    HYBRID_ROLE,
    answers,
    escalated,
    fmt_escalated,
    hit_key,
    main,
    pooled,
    split_by_instruction,
)
from conftest import SHARED_DATA, registry_document
from predictors.scorers.base import ScoringItem
from predictors.scorers.hybrid import HybridScorer
from predictors.scorers.pairwise import order_consistency
from predictors.scorers.replay import NO_RECORD, UNPARSED, ReplayJudge, VerdictLog
from router.registry import Registry, RegistryError, load_registry
from router.scoring import build_scorer, cascade_targets

DATA = SHARED_DATA / "judge-replay"
SAMPLE = [f"LLMBar/Natural/{i}" for i in range(5)] + ["Processed/MT-Bench/0", "LLMBar/Natural/54"]


@pytest.fixture(scope="module")
def log() -> VerdictLog:
    return VerdictLog.read(DATA)


@pytest.fixture(scope="module")
def verdicts() -> pd.DataFrame:
    return pd.read_parquet(DATA / "verdicts.parquet").set_index(["pair_id", "judge", "mode", "swap"]).sort_index()


def score(scorer, items: list[ScoringItem]):
    return asyncio.run(scorer.score(items))


def recorded(verdicts: pd.DataFrame, pair: str, judge: str, mode: str, swap: bool) -> pd.Series:
    return verdicts.loc[(pair, judge, mode, swap)]


@pytest.mark.parametrize("judge, mode", [("GPT-4", "Metrics_Reference"), ("PaLM2", "Vanilla_NoRules")])
def test_replay_reproduces_recorded_verdicts_and_tokens(log, verdicts, judge, mode):
    for pair in SAMPLE:
        item = log.items([pair])
        first, second = (recorded(verdicts, pair, judge, mode, swap) for swap in (False, True))
        calls = [row.prompt_chars + row.completion_chars for row in (first, second)]
        aux = first.aux_prompt_chars + first.aux_completion_chars
        one = score(ReplayJudge("one", log, judge, mode, 1), item)
        both = score(ReplayJudge("two", log, judge, mode, 2), item)
        winner = np.nan if pd.isna(first.winner) else float(first.winner == 1)
        np.testing.assert_equal(one.rewards, [winner])
        assert one.tokens == round((calls[0] + aux) / 4)
        assert both.tokens == round((calls[0] + calls[1] + aux) / 4)  # aux calls counted once per pair
        assert (one.errors == [UNPARSED]) == pd.isna(first.winner)


def test_swapped_items_read_the_other_order_and_unknown_pairs_are_missing(log):
    judge = ReplayJudge("gpt4", log, "GPT-4", "Vanilla", 2)
    items = log.items(SAMPLE[:4])
    flipped = [ScoringItem(i.prompt, i.alternative, alternative=i.response) for i in items]
    assert score(judge, flipped).rewards.tolist() == (1 - score(judge, items).rewards).tolist()
    unknown = score(judge, [ScoringItem("never asked", "a", alternative="b")])
    assert np.isnan(unknown.rewards[0]) and unknown.errors == [NO_RECORD] and unknown.tokens == 0


def test_order_consistency_comes_from_both_orders(log, verdicts):
    np.testing.assert_equal(order_consistency([1, 1, 2, np.nan], [1, 2, 2, 1]), [1.0, 0.0, 1.0, np.nan])
    ids = [p for p in log.pairs["pair_id"] if p.startswith("LLMBar/")]
    batch = score(ReplayJudge("falcon", log, "Falcon", "Vanilla", 2), log.items(ids))
    table = verdicts.xs(("Falcon", "Vanilla"), level=("judge", "mode"))["winner"].unstack("swap").loc[ids]
    assert (batch.certainty == 1).tolist() == (table[False] == table[True]).fillna(False).tolist()
    assert batch.certainty.mean() == pytest.approx(0.415, abs=0.001)  # the README's measured share
    assert score(ReplayJudge("falcon", log, "Falcon", "Vanilla", 1), log.items(ids)).certainty is None


def test_split_keeps_each_instruction_on_one_side(log):
    pairs = log.pairs[log.pairs["set"] == "Processed/MT-Bench"]
    calibration, held = split_by_instruction(pairs, seed=3)
    assert not set(pairs["instruction"][calibration]) & set(pairs["instruction"][held])
    assert 60 < calibration.sum() < 140 and (calibration ^ held).all()


@pytest.mark.parametrize("target", [0.15, 0.5, 0.8])
def test_calibration_meets_its_slow_share_on_the_calibration_split(log, target):
    """Order consistency is 0 or 1; the hybrid's tie-break still lets it meet any target share."""
    pairs = log.pairs[log.pairs["set"].str.startswith("LLMBar/")]
    calibration, _ = split_by_instruction(pairs, seed=0)
    items = log.items(list(pairs["pair_id"][calibration]))
    hybrid = HybridScorer("h", ReplayJudge("f", log, "Falcon", "Vanilla"), ReplayJudge("s", log, "GPT-4", "CoT", 1))
    fitted = asyncio.run(hybrid.calibrate(items, target))
    assert fitted.calibration_slow_fraction == pytest.approx(target, abs=0.02)
    assert score(hybrid, items).slow.mean() == pytest.approx(target, abs=0.02)


def test_cascade_calibrates_each_stage_on_what_reaches_it(log):
    items = log.items([p for p in log.pairs["pair_id"] if p.startswith("LLMBar/")])
    inner = HybridScorer("i", ReplayJudge("m", log, "GPT-4", "Vanilla"), ReplayJudge("s", log, "GPT-4", "CoT", 1))
    cascade = HybridScorer("c", ReplayJudge("f", log, "Falcon", "Vanilla"), inner)
    outer = asyncio.run(cascade.calibrate(items, 0.6, deeper=[0.3]))
    assert inner.calibration_.n_items == round(outer.calibration_slow_fraction * len(items))
    assert inner.calibration_.calibration_slow_fraction == pytest.approx(0.3, abs=0.01)
    batch = score(cascade, items)
    escalated = [items[i] for i in np.flatnonzero(batch.slow)]
    stages = [score(ReplayJudge("f", log, "Falcon", "Vanilla"), items), score(inner, escalated)]
    assert batch.tokens == stages[0].tokens + stages[1].tokens
    assert batch.rewards[batch.slow].tolist() == stages[1].rewards.tolist()
    with pytest.raises(ValueError, match="deeper stage targets need a hybrid slow part"):
        asyncio.run(inner.calibrate(items, 0.3, deeper=[0.5]))


def test_an_unparsed_verdict_escalates_rather_than_guesses(log, verdicts):
    unparsed = "LLMBar/Natural/54"  # PaLM2 gave no readable one-word verdict in either order
    assert pd.isna(recorded(verdicts, unparsed, "PaLM2", "Vanilla", False).winner)
    items = log.items([p for p in log.pairs["pair_id"] if p.startswith("LLMBar/Natural/")])
    hybrid = HybridScorer("h", ReplayJudge("f", log, "PaLM2", "Vanilla"), ReplayJudge("s", log, "GPT-4", "CoT", 1))
    asyncio.run(hybrid.calibrate(items, 0.05))
    batch = score(hybrid, log.items([unparsed, "LLMBar/Natural/0"]))
    gpt4 = recorded(verdicts, unparsed, "GPT-4", "CoT", False).winner
    assert batch.slow.tolist() == [True, False]
    assert batch.rewards[0] == float(gpt4 == 1) and batch.errors[0] is None


def test_answers_are_chosen_on_the_calibration_half_only():
    rows = pd.DataFrame([
        {"seed": 0, "policy": "slow a", "kind": "slow", "target": None, "cal_acc": 0.8, "cal_tokens": 100, "acc": 0.5},
        {"seed": 0, "policy": "slow b", "kind": "slow", "target": None, "cal_acc": 0.7, "cal_tokens": 100, "acc": 0.9},
        {"seed": 0, "policy": "hyb", "kind": "hybrid", "target": 0.2, "cal_acc": 0.81, "cal_tokens": 90, "acc": 0.1},
        {"seed": 0, "policy": "hyb", "kind": "hybrid", "target": 0.1, "cal_acc": 0.79, "cal_tokens": 40, "acc": 0.99},
        {"seed": 0, "policy": "fast", "kind": "fast", "target": None, "cal_acc": 0.6, "cal_tokens": 50, "acc": 0.2},
    ])
    picks = answers(rows).set_index("role")
    assert picks.loc["best always-slow", "policy"] == "slow a"
    assert picks.loc[HYBRID_ROLE, "target"] == 0.2
    assert picks.loc[HALF_ROLE, "cal_acc"] == 0.79
    rows.loc[2, "cal_acc"] = 0.75  # now no hybrid reaches the best slow policy: the most accurate one answers
    assert answers(rows).set_index("role").loc[HYBRID_ROLE, "target"] == 0.1


def test_cli_rejects_a_missing_data_directory(tmp_path, capsys):
    assert main(["--data", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "fix: point at a judge-replay directory" in error


def test_another_judges_agreement_is_a_certainty_with_both_judges_tokens(log, verdicts):
    from predictors.scorers.agreement import AgreementScorer, agreement

    np.testing.assert_equal(agreement([0.7, 0.2, np.nan, 0.5], [0.9, 0.6, 0.1, 1.0]), [1.0, 0.0, np.nan, 1.0])
    ids = [p for p in log.pairs["pair_id"] if p.startswith("LLMBar/")]
    falcon, palm = (ReplayJudge(j, log, j, "Vanilla", 1) for j in ("Falcon", "PaLM2"))
    checked = score(AgreementScorer("checked", falcon, palm), log.items(ids))
    first = verdicts.xs(("Vanilla", False), level=("mode", "swap"))["winner"].unstack("judge").loc[ids]
    both = first["Falcon"].notna() & first["PaLM2"].notna()
    assert np.isnan(checked.certainty).tolist() == (~both).tolist()
    same = (first["Falcon"] == first["PaLM2"])[both].astype(float)
    assert checked.certainty[both.to_numpy()].tolist() == same.tolist()
    alone = score(falcon, log.items(ids))
    np.testing.assert_equal(checked.rewards, alone.rewards)
    assert checked.tokens == alone.tokens + score(palm, log.items(ids)).tokens


# --- through the registry: replay scorers and a three-stage cascade -----------------------------------

def replay(name: str, judge: str, mode: str, **options) -> dict:
    return {"name": name, "kind": "replay", "path": str(DATA), "judge": judge, "mode": mode, **options}


CASCADE = [
    replay("falcon", "Falcon", "Vanilla"),
    replay("gpt4-fast", "GPT-4", "Vanilla"),
    replay("gpt4-cot", "GPT-4", "CoT", orders=1),
    {"name": "gpt4", "kind": "hybrid", "fast": "gpt4-fast", "slow": "gpt4-cot", "target_slow_fraction": 0.3,
     "use_erp": False, "thresholds": "gpt4.json"},
    {"name": "cascade", "kind": "hybrid", "fast": "falcon", "slow": "gpt4", "target_slow_fraction": 0.6,
     "use_erp": False, "thresholds": "calibration/cascade.json"},
]
STAGE_VERDICTS = {0: ("Falcon", "Vanilla"), 1: ("GPT-4", "Vanilla"), 2: ("GPT-4", "CoT")}


def replay_registry(tmp_path, scorers: list[dict]) -> Registry:
    path = tmp_path / "model_registry.yaml"
    path.write_text(yaml.safe_dump({**registry_document(tmp_path / "artifacts"), "scorers": scorers}))
    return load_registry(path)


def llmbar_split(log: VerdictLog) -> tuple[list[ScoringItem], list[str]]:
    """Calibration items and held-out pair ids of LLMBar, split by instruction (seed 0)."""
    pairs = log.pairs[log.pairs["set"].str.startswith("LLMBar/")]
    calibration, held = split_by_instruction(pairs, seed=0)
    return log.items(list(pairs["pair_id"][calibration])), list(pairs["pair_id"][held])


def test_a_registry_cascade_calibrates_saves_reloads_and_replays_each_stages_verdicts(tmp_path, log, verdicts):
    registry = replay_registry(tmp_path, CASCADE)
    with pytest.raises(RegistryError, match=r"scorers\[4\].thresholds'.*not found; fix: calibrate it with"):
        build_scorer(registry, "cascade")
    fresh = build_scorer(registry, "cascade", require_calibration=False)
    targets = cascade_targets(registry, "cascade")
    assert targets == [0.6, 0.3]
    calibration, held_ids = llmbar_split(log)
    fitted = asyncio.run(fresh.calibrate(calibration, targets[0], targets[1:]))
    assert fitted.deeper == fresh.slow.calibration_
    assert fitted.deeper.n_items == round(fitted.calibration_slow_fraction * len(calibration))
    assert fitted.deeper.calibration_slow_fraction == pytest.approx(0.3, abs=0.02)
    fitted.save(registry.path_of(registry.scorer("cascade").thresholds))

    reloaded = build_scorer(registry, "cascade")
    assert reloaded.calibration_ == fitted and reloaded.slow.calibration_ == fitted.deeper
    held = log.items(held_ids)
    batch, before = score(reloaded, held), score(fresh, held)
    assert batch.stage.tolist() == before.stage.tolist() and batch.tokens == before.tokens
    assert set(batch.stage.tolist()) == {0, 1, 2} and (batch.slow == (batch.stage > 0)).all()
    for pair, stage, reward in zip(held_ids, batch.stage, batch.rewards, strict=True):
        winner = recorded(verdicts, pair, *STAGE_VERDICTS[stage], False).winner
        np.testing.assert_equal(reward, np.nan if pd.isna(winner) else float(winner == 1))
    reached = [held[i] for i in np.flatnonzero(batch.slow)]
    inner = score(reloaded.slow, reached)
    assert escalated(batch, 3) == {"escalated_1": batch.slow.mean(), "escalated_2": inner.slow.sum() / len(held)}


def test_saved_thresholds_must_match_the_cascade_and_old_files_still_load(tmp_path, log):
    registry = replay_registry(tmp_path, CASCADE)
    calibration, _ = llmbar_split(log)
    two_stage = build_scorer(registry, "gpt4", require_calibration=False)
    fitted = asyncio.run(two_stage.calibrate(calibration, 0.3))
    legacy = fitted.model_dump(exclude={"deeper"})  # a thresholds file written before cascades were saved
    (tmp_path / "gpt4.json").write_text(json.dumps(legacy))
    assert build_scorer(registry, "gpt4").calibration_ == fitted
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration/cascade.json").write_text(json.dumps({**legacy, "fast": "falcon", "slow": "gpt4"}))
    with pytest.raises(RegistryError) as caught:
        build_scorer(registry, "cascade")
    assert "scorers[4].thresholds'" in str(caught.value) and "hold no deeper stage's calibration" in str(caught.value)
    assert "fix: recalibrate with `python -m benchmarks.scorer_eval" in str(caught.value)


def test_replay_entries_that_cannot_be_built_name_the_key_and_fix(tmp_path):
    registry = replay_registry(tmp_path, [replay("r", "GPT-4", "Vanilla", path="nowhere")])
    with pytest.raises(RegistryError, match=r"scorers\[0\].path'.*nowhere lacks pairs.parquet.*fix: point at"):
        build_scorer(registry, "r")
    registry = replay_registry(tmp_path, [replay("r", "GPT-5", "Vanilla")])
    with pytest.raises(RegistryError, match=r"scorers\[0\].judge'.*'GPT-5'.*recorded: .*GPT-4/CoT.*fix: set judge"):
        build_scorer(registry, "r")


def test_pooled_shares_report_every_stage_of_the_deepest_policy():
    ids, hit = np.arange(4), np.array([True, False, True, True])
    rows = pd.DataFrame([
        {"seed": 0, "policy": "cascade", "target": 0.5, "stages": 3, "tokens": 10, "output_tokens": 1,
         "escalated_1": 0.6, "escalated_2": 0.2},
        {"seed": 1, "policy": "hybrid", "target": 0.5, "stages": 2, "tokens": 20, "output_tokens": 3,
         "escalated_1": 0.4, "escalated_2": np.nan},
    ])
    hits = {hit_key(row.seed, row.policy, row.target): (ids, hit) for row in rows.itertuples()}
    stats = pooled(rows, hits, n_pairs=4)
    assert stats["escalated"] == pytest.approx([0.5, 0.1]) and stats["acc"] == 0.75
    assert fmt_escalated(stats["escalated"]) == "0.50 > 0.10"
    single = pd.DataFrame([{"seed": 0, "policy": "slow", "target": None, "stages": 1, "tokens": 5, "output_tokens": 1}])
    assert fmt_escalated(pooled(single, {hit_key(0, "slow", None): (ids, hit)}, 4)["escalated"]) == "-"


def test_a_cascade_calibrated_without_deeper_targets_keeps_and_records_its_inner_thresholds(log):
    items = log.items([p for p in log.pairs["pair_id"] if p.startswith("LLMBar/")])
    inner = HybridScorer("i", ReplayJudge("m", log, "GPT-4", "Vanilla"), ReplayJudge("s", log, "GPT-4", "CoT", 1))
    cascade = HybridScorer("c", ReplayJudge("f", log, "Falcon", "Vanilla"), inner)
    with pytest.raises(ValueError, match="'i' is an uncalibrated hybrid; pass deeper"):
        asyncio.run(cascade.calibrate(items, 0.6))
    own = asyncio.run(inner.calibrate(items, 0.2))
    assert asyncio.run(cascade.calibrate(items, 0.6)).deeper == own == inner.calibration_
    with pytest.raises(ValueError, match="hold a deeper stage's calibration, but the slow part 's' is not a hybrid"):
        inner.load_calibration(cascade.calibration_.model_copy(update={"fast": "m", "slow": "s"}))
