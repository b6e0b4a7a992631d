"""The learning task: scikit-learn's ``load_digits`` (8×8 images, 10 classes) split over
five trainers of unequal size, and a small MLP trained with SGD, all seeded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

SEED = 2026
# Unequal shares of the training set, so the weighted mean differs from the plain one.
SHARES = (0.08, 0.14, 0.20, 0.26, 0.32)
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray


def data() -> tuple[list[Split], Split]:
    """The trainers' partitions and the held-out test set (the same on every call)."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    n_test = int(len(x) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    cuts = np.cumsum([int(s * len(train)) for s in SHARES])[:-1]
    parts = np.split(train, cuts)
    return [Split(x[p], y[p]) for p in parts], Split(x[test], y[test])


def model() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def train(net: nn.Module, split: Split, seed: int, epochs: int = 3, lr: float = 0.2) -> float:
    """SGD over ``split`` in a seeded order; returns the last epoch's mean loss."""
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(split.x), torch.from_numpy(split.y)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    mean = 0.0
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(x), generator=generator).split(32):
            opt.zero_grad()
            loss = loss_fn(net(x[batch]), y[batch])
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        mean = total / len(x)
    return mean


def accuracy(net: nn.Module, split: Split) -> float:
    net.eval()
    with torch.no_grad():
        predicted = net(torch.from_numpy(split.x)).argmax(dim=1).numpy()
    return float((predicted == split.y).mean())
