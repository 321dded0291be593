import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from predictors import artifacts
from predictors.featurizer import FeatureLayout, PromptFeaturizer
from predictors.length import OutputLengthPredictor
from predictors.model import ModelPredictor
from predictors.pool import PoolPredictor
from predictors.reward import AutoRewardHead, BlendRewardHead, LightGBMRewardHead, LinearRewardHead, MLPRewardHead, weighted_log_loss
from predictors.training import TrainingSet
from router.simulation import baselines


def planted_rewards(rng, n=3000, d=8):
    """Binary rewards whose probability is a known function of the features."""
    X = rng.normal(size=(n, d)).astype(np.float32)
    p = 1 / (1 + np.exp(-(1.5 * X[:, 0] - 1.0 * X[:, 1])))
    y = (rng.uniform(size=n) < p).astype(float)
    return X, y, p


@pytest.mark.parametrize("head", [LinearRewardHead(), MLPRewardHead(), LightGBMRewardHead(), BlendRewardHead()])
def test_each_backend_learns_a_planted_signal(rng, head):
    X, y, p = planted_rewards(rng)
    train, test = slice(0, 2400), slice(2400, None)
    fitted = clone(head).fit(X[train], y[train])
    predicted = fitted.predict(X[test])
    assert ((predicted >= 0) & (predicted <= 1)).all()
    assert np.corrcoef(predicted, p[test])[0, 1] > 0.85
    constant = weighted_log_loss(y[test], np.full(600, y[train].mean()), np.ones(600))
    assert weighted_log_loss(y[test], predicted, np.ones(600)) < constant - 0.1


@pytest.mark.parametrize("head", [LinearRewardHead(), MLPRewardHead(), LightGBMRewardHead(), AutoRewardHead()])
def test_heads_refuse_to_predict_before_fit(head):
    with pytest.raises(NotFittedError):
        head.predict(np.zeros((2, 3)))


def test_sample_counts_weight_soft_targets(rng):
    """A prompt's target is its mean reward over samples; weights are the sample counts."""
    X = np.repeat(np.array([[0.0], [1.0]]), 200, axis=0)
    y = np.where(X[:, 0] > 0, 0.75, 0.25)
    predicted = LinearRewardHead(C=100).fit(X, y, np.full(len(y), 4.0)).predict(np.array([[0.0], [1.0]]))
    assert predicted == pytest.approx([0.25, 0.75], abs=0.01)


def test_auto_head_selects_by_cross_validated_log_loss(rng):
    X, y, _ = planted_rewards(rng)
    # A threshold signal trees capture and a linear model cannot.
    y = (np.abs(X[:, 0]) > 1).astype(float)
    head = AutoRewardHead().fit(X, y)
    assert set(head.cv_log_loss_) == {"linear", "lightgbm", "blend"}  # auto leaves the MLP out
    assert head.backend_ != "linear"
    assert head.cv_log_loss_[head.backend_] < head.cv_log_loss_["linear"] - 0.05


def test_auto_head_keeps_the_simplest_backend_unless_another_is_clearly_better(rng):
    X, y, _ = planted_rewards(rng)  # a linear signal: nothing beats logistic regression by a standard error
    assert AutoRewardHead().fit(X, y).backend_ == "linear"


def test_length_predictor_learns_lengths_and_falls_back_where_unknown(rng):
    X = rng.normal(size=(1000, 4)).astype(np.float32)
    input_tokens = rng.uniform(10, 500, size=1000)
    tokens = np.exp(4 + X[:, 0] + 0.8 * rng.normal(size=1000))
    fitted = OutputLengthPredictor().fit(X[:600], input_tokens[:600], tokens[:600])
    predicted = fitted.predict(X[600:], input_tokens[600:])
    assert np.corrcoef(np.log(predicted), np.log(tokens[600:]))[0, 1] > 0.7
    expected = np.exp(4 + X[600:, 0] + 0.8**2 / 2)  # E[tokens | prompt] of a log-normal; its median is 0.73 of this
    assert abs(predicted.mean() / expected.mean() - 1) < 0.1
    unknown = OutputLengthPredictor(default_output_tokens=321).fit(X, input_tokens, np.full(1000, np.nan))
    assert unknown.predict(X[:3], input_tokens[:3]).tolist() == [321, 321, 321]
    few = OutputLengthPredictor(default_output_tokens=321).fit(X, input_tokens, np.r_[np.full(10, 80.0), np.full(990, np.nan)])
    assert few.predict(X[:2], input_tokens[:2]).tolist() == [80, 80]


