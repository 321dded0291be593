"""Nearest reference prompts in embedding space, shared by the predictor's local estimate and the kNN baseline."""

from __future__ import annotations

import numpy as np

CHUNK = 1024


def nearest(reference: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities, each (queries, k), of the k most similar reference rows (unordered).

    Embeddings are unit-normalized, so a dot product is the cosine similarity.
    """
    k = min(k, len(reference))
    indices = np.empty((len(queries), k), dtype=np.int64)
    similarities = np.empty((len(queries), k))
    for start in range(0, len(queries), CHUNK):
        similarity = queries[start : start + CHUNK] @ reference.T
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        indices[start : start + CHUNK] = top
        similarities[start : start + CHUNK] = np.take_along_axis(similarity, top, axis=1)
    return indices, similarities
