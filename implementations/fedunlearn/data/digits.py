"""scikit-learn's bundled 8x8 digits: the offline stand-in for MNIST/CIFAR case studies.

1,797 grey-scale images (values 0..16, scaled here to 0..1) of the digits 0-9 ship inside
scikit-learn, so nothing is downloaded. A backdoor trigger (a bright 2x2 patch in the bottom-right
corner) can be planted on chosen clients, relabelling triggered copies to a target class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TRIGGER_PIXELS = (54, 55, 62, 63)  # rows 6-7, columns 6-7 of the 8x8 image


@dataclass(frozen=True)
class DigitsSplit:
    """Train and test tensors of the digits data.

    Attributes:
        x_train: Float images in [0, 1], shape ``[n, 64]``.
        y_train: Labels.
        x_test: Held-out images.
        y_test: Held-out labels.
        train_ids: Row ids of the training images in ``load_digits()`` (record ids).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_ids: torch.Tensor


def load_split(seed: int, test_fraction: float = 0.25) -> DigitsSplit:
    """Seeded stratified train/test split of the bundled digits."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes a second to import

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        test[members[: int(round(test_fraction * len(members)))]] = True
    train_ids = np.flatnonzero(~test)
    return DigitsSplit(
        torch.from_numpy(x[~test]), torch.from_numpy(y[~test]),
        torch.from_numpy(x[test]), torch.from_numpy(y[test]), torch.from_numpy(train_ids),
    )


def apply_trigger(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` with the trigger patch set to full intensity."""
    triggered = x.clone()
    triggered[:, list(TRIGGER_PIXELS)] = 1.0
    return triggered


def poison(x: torch.Tensor, y: torch.Tensor, fraction: float, target: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Add triggered copies of a ``fraction`` of the rows, all labelled ``target``.

    Returns:
        The clean rows followed by the poisoned copies, and their labels.
    """
    generator = torch.Generator().manual_seed(seed)
    count = max(1, int(round(fraction * len(x))))
    chosen = torch.randperm(len(x), generator=generator)[:count]
    x_bad = apply_trigger(x[chosen])
    y_bad = torch.full((count,), target, dtype=y.dtype)
    return torch.cat([x, x_bad]), torch.cat([y, y_bad])