def fit_pool(embeddings, input_tokens, rewards, weights, output_tokens, models, categories=None, sources=None, backend="auto", n_jobs=2) -> PoolPredictor:
    training = TrainingSet(embeddings, input_tokens, rewards, weights, output_tokens, models, categories, sources)
    return PoolPredictor(backend=backend, n_jobs=n_jobs).fit(training)


def pool_data(rng, n=1500, m=5, d=16):
    """Models share a prompt difficulty; model j is better on category j % 2."""
    emb = rng.normal(size=(n, d)).astype(np.float32)
    difficulty = emb[:, 0]
    category = (emb[:, 1] > 0).astype(int)
    skill = np.linspace(-1, 1, m)
    logits = skill[None, :] - 1.5 * difficulty[:, None] + np.where(category[:, None] == (np.arange(m) % 2), 1.0, -1.0)
    rewards = (rng.uniform(size=(n, m)) < 1 / (1 + np.exp(-logits))).astype(float)
    return emb, rewards, np.array(["a", "b"])[category], 1 / (1 + np.exp(-logits))


def test_featurizer_shares_difficulty_and_category_across_models(rng):
    emb, rewards, categories, truth = pool_data(rng)
    featurizer = PromptFeaturizer(rank=8).fit(emb[:1200], rewards[:1200], np.ones_like(rewards[:1200]), categories[:1200])
    features = featurizer.transform(emb[1200:])
    assert featurizer.layout == FeatureLayout(n_members=5, rank=8, n_categories=2, n_clusters=featurizer.n_clusters, n_reference=1200)
    assert features.shape == (300, 5 * (8 + 2 + featurizer.n_clusters))
    first, second, *_ = featurizer.layout.members(features)
    assert not np.allclose(first[:, :8], second[:, :8])  # each member trains from its own seed
    layout = featurizer.layout
    probabilities = np.mean([layout.categories(block) for block in layout.members(features)], axis=0)
    assert (featurizer.categories_[probabilities.argmax(axis=1)] == categories[1200:]).mean() > 0.9
    train_features, tokens = featurizer.transform(emb[:1200]), np.full(1200, 100.0)
    heads = [
        ModelPredictor("linear", layout=featurizer.layout).fit(train_features, tokens, rewards[:1200, j], np.ones(1200), tokens)
        for j in range(5)
    ]
    predicted = np.column_stack([h.predict_reward(features, np.full(300, 100.0)) for h in heads])
    assert np.mean([np.corrcoef(predicted[:, j], truth[1200:, j])[0, 1] for j in range(5)]) > 0.8


def test_sources_that_refine_the_categories_give_a_source_mixture(rng):
    emb, rewards, categories, _ = pool_data(rng, n=1200)
    half = np.where(emb[:, 2] > 0, "x", "y")
    sources = np.char.add(categories.astype(str), half)  # four sources, two per category
    rewards[:, 0] = (rng.uniform(size=1200) < np.where(half == "x", 0.9, 0.1)).astype(float)  # m0 depends on the source only
    tokens = np.full(1200, 100.0)
    pool = fit_pool(emb[:900], tokens[:900], rewards[:900], np.ones((900, 5)), np.full((900, 5), np.nan), [f"m{j}" for j in range(5)], categories[:900], sources[:900], backend="linear")
    layout = pool.featurizer_.layout
    assert layout.n_sources == 4 and list(pool.featurizer_.sources_) == ["ax", "ay", "bx", "by"]
    features, neighbors = pool.featurizer_.transform(emb[900:]), pool.featurizer_.neighbors(emb[900:])
    probabilities = layout.groups(layout.members(features)[0])["source"]
    assert (pool.featurizer_.sources_[probabilities.argmax(axis=1)] == sources[900:]).mean() > 0.9
    parts = pool.model_predictors_["m0"].predict_parts(features, tokens[900:], neighbors)
    assert set(parts) == {"heads", "category", "source", "neighbors"}
    assert np.corrcoef(parts["source"], half[900:] == "x")[0, 1] > 0.9  # the category mixture cannot see this
    assert abs(np.corrcoef(parts["category"], half[900:] == "x")[0, 1]) < 0.3
    rewards_out, _ = pool.predict(emb[900:], tokens[900:], ["m0"])
    assert rewards_out[:, 0] == pytest.approx(np.mean(list(parts.values()), axis=0))
    no_refinement = {"the categories renamed": np.char.add(categories, "!"), "one per prompt": np.arange(1200).astype(str)}
    for why, labels in no_refinement.items():
        featurizer = PromptFeaturizer(rank=8, n_members=1).fit(emb, rewards, np.ones_like(rewards), categories, labels)
        assert featurizer.layout.n_sources == 0, why


