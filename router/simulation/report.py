"""The schema of ``report.json`` written by ``erp simulate``: defined once, used by the CLI, plots and tests.

Every metric is the mean over folds with a ``_std`` sibling (population standard deviation over folds).
Costs are mean USD per prompt; rewards are mean realized reward per prompt.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

SCHEMA_VERSION = "1"


class PolicyMetrics(BaseModel):
    apgr: float = Field(description="average performance gap recovered (0 = cheapest model, 1 = best single)")
    apgr_std: float
    apgr_folds: list[float] = Field(description="APGR per fold, in fold order (paired across policies)")
    cost_to_match_best: float | None = Field(
        description="lowest mean cost reaching the best single model's reward, as a fraction of its cost; "
        "mean over the folds that reach it, null if none does"
    )
    cost_to_match_best_std: float | None
    cost_to_match_best_folds: int = Field(description="how many folds reach the best single model's reward")
    reward_at_best_cost: float = Field(description="best reward at a mean cost <= the best single model's cost")
    reward_at_best_cost_std: float


class FrontierPoint(BaseModel):
    lambda_: float | None = Field(alias="lambda", description="reward per USD; null for single-model points")
    cost_usd: float
    reward: float


class SingleModel(BaseModel):
    cost_usd: float
    cost_usd_std: float
    reward: float
    reward_std: float


class PredictorQuality(BaseModel):
    spearman: float | None
    spearman_std: float | None
    roc_auc: float | None
    roc_auc_std: float | None
    brier: float
    brier_std: float
    ece: float
    ece_std: float
    log_loss: float
    log_loss_std: float
    backend: str = Field(description="backend chosen most often across folds")
    backend_counts: dict[str, int]
    cv_log_loss: dict[str, float] = Field(description="inner cross-validated log-loss per backend, mean over folds")


class ReferenceModels(BaseModel):
    """The two single models every policy is measured between: the cheapest and the best on average."""

    cheapest: str
    best_single: str


class Holdout(BaseModel):
    model: str
    before: PolicyMetrics = Field(description="ERP over the pool without the model")
    after: PolicyMetrics = Field(description="after adding the model by fitting only its own predictor")
    predictor: PredictorQuality
    frontiers: dict[str, list[FrontierPoint]]


class Timing(BaseModel):
    embedding_s: float
    folds_s: float
    total_s: float


class Report(BaseModel):
    schema_version: str = SCHEMA_VERSION
    dataset: str
    n_prompts: int
    models: list[str]
    folds: int
    seed: int
    encoder: str
    backend: str
    reference: ReferenceModels
    summary: PolicyMetrics = Field(description="ERP")
    baselines: dict[str, PolicyMetrics]
    single_models: dict[str, SingleModel]
    predictors: dict[str, PredictorQuality]
    frontiers: dict[str, list[FrontierPoint]] = Field(description="fold-averaged points per lambda, per policy")
    holdout: Holdout | None = None
    timing: Timing
