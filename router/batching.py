"""Micro-batching of predictions: concurrent requests share one encoder and predictor pass.

For one prompt the per-call overhead of the encoder and of every model's heads dominates, so a proxy that
decides the prompts arriving together in one batch decides many more per second on the same core. One
worker thread runs the batches, which also keeps the (not thread-safe) encoder and predictors on one thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Runs ``run_batch`` on whatever items are waiting (up to ``max_batch``), one batch at a time."""

    def __init__(self, run_batch: Callable[[list[Item]], list[Result]], max_batch: int = 64) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Item, Future]] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def submit(self, item: Item) -> Result:
        """Wait for this item's result; raises what ``run_batch`` raised for its batch."""
        future: Future = Future()
        self._queue.put((item, future))
        self._ensure_worker()
        return future.result()

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="erp-prediction-batcher", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.run_batch([item for item, _ in batch])
            except BaseException as exc:  # delivered to every waiting caller; the worker must survive
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)