def test_pool_predictor_round_trips_through_artifacts(tmp_path, rng):
    emb, rewards, categories, _ = pool_data(rng, n=600)
    tokens = np.exp(rng.normal(5, 0.5, size=rewards.shape))
    models = [f"m{j}" for j in range(rewards.shape[1])]
    pool = fit_pool(emb, np.full(600, 100.0), rewards, np.ones_like(rewards), tokens, models, categories, backend="linear", n_jobs=1)
    shared = artifacts.SharedArtifact(pool.featurizer_, "minilm-static", "id-1", 150.0, "planted")
    artifacts.save(shared, tmp_path / "shared.joblib")
    artifacts.save(artifacts.ModelArtifact("m0", pool.model_predictors_["m0"], "id-1"), tmp_path / "m0.joblib")
    loaded_shared = artifacts.load_shared(tmp_path / "shared.joblib")
    loaded = artifacts.load_model(tmp_path / "m0.joblib", loaded_shared).predictor
    features = pool.featurizer_.transform(emb[:5])
    tokens5 = np.full(5, 100.0)
    expected = pool.model_predictors_["m0"].predict_reward(features, tokens5)
    assert loaded.predict_reward(loaded_shared.featurizer.transform(emb[:5]), tokens5) == pytest.approx(expected)
    other = artifacts.SharedArtifact(pool.featurizer_, "minilm-static", "id-2", 150.0, "planted")
    with pytest.raises(artifacts.ArtifactError, match="another shared featurizer"):
        artifacts.load_model(tmp_path / "m0.joblib", other)
    (tmp_path / "broken.joblib").write_bytes(b"not a pickle")
    with pytest.raises(artifacts.ArtifactError, match="cannot be read"):
        artifacts.load_shared(tmp_path / "broken.joblib")


def test_pool_saves_and_loads_through_one_api_and_adds_a_model_with_the_pools_default_length(tmp_path, rng):
    emb, rewards, categories, _ = pool_data(rng, n=600)
    tokens = np.full(rewards.shape, np.nan)
    tokens[:, :4] = 200.0  # m4's lengths are unknown
    training = TrainingSet(emb, np.full(600, 100.0), rewards, np.ones_like(rewards), tokens, [f"m{j}" for j in range(5)], categories)
    pool = PoolPredictor("minilm-static", backend="linear", n_jobs=1).fit(training.select(["m0", "m1", "m2", "m3"]))
    assert pool.default_output_tokens_ == 200.0
    pool.add_model("m4", training)
    assert pool.model_default_output_tokens(["m0", "m4"]).tolist() == [200.0, 200.0]
    paths = {name: tmp_path / f"{name}.joblib" for name in ("m0", "m4")}
    pool.save(paths, tmp_path / "shared.joblib", calibrated_lambda=3.0)
    loaded = PoolPredictor.load(tmp_path / "shared.joblib", paths, "minilm-static")
    assert loaded.calibrated_lambda_ == 3.0 and loaded.default_output_tokens_ == 200.0
    expected = pool.predict(emb[:5], np.full(5, 100.0), ["m0", "m4"])
    actual = loaded.predict(emb[:5], np.full(5, 100.0), ["m0", "m4"])
    assert actual.rewards == pytest.approx(expected.rewards) and actual.output_tokens == pytest.approx(expected.output_tokens)
    with pytest.raises(artifacts.ArtifactError, match="'minilm-static' embeddings, but the registry's embedding is 'minilm'"):
        PoolPredictor.load(tmp_path / "shared.joblib", paths, "minilm")
    with pytest.raises(NotFittedError):
        PoolPredictor().predict(emb[:5], np.full(5, 100.0), ["m0"])


def test_model_predictor_averages_one_head_per_member_with_the_backend_chosen_once(rng):
    emb, rewards, categories, truth = pool_data(rng, n=900)
    featurizer = PromptFeaturizer(rank=8).fit(emb, rewards, np.ones_like(rewards), categories)
    features, tokens = featurizer.transform(emb), np.full(900, 100.0)
    predictor = ModelPredictor("auto", layout=featurizer.layout).fit(
        features, tokens, rewards[:, 0], np.ones(900), np.full(900, np.nan)
    )
    assert len(predictor.reward_heads_) == 5
    assert {head.backend_ for head in predictor.reward_heads_} == {predictor.selected_backend}
    assert set(predictor.cv_log_loss) == {"linear", "lightgbm", "blend"}
    assert predictor.reward_heads_[1].cv_log_loss_ == {}  # only the first member cross-validates
    members = [
        head.predict(predictor._reward_inputs(block, tokens, predictor._mixtures(block, means)))
        for head, block, means in zip(predictor.reward_heads_, featurizer.layout.members(features), predictor.group_means_)
    ]
    parts = predictor.predict_parts(features, tokens)
    assert parts["heads"] == pytest.approx(np.mean(members, axis=0))
    assert set(parts) == {"heads", "category"}  # no neighbours given, no neighbour estimate
    assert predictor.predict_reward(features, tokens) == pytest.approx((parts["heads"] + parts["category"]) / 2)
    assert np.corrcoef(predictor.predict_reward(features, tokens), truth[:, 0])[0, 1] > 0.8
    with pytest.raises(ValueError, match="feature columns"):
        predictor.predict_reward(features[:, :-1], tokens)


