"""The shared part of the pool predictor: prompt embedding -> features every per-model predictor reads.

``PromptFeaturizer.fit`` learns, from every pool model's rewards at once, ``n_members`` bagged members
(each from its own seed); ``transform`` gives one block of features per member, laid out as
``FeatureLayout`` says: a low-rank prompt vector from a multi-task network (trained on all models'
rewards, and on text -> category and text -> source where the data has labels that help), the
predicted label probabilities, and a k-means cluster one-hot. It also keeps its training prompts as
the reference set for nearest-neighbour estimates (``neighbors``, ``reference_rows``). Once fitted it
is frozen: a new model joins by fitting only its own predictor on these features. Why bagging and
sources: benchmarks/RESULTS.md, *Bagging the featurizer* and *The parts of the expected reward*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator
from sklearn.cluster import MiniBatchKMeans
from sklearn.preprocessing import normalize
from sklearn.utils.validation import check_is_fitted
from torch import nn

from predictors.neighbors import nearest
from predictors.torch_utils import seeded_generator, torch_threads, train_with_early_stopping, validation_split

SAME_PROMPT = 1 - 1e-5  # cosine similarity above which a prompt is taken to be a reference prompt


@dataclass(frozen=True)
class FeatureLayout:
    """The featurizer's output: n_members blocks of [prompt vector (rank) | category probabilities | source probabilities | cluster one-hot].

    ``n_reference`` is the size of the reference set that neighbour indices point into.
    """

    n_members: int
    rank: int
    n_categories: int
    n_clusters: int
    n_reference: int = 0
    n_sources: int = 0

    @property
    def width(self) -> int:
        return self.rank + self.n_categories + self.n_sources + self.n_clusters

    def members(self, features: np.ndarray) -> list[np.ndarray]:
        if features.shape[1] != self.n_members * self.width:
            raise ValueError(f"expected {self.n_members * self.width} feature columns, got {features.shape[1]}")
        return [features[:, i * self.width : (i + 1) * self.width] for i in range(self.n_members)]

    def dense(self, block: np.ndarray) -> np.ndarray:
        """One member's prompt vector and category probabilities (sources, being many, reach the heads only as a prior)."""
        return block[:, : self.rank + self.n_categories]

    def without_sources(self, block: np.ndarray) -> np.ndarray:
        """Everything but the source probabilities: the length head's input (on MMLU-Pro, 91 more columns doubled its fit time)."""
        start = self.rank + self.n_categories
        return np.hstack([block[:, :start], block[:, start + self.n_sources :]]) if self.n_sources else block

    def categories(self, block: np.ndarray) -> np.ndarray:
        return block[:, self.rank : self.rank + self.n_categories]

    def groups(self, block: np.ndarray) -> dict[str, np.ndarray]:
        """One member's soft group memberships, where present: 'category' and 'source' probabilities, 'cluster' one-hots."""
        start = self.rank + self.n_categories
        groups = {
            "category": self.categories(block),
            "source": block[:, start : start + self.n_sources],
            "cluster": block[:, start + self.n_sources :],
        }
        return {name: group for name, group in groups.items() if group.shape[1]}


class _MultiTaskNet(nn.Module):
    def __init__(self, dim_in: int, hidden: int, rank: int, n_models: int, n_categories: int, n_sources: int, dropout: float):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(dim_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, rank)
        )
        self.reward_heads = nn.Linear(rank, n_models)
        self.category_head = nn.Linear(rank, n_categories) if n_categories > 1 else None
        self.source_head = nn.Linear(rank, n_sources) if n_sources > 1 else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
        """Prompt vector, reward logits per model, and logits of each label (categories, sources; None where absent)."""
        z = self.trunk(x)
        labels = [None if head is None else head(z) for head in (self.category_head, self.source_head)]
        return z, self.reward_heads(z), labels


