"""A local reward model: any `AutoModelForSequenceClassification` checkpoint on disk with one output.

The conversation is rendered with the tokenizer's own chat template (a reward model is trained on that
exact format); a tokenizer without one gets the (prompt, response) text pair, the cross-encoder convention.
A raw reward has no fixed scale, so it is standardized with calibration statistics and squashed:
reward = sigmoid((raw - mean) / std). Before `calibrate`, mean 0 and std 1 read the raw output as a
Bradley-Terry logit. Certainty is |raw - mean| / std: the distance from the decision boundary in units of
the calibration set's spread.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from predictors.scorers.base import ScoreBatch, ScoringItem


def resolve_device(device: str) -> str:
    """'auto' is the GPU when there is one, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class RewardModelScorer:
    def __init__(
        self,
        name: str,
        path: str | Path,
        batch_size: int = 8,
        device: str = "auto",
        max_length: int = 4096,
        trust_remote_code: bool = False,
    ) -> None:
        self.name, self.path, self.batch_size, self.max_length = name, Path(path), batch_size, max_length
        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        self.tokenizer.padding_side = "right"  # the head reads the last non-pad token; positions stay unshifted
        dtype = torch.float32 if self.device == "cpu" else "auto"
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.path, local_files_only=True, trust_remote_code=trust_remote_code, dtype=dtype
        ).to(self.device)
        self.model.eval()
        if self.model.config.num_labels != 1 and not trust_remote_code:
            raise ValueError(
                f"{self.path} has {self.model.config.num_labels} outputs; a reward model has one "
                "(checkpoints with a custom multi-objective head, like ArmoRM, need trust_remote_code: true)"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.mean_, self.std_ = 0.0, 1.0
        self._lock = threading.Lock()

    def raw_scores(self, items: list[ScoringItem]) -> np.ndarray:
        """The model's raw reward per item, in batches of similar length (less padding)."""
        texts = [self._render(item) for item in items]
        order = np.argsort([len(text[0]) + len(text[1] or "") for text in texts], kind="stable")
        raw = np.empty(len(items), dtype=np.float64)
        with self._lock, torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                raw[batch] = self._forward([texts[i] for i in batch])
        return raw

    async def calibrate(self, items: list[ScoringItem]) -> ScoreBatch:
        """Fit the standardization (mean and spread of raw rewards) on a calibration set.

        Returns the calibration set scored with it, so a caller never runs the model over it twice.
        """
        if len(items) < 2:
            raise ValueError("calibrating a reward model needs at least 2 items")
        raw = await asyncio.to_thread(self.raw_scores, items)
        self.mean_, self.std_ = float(raw.mean()), max(float(raw.std()), 1e-6)
        return self._batch(raw)

    def state(self) -> dict[str, float]:
        return {"mean": self.mean_, "std": self.std_}

    def load_state(self, state: dict[str, float]) -> None:
        self.mean_, self.std_ = float(state["mean"]), float(state["std"])

    async def score(self, items: list[ScoringItem]) -> ScoreBatch:
        return self._batch(await asyncio.to_thread(self.raw_scores, items))

    def _batch(self, raw: np.ndarray) -> ScoreBatch:
        z = (raw - self.mean_) / self.std_
        rewards = 1.0 / (1.0 + np.exp(-z))
        return ScoreBatch(rewards, 0, [None] * len(raw), slow=np.zeros(len(raw), dtype=bool), certainty=np.abs(z))

    def _render(self, item: ScoringItem) -> tuple[str, str | None]:
        """(text, None) from the chat template, or (prompt, response) as a text pair without one."""
        if not self.tokenizer.chat_template:
            return item.prompt, item.response
        messages = [{"role": "system", "content": item.system}] if item.system else []
        messages += [{"role": "user", "content": item.prompt}, {"role": "assistant", "content": item.response}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False), None

    def _forward(self, texts: list[tuple[str, str | None]]) -> np.ndarray:
        templated = texts[0][1] is None
        encoded = self.tokenizer(
            [text for text, _ in texts],
            None if templated else [pair for _, pair in texts],
            add_special_tokens=not templated,  # the template already wrote the special tokens
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        output = self.model(**encoded)
        reward = getattr(output, "score", None)
        reward = output.logits[:, 0] if reward is None else reward.reshape(len(texts), -1)[:, 0]
        return reward.float().cpu().numpy()
