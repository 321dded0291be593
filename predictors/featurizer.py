"""The shared part of the pool predictor: a low-rank multi-task prompt representation.

One small network maps a prompt embedding to a k-dimensional prompt vector and is
trained jointly on every pool model's rewards (one linear head per model) and, when
the data has categories, on a text-to-category head. With 29 models answering the
same prompts, a prompt's difficulty is learned from all of them. Beside it, k-means
clusters of the embeddings give finer topic groups than the dataset's categories.
Once fitted it is frozen: a new model joins by fitting only its own head on these features.

Feature layout: [prompt vector (rank) | category probabilities (n_categories_) | cluster one-hot (n_clusters)].
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.cluster import MiniBatchKMeans
from sklearn.utils.validation import check_is_fitted
from torch import nn

from predictors.torch_utils import seeded_generator, torch_threads


class _MultiTaskNet(nn.Module):
    def __init__(self, dim_in: int, hidden: int, rank: int, n_models: int, n_categories: int, dropout: float):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(dim_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, rank)
        )
        self.reward_heads = nn.Linear(rank, n_models)
        self.category_head = nn.Linear(rank, n_categories) if n_categories > 1 else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        z = self.trunk(x)
        categories = self.category_head(z) if self.category_head is not None else None
        return z, self.reward_heads(z), categories


class PromptFeaturizer(BaseEstimator):
    """Embedding -> [prompt vector (rank), category probabilities]: features every model head reads."""

    def __init__(
        self,
        rank: int = 32,
        hidden: int = 256,
        dropout: float = 0.1,
        weight_decay: float = 1e-4,
        learning_rate: float = 2e-3,
        max_epochs: int = 40,
        patience: int = 4,
        batch_size: int = 512,
        category_weight: float = 0.5,
        n_clusters: int = 64,
        random_state: int = 0,
    ) -> None:
        self.rank = rank
        self.hidden = hidden
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.learning_rate = learning_rate
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.category_weight = category_weight
        self.n_clusters = n_clusters
        self.random_state = random_state

    def fit(
        self,
        embeddings: np.ndarray,
        rewards: np.ndarray,
        weights: np.ndarray,
        categories: np.ndarray | None = None,
    ) -> "PromptFeaturizer":
        """rewards, weights: (prompts, models) expected rewards and their sample counts."""
        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        y = torch.as_tensor(np.nan_to_num(rewards, nan=0.0).astype(np.float32))
        w = torch.as_tensor(np.asarray(weights, dtype=np.float32))
        self.categories_ = np.unique(categories) if categories is not None else np.array([])
        c = torch.as_tensor(np.searchsorted(self.categories_, categories)) if len(self.categories_) > 1 else None
        generator = seeded_generator(self.random_state)
        order = torch.randperm(len(x), generator=generator)
        n_val = max(1, len(x) // 10)
        val, train = order[:n_val], order[n_val:]
        with torch_threads():
            torch.manual_seed(self.random_state)
            net = _MultiTaskNet(x.shape[1], self.hidden, self.rank, y.shape[1], len(self.categories_), self.dropout)
            optimizer = torch.optim.AdamW(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
            best, best_state, stale = np.inf, None, 0
            for _ in range(self.max_epochs):
                net.train()
                for batch in train[torch.randperm(len(train), generator=generator)].split(self.batch_size):
                    optimizer.zero_grad()
                    self._loss(net, x[batch], y[batch], w[batch], None if c is None else c[batch]).backward()
                    optimizer.step()
                net.eval()
                with torch.no_grad():
                    loss = self._loss(net, x[val], y[val], w[val], None if c is None else c[val]).item()
                if loss < best - 1e-5:
                    best, best_state, stale = loss, {k: v.clone() for k, v in net.state_dict().items()}, 0
                else:
                    stale += 1
                    if stale >= self.patience:
                        break
            net.load_state_dict(best_state)
            net.eval()
            self.net_ = net
            z = self._prompt_vectors(x)
        self.z_mean_ = z.mean(axis=0)
        self.z_scale_ = z.std(axis=0) + 1e-6
        self.n_categories_ = len(self.categories_) if len(self.categories_) > 1 else 0
        self.clusters_ = MiniBatchKMeans(
            n_clusters=min(self.n_clusters, len(embeddings)), n_init=3, batch_size=2048, random_state=self.random_state
        ).fit(np.asarray(embeddings, dtype=np.float32))
        return self

    def _loss(self, net, x, y, w, c) -> torch.Tensor:
        _, logits, category_logits = net(x)
        reward_loss = (nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum() / w.sum()
        if category_logits is None or c is None:
            return reward_loss
        return reward_loss + self.category_weight * nn.functional.cross_entropy(category_logits, c)

    def _prompt_vectors(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.net_.trunk(x).numpy()

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "net_")
        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        with torch_threads(), torch.no_grad():
            z, _, category_logits = self.net_(x)
        parts = [(z.numpy() - self.z_mean_) / self.z_scale_]
        if category_logits is not None:
            parts.append(torch.softmax(category_logits, dim=1).numpy())
        clusters = np.zeros((len(x), self.n_clusters), dtype=np.float32)
        clusters[np.arange(len(x)), self.clusters_.predict(np.asarray(embeddings, dtype=np.float32))] = 1.0
        parts.append(clusters)
        return np.hstack(parts).astype(np.float32)

    def predict_category(self, embeddings: np.ndarray) -> np.ndarray:
        """Most likely dataset category from text alone (live requests carry no category)."""
        features = self.transform(embeddings)
        if len(self.categories_) < 2:
            return np.full(len(features), self.categories_[0] if len(self.categories_) else "", dtype=object)
        return self.categories_[features[:, self.rank : self.rank + self.n_categories_].argmax(axis=1)]