def _nearest_center(centers: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """KMeans.predict without its per-call validation, which cost a serving decision about 0.4 ms per member."""
    return np.argmin((centers**2).sum(axis=1) - 2 * embeddings @ centers.T, axis=1)


@dataclass
class _Member:
    net: _MultiTaskNet
    z_mean: np.ndarray
    z_scale: np.ndarray
    clusters: MiniBatchKMeans


class PromptFeaturizer(BaseEstimator):
    """Embedding -> ``n_members`` feature blocks, laid out as ``layout`` (a ``FeatureLayout``) says."""

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
        label_weight: float = 0.5,
        n_clusters: int = 64,
        n_members: int = 5,
        n_neighbors: int = 50,
        min_prompts_per_source: int = 20,
        n_jobs: int = 2,
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
        self.label_weight = label_weight
        self.n_clusters = n_clusters
        self.n_members = n_members
        self.n_neighbors = n_neighbors
        self.min_prompts_per_source = min_prompts_per_source
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(
        self,
        embeddings: np.ndarray,
        rewards: np.ndarray,
        weights: np.ndarray,
        categories: np.ndarray | None = None,
        sources: np.ndarray | None = None,
    ) -> "PromptFeaturizer":
        """rewards, weights: (prompts, models) expected rewards and their sample counts.

        Sources are learned only where they split the categories further and average at least
        ``min_prompts_per_source`` prompts each (a source per prompt would teach nothing).
        """
        if self.n_members < 1:
            raise ValueError(f"n_members must be at least 1, got {self.n_members}")
        embeddings = np.asarray(embeddings, dtype=np.float32)
        x = torch.as_tensor(embeddings)
        y = torch.as_tensor(np.nan_to_num(rewards, nan=0.0).astype(np.float32))
        w = torch.as_tensor(np.asarray(weights, dtype=np.float32))
        self.categories_ = np.unique(categories) if categories is not None else np.array([])
        self.n_categories_ = len(self.categories_) if len(self.categories_) > 1 else 0
        self.sources_ = np.unique(sources) if self._sources_refine(categories, sources) else np.array([])
        self.n_sources_ = len(self.sources_)
        c = [
            torch.as_tensor(np.searchsorted(known, labels)) if len(known) > 1 else None
            for known, labels in ((self.categories_, categories), (self.sources_, sources))
        ]
        threads = 1 if self.n_jobs > 1 else None  # one torch thread per worker: the members run side by side
        self.members_ = Parallel(n_jobs=self.n_jobs)(
            delayed(self._fit_member)(embeddings, x, y, w, c, self.random_state + i, threads) for i in range(self.n_members)
        )
        self.reference_ = normalize(embeddings) if self.n_neighbors > 0 else embeddings[:0]
        return self

    def _sources_refine(self, categories: np.ndarray | None, sources: np.ndarray | None) -> bool:
        if sources is None:
            return False
        sources = np.asarray(sources).astype(str)
        n_sources = len(np.unique(sources))
        if n_sources < 2 or len(sources) < n_sources * self.min_prompts_per_source:
            return False
        if categories is None:
            return True
        return len(set(zip(categories, sources))) > len(set(categories))

    def _fit_member(
        self,
        embeddings: np.ndarray,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        c: list[torch.Tensor | None],
        seed: int,
        threads: int | None,
    ) -> _Member:
        generator = seeded_generator(seed)
        val, train = validation_split(len(x), generator)
        with torch_threads(threads):
            torch.manual_seed(seed)
            net = _MultiTaskNet(
                x.shape[1], self.hidden, self.rank, y.shape[1], len(self.categories_), self.n_sources_, self.dropout
            )
            optimizer = torch.optim.AdamW(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)

            def loss_on(rows: torch.Tensor) -> torch.Tensor:
                return self._loss(net, x[rows], y[rows], w[rows], [None if t is None else t[rows] for t in c])

            def run_epoch() -> None:
                for batch in train[torch.randperm(len(train), generator=generator)].split(self.batch_size):
                    optimizer.zero_grad()
                    loss_on(batch).backward()
                    optimizer.step()

            train_with_early_stopping(
                net, run_epoch, lambda: loss_on(val).item(), self.max_epochs, self.patience, min_delta=1e-5
            )
            with torch.no_grad():
                z = net.trunk(x).numpy()
        clusters = MiniBatchKMeans(
            n_clusters=min(self.n_clusters, len(embeddings)), n_init=1, batch_size=2048, random_state=seed
        ).fit(embeddings)
        return _Member(net, z.mean(axis=0), z.std(axis=0) + 1e-6, clusters)

    def _loss(self, net, x, y, w, labels) -> torch.Tensor:
        _, logits, label_logits = net(x)
        loss = (nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum() / w.sum()
        for predicted, truth in zip(label_logits, labels):
            if predicted is not None:
                loss = loss + self.label_weight * nn.functional.cross_entropy(predicted, truth)
        return loss

    @property
    def layout(self) -> FeatureLayout:
        check_is_fitted(self, "members_")
        return FeatureLayout(
            len(self.members_), self.rank, self.n_categories_, self.n_clusters, len(self.reference_), self.n_sources_
        )

    def neighbors(self, embeddings: np.ndarray) -> np.ndarray | None:
        """Indices (prompts, n_neighbors) of each prompt's most cosine-similar reference prompts; None without a reference set."""
        check_is_fitted(self, "reference_")
        if not len(self.reference_):
            return None
        return nearest(self.reference_, normalize(np.asarray(embeddings, dtype=np.float32)), self.n_neighbors)[0]

    def reference_rows(self, embeddings: np.ndarray) -> np.ndarray:
        """Each prompt's row in the reference set, or -1 where it is not one of the reference prompts."""
        check_is_fitted(self, "reference_")
        if not len(self.reference_):
            return np.full(len(embeddings), -1)
        rows, similarity = nearest(self.reference_, normalize(np.asarray(embeddings, dtype=np.float32)), 1)
        return np.where(similarity[:, 0] >= SAME_PROMPT, rows[:, 0], -1)

    def _member_features(self, member: _Member, embeddings: np.ndarray, x: torch.Tensor) -> np.ndarray:
        with torch_threads(), torch.no_grad():
            z, _, label_logits = member.net(x)
        parts = [(z.numpy() - member.z_mean) / member.z_scale]
        parts += [torch.softmax(logits, dim=1).numpy() for logits in label_logits if logits is not None]
        clusters = np.zeros((len(x), self.n_clusters), dtype=np.float32)
        clusters[np.arange(len(x)), _nearest_center(member.clusters.cluster_centers_, embeddings)] = 1.0
        parts.append(clusters)
        return np.hstack(parts)

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "members_")
        embeddings = np.asarray(embeddings, dtype=np.float32)
        x = torch.as_tensor(embeddings)
        return np.hstack([self._member_features(m, embeddings, x) for m in self.members_]).astype(np.float32)
