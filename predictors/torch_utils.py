"""Small torch helpers shared by the torch-based predictors."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn


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


def validation_split(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random tenth of the rows n (at least one) for early stopping, and the rest for training."""
    order = torch.randperm(n, generator=generator)
    n_val = max(1, n // 10)
    return order[:n_val], order[n_val:]


def train_with_early_stopping(
    net: nn.Module,
    run_epoch: Callable[[], None],
    validation_loss: Callable[[], float],
    max_epochs: int,
    patience: int,
    min_delta: float,
) -> nn.Module:
    """Train ``net`` one ``run_epoch`` at a time until the validation loss has not improved by more than
    ``min_delta`` for ``patience`` epochs (or ``max_epochs`` ran); return it in eval mode with the best weights.

    Each epoch runs in train mode; the validation loss is computed in eval mode without gradients.
    """
    best, best_state, stale = np.inf, None, 0
    for _ in range(max_epochs):
        net.train()
        run_epoch()
        net.eval()
        with torch.no_grad():
            loss = validation_loss()
        if loss < best - min_delta:
            best, best_state, stale = loss, {k: v.clone() for k, v in net.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= patience:
                break
    net.load_state_dict(best_state)
    return net.eval()
