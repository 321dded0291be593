"""The `erp` command end to end on real data: fit, add one model, route, simulate, and bad input."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from router.simulation.report import Report
from router.cli import main
from conftest import REGISTRY_MODELS, registry_document


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, zeroeval_subset):
    out = tmp_path_factory.mktemp("simulate") / "out"
    code = main(
        ["simulate", "--data", str(zeroeval_subset), "--out", str(out), "--folds", "2", "--encoder", "minilm-static",
         "--holdout-model", "gpt-4o-mini-2024-07-18"]
    )
    assert code == 0
    return out


def test_simulate_writes_a_report_that_follows_the_schema(simulated):
    raw = json.loads((simulated / "report.json").read_text())
    report = Report.model_validate(raw)
    assert report.folds == 2 and len(report.models) == 6
    for key in ("apgr", "apgr_std", "cost_to_match_best", "cost_to_match_best_std"):
        assert key in raw["summary"]
    assert {"oracle", "category_best_average", "predicted_category_best_average", "global_best_average", "knn", "random_mix", "single_models"} <= set(raw["baselines"])
    assert all("spearman" in p and "spearman_std" in p for p in raw["predictors"].values())
    assert report.baselines["oracle"].apgr > report.summary.apgr
    assert len(report.summary.apgr_folds) == 2
    assert report.summary.apgr == pytest.approx(sum(report.summary.apgr_folds) / 2)
    assert report.baselines["oracle"].apgr > 1
    assert report.summary.apgr > report.baselines["random_mix"].apgr
    assert report.holdout is not None and report.holdout.model == "gpt-4o-mini-2024-07-18"
    assert (simulated / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| **ERP** |" in (simulated / "results.md").read_text()


def test_simulate_leaves_no_staging_files(simulated):
    assert sorted(p.name for p in simulated.iterdir()) == ["frontier.png", "report.json", "results.md"]


def test_fit_then_add_one_model_leaves_the_others_byte_identical(tmp_path, zeroeval_subset, capsys):
    document = registry_document(tmp_path / "artifacts")
    newcomer = dict(document["models"][0], name="deepseek-v2.5-0908", litellm_model="deepseek/deepseek-chat",
                    predictor=str(tmp_path / "artifacts/models/deepseek.joblib"), enabled=False)
    document["models"].append(newcomer)
    registry = tmp_path / "model_registry.yaml"
    registry.write_text(yaml.safe_dump(document))
    assert main(["fit", "--data", str(zeroeval_subset), "--registry", str(registry)]) == 0
    artifacts = sorted((tmp_path / "artifacts").rglob("*.joblib"))
    assert len(artifacts) == len(REGISTRY_MODELS) + 1
    before = {p: digest(p) for p in artifacts}

    assert main(["fit", "--data", str(zeroeval_subset), "--registry", str(registry), "--model", "deepseek-v2.5-0908"]) == 0
    assert {p: digest(p) for p in artifacts} == before
    assert (tmp_path / "artifacts/models/deepseek.joblib").is_file()

    document["models"][-1]["enabled"] = True
    registry.write_text(yaml.safe_dump(document))
    capsys.readouterr()
    assert main(["route", "Compute 17 * 23 and explain each step.", "--registry", str(registry)]) == 0
    printed = capsys.readouterr().out
    assert "deepseek-v2.5-0908" in printed and "choice:" in printed


def route_table(capsys, *args) -> tuple[dict[str, tuple[float, float]], str]:
    """Run `erp route`; return {model: (predicted reward, predicted cost)} and the chosen model."""
    capsys.readouterr()
    assert main(["route", *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split()[0]: (float(line.split()[1]), float(line.split()[2])) for line in lines[1:-1]}
    return rows, lines[-1].split("choice: ")[1]


def test_route_follows_lambda(write_registry, capsys):
    registry = str(write_registry())
    prompt = "Prove that the square root of 2 is irrational."
    rows, choice = route_table(capsys, prompt, "--registry", registry, "--lambda", "0")
    assert set(rows) == set(REGISTRY_MODELS)
    assert choice == max(rows, key=lambda m: rows[m][0])
    rows, choice = route_table(capsys, prompt, "--registry", registry, "--lambda", "1e9")
    assert choice == min(rows, key=lambda m: rows[m][1])
    rows, choice = route_table(capsys, prompt, "--registry", registry, "--lambda", "0", "--models", "gpt-4o-mini-2024-07-18")
    assert list(rows) == ["gpt-4o-mini-2024-07-18"] and choice == "gpt-4o-mini-2024-07-18"


def test_route_rejects_unknown_models_and_empty_prompts(write_registry, capsys):
    registry = str(write_registry())
    assert main(["route", "hello", "--registry", registry, "--models", "nope"]) == 2
    assert "unknown or disabled model(s): nope" in capsys.readouterr().err
    assert main(["route", "  ", "--registry", registry]) == 2


def test_route_without_fitted_predictors_says_to_run_fit(tmp_path, capsys):
    registry = tmp_path / "r.yaml"
    registry.write_text(yaml.safe_dump(registry_document(tmp_path / "none")))
    assert main(["route", "hi", "--registry", str(registry)]) == 2
    assert "erp fit --data DIR" in capsys.readouterr().err


def corrupt(source: Path, target: Path, how: str) -> Path:
    target.mkdir()
    prompts = pd.read_parquet(source / "prompts.parquet")
    outcomes = pd.read_parquet(source / "outcomes.parquet")
    prices = pd.read_csv(source / "models.csv")
    if how == "missing-file":
        prices = None
    elif how == "unpriced":
        prices = prices.iloc[1:]
    elif how == "no-outcomes":
        outcomes = outcomes[outcomes["prompt_id"] != prompts["prompt_id"].iloc[0]]
    elif how == "nan-reward":
        outcomes.loc[outcomes.index[3], "reward"] = np.nan
    prompts.to_parquet(target / "prompts.parquet")
    outcomes.to_parquet(target / "outcomes.parquet")
    if prices is not None:
        prices.to_csv(target / "models.csv", index=False)
    return target


@pytest.mark.parametrize(
    "how, message",
    [
        ("missing-file", "models.csv: file not found"),
        ("unpriced", "no price for model(s) gemma-2-2b-it"),
        ("no-outcomes", "lack an outcome for some model"),
        ("nan-reward", "NaN or infinite reward"),
    ],
)
def test_bad_datasets_fail_with_one_line_and_write_nothing(tmp_path, zeroeval_subset, capsys, how, message):
    data = corrupt(zeroeval_subset, tmp_path / "data", how)
    out = tmp_path / "out"
    assert main(["simulate", "--data", str(data), "--out", str(out), "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_unknown_models_are_refused(tmp_path, zeroeval_subset, write_registry, capsys):
    out = tmp_path / "out"
    assert main(["simulate", "--data", str(zeroeval_subset), "--out", str(out), "--holdout-model", "gpt-5"]) == 2
    assert "--holdout-model 'gpt-5' is not a model" in capsys.readouterr().err
    assert main(["fit", "--data", str(zeroeval_subset), "--registry", str(write_registry()), "--model", "gpt-5"]) == 2
    assert "no model named 'gpt-5'" in capsys.readouterr().err


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "router.cli", "simulate", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("erp: error:") and "not a directory" in result.stderr


def test_budget_mode_calibrates_lambda_at_fit_time(tmp_path, zeroeval_subset, capsys):
    from predictors.dataset import load_dataset
    from router.engine import RoutingEngine, text_tokens
    from router.policy import call_costs, choose, realized

    document = registry_document(tmp_path / "artifacts")
    document["policy"] = {"target_mean_cost_usd": 0.0004}
    registry = tmp_path / "model_registry.yaml"
    registry.write_text(yaml.safe_dump(document))
    assert main(["fit", "--data", str(zeroeval_subset), "--registry", str(registry)]) == 0
    assert "budget mode: target 0.0004 USD/request met" in capsys.readouterr().out
    engine = RoutingEngine.from_registry(registry)
    assert engine.default_lambda > 0
    data = load_dataset(zeroeval_subset)
    prediction = engine.predict(data.texts)
    costs = call_costs(text_tokens(data.texts), prediction.output_tokens, engine.usd_per_token)
    def spent(lambda_: float) -> float:
        return realized(choose(prediction.rewards, costs, lambda_), costs).mean()

    # 240 prompts make the spend a coarse step function of lambda, so "within 2%" is the unit test's job
    # (2000 prompts); here the calibrated lambda must be the tightest one that stays within the budget.
    assert spent(engine.default_lambda) <= 0.0004
    assert spent(engine.default_lambda * (1 - 1e-6)) > 0.0004
