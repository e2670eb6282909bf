"""A small CNN for the 8x8 digits stand-in, with a channel mask after each convolution.

Added for the class-discriminative pruning entry (issue 12): that method scores the output
channels of every convolution and prunes some. A pruned channel is switched off by a 0 in its
layer's mask (a buffer, so it travels with the state and is never trained); its filter is zeroed
too. With every mask at 1 (as trained) the network is an ordinary two-layer CNN.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DigitsCNN(nn.Module):
    """1x8x8 -> conv 3x3 (c1) -> ReLU -> conv 3x3 (c2) -> ReLU -> max-pool 2 -> linear -> classes.

    Inputs are the 64 flattened pixels (the digits tensors' layout).

    Args:
        channels: Output channels of the two convolutions.
        num_classes: Output classes.
    """

    #: ``(convolution, mask buffer)`` of each prunable layer, in forward order.
    prunable = (("conv1", "mask1"), ("conv2", "mask2"))

    def __init__(self, channels: tuple[int, int] = (16, 32), num_classes: int = 10) -> None:
        super().__init__()
        c1, c2 = channels
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.register_buffer("mask1", torch.ones(c1))
        self.register_buffer("mask2", torch.ones(c2))
        self.fc = nn.Linear(c2 * 4 * 4, num_classes)

    def conv_outputs(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The masked output $O_l$ of each convolution (before its ReLU), by layer name, and the logits."""
        h = x.reshape(-1, 1, 8, 8)
        outputs = {}
        for conv, mask in self.prunable:
            out = getattr(self, conv)(h) * getattr(self, mask)[:, None, None]
            outputs[conv] = out
            h = F.relu(out)
        return outputs, self.fc(F.max_pool2d(h, 2).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.conv_outputs(x)[1]
