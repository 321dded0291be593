"""Small torch helpers shared by the torch-based predictors."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Cap intra-op threads for small models: more threads only add overhead on tiny matmuls."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n or min(2, os.cpu_count() or 1))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seeded_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
