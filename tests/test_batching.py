"""The prediction batcher: concurrent callers share batches and each gets its own result or the batch's error."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from router.batching import Batcher


def test_concurrent_items_share_batches_and_get_their_own_results() -> None:
    release = threading.Event()
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        release.wait(10)
        return [item * 10 for item in items]

    def wait_until(condition) -> None:
        for _ in range(1000):
            if condition():
                return
            threading.Event().wait(0.01)
        pytest.fail("timed out waiting for the batcher")

    batcher = Batcher(run)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batcher.submit, 0)]
        wait_until(lambda: sizes == [1])
        futures += [pool.submit(batcher.submit, i) for i in range(1, 8)]
        wait_until(lambda: batcher._queue.qsize() == 7)
        release.set()
        assert [f.result(10) for f in futures] == [i * 10 for i in range(8)]
    assert sizes == [1, 7], "everything queued behind a running batch goes in the next one"


def test_a_failing_batch_fails_its_callers_and_the_worker_survives() -> None:
    calls = []

    def run(items: list[str]) -> list[str]:
        calls.append(items)
        if items == ["bad"]:
            raise KeyboardInterrupt("not even an Exception")
        return items

    batcher = Batcher(run)
    with pytest.raises(KeyboardInterrupt):
        batcher.submit("bad")
    assert batcher.submit("good") == "good"
