"""Tasks: what the federated loop trains, and which of its parameters travel.

A task builds the model, says which tensors are the *trainable state* that clients receive and
send back (all weights of a small network, or only LoRA adapter tensors of a language model), and
defines the per-example loss. The loop, history and every unlearning method work on plain state
dicts of that trainable state, so an external engine (Flower) can call the same functions.
"""

from __future__ import annotations

from typing import Mapping, Protocol

import torch
from torch import nn
from torch.nn import functional as F

State = dict[str, torch.Tensor]


def clone_state(state: Mapping[str, torch.Tensor]) -> State:
    """A detached copy of a state dict."""
    return {k: v.detach().clone() for k, v in state.items()}


class Task(Protocol):
    """What the federated loop needs from a model family."""

    def build_model(self) -> nn.Module:
        """A fresh model; its trainable state is overwritten by the loop."""

    def get_state(self, model: nn.Module) -> State:
        """The trainable state (cloned) that clients exchange."""

    def set_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Load a trainable state into ``model``."""

    def per_example_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss of each example in ``batch`` (shape ``[batch]``)."""


class ClassificationTask:
    """Full-weight training of a classifier on ``{"x", "y"}`` tensors.

    Args:
        model_factory: Builds the network (called with no arguments).
        init_seed: Seed of the parameter initialisation.
    """

    def __init__(self, model_factory, init_seed: int = 0) -> None:
        self.model_factory = model_factory
        self.init_seed = init_seed

    def build_model(self) -> nn.Module:
        """A fresh network initialised from ``init_seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            return self.model_factory()

    def get_state(self, model: nn.Module) -> State:
        """Every parameter and buffer."""
        return clone_state(model.state_dict())

    def set_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Load every parameter and buffer."""
        model.load_state_dict(state)

    def per_example_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of each example."""
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Predicted class of each row of ``x``."""
        model.eval()
        return model(x).argmax(dim=-1)

    def accuracy(
        self, model: nn.Module, state: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> float:
        """Share of rows of ``x`` that ``state`` (loaded into ``model``) classifies as ``y``."""
        self.set_state(model, state)
        return float((self.predict(model, x) == y).float().mean())