def test_neighbour_estimate_is_the_models_mean_reward_on_the_nearest_reference_prompts(rng):
    emb, rewards, categories, _ = pool_data(rng, n=900)
    pool = fit_pool(emb[:600], np.full(600, 100.0), rewards[:600], np.ones((600, 5)), np.full((600, 5), np.nan), ["m0", "m1", "m2", "m3", "m4"], categories[:600])
    featurizer = pool.featurizer_
    assert featurizer.reference_rows(emb[[5, 0, 700]]).tolist() == [5, 0, -1]  # reference prompts map to their rows
    features, tokens, neighbors = featurizer.transform(emb[600:]), np.full(300, 100.0), featurizer.neighbors(emb[600:])
    parts = pool.model_predictors_["m1"].predict_parts(features, tokens, neighbors)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    knn = baselines.knn_average(unit[:600], rewards[:600], unit[600:], featurizer.n_neighbors)
    assert parts["neighbors"] == pytest.approx(knn[:, 1])
    rewards_out, _ = pool.predict(emb[600:], tokens, ["m1"])
    assert rewards_out[:, 0] == pytest.approx((parts["heads"] + parts["category"] + parts["neighbors"]) / 3)
    # a model that joins with outcomes on only some reference prompts averages over the neighbours it has
    seen = np.zeros(600)
    seen[:300] = 1
    late = ModelPredictor("linear", layout=featurizer.layout).fit(
        featurizer.transform(emb[:600]), np.full(600, 100.0), rewards[:600, 2], seen, np.full(600, np.nan), featurizer.reference_rows(emb[:600])
    )
    masked = np.where(np.arange(600) < 300, rewards[:600, 2], np.nan)
    expected = np.nanmean(masked[neighbors], axis=1)
    assert late.predict_parts(features, tokens, neighbors)["neighbors"] == pytest.approx(np.where(np.isnan(expected), np.nanmean(masked), expected))
    # a model that joins with outcomes on other prompts only has no neighbour estimate, not a second copy of its heads
    outsider = ModelPredictor("linear", layout=featurizer.layout).fit(
        features, tokens, rewards[600:, 2], np.ones(300), np.full(300, np.nan), featurizer.reference_rows(emb[600:])
    )
    outsider_parts = outsider.predict_parts(features, tokens, neighbors)
    assert set(outsider_parts) == {"heads", "category"}
    assert outsider.predict_reward(features, tokens, neighbors) == pytest.approx((outsider_parts["heads"] + outsider_parts["category"]) / 2)
    pool.model_predictors_["outsider"] = outsider
    pool_parts = pool.predict_parts(emb[600:], tokens, ["m1", "outsider"])
    assert pool_parts["neighbors"][:, 0] == pytest.approx(parts["neighbors"])
    assert np.isnan(pool_parts["neighbors"][:, 1]).all()
    assert pool_parts["heads"][:, 1] == pytest.approx(outsider_parts["heads"])


def test_model_predictor_rejects_a_model_without_outcomes(rng):
    with pytest.raises(ValueError, match="no outcomes"):
        ModelPredictor().fit(np.zeros((3, 2)), np.ones(3), np.zeros(3), np.zeros(3), np.full(3, np.nan))


def test_embeddings_are_cached_on_disk_by_encoder_and_text(tmp_path):
    from predictors.embedding import Encoder, default_cache_dir

    texts = ["What is 2 + 2?", "Name the capital of France.", "What is 2 + 2?"]
    live = Encoder("minilm-static", default_cache_dir(), disk_cache=False)
    reference = live.encode(texts)
    assert live.parts[0]._cache is None
    # A fresh embedding cache that shares the (already distilled) static model.
    (tmp_path / "encoders").symlink_to(default_cache_dir() / "encoders", target_is_directory=True)
    first = Encoder("minilm-static", tmp_path).encode(texts)
    assert first.shape == (3, 256) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-4)
    assert np.allclose(first, reference, atol=1e-6) and np.array_equal(first[0], first[2])
    again = Encoder("minilm-static", tmp_path)
    assert np.array_equal(again.encode(texts), first)
    assert again.parts[0]._model is None  # every text came from the disk cache: the model was never loaded
