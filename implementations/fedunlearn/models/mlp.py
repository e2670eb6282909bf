"""A small multilayer perceptron for the 8x8 digits stand-in (64 inputs, 10 classes)."""

from __future__ import annotations

from torch import nn


class DigitsMLP(nn.Sequential):
    """64 -> hidden -> hidden -> 10, ReLU activations (the "2NN" of FedAvg, scaled down).

    Args:
        hidden: Width of the hidden layers.
        num_classes: Output classes.
    """

    def __init__(self, hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__(
            nn.Linear(64, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
