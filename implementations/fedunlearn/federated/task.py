"""Tasks: what the federated loop trains, and which of its parameters travel.

A task builds the model, says which tensors are the *trainable state* that clients receive and
send back (all weights of a small network, or only LoRA adapter tensors of a language model), and
defines the per-example loss and the output distributions (for distillation). The loop, history
and every unlearning method work on plain state dicts of that trainable state, always on the CPU,
so an external engine (Flower) can call the same functions. The model itself lives on the task's
``device`` (``"cpu"`` by default, ``"cuda"`` where present); local training and evaluation move
each mini-batch there.

Two tasks ship with the package: [`ClassificationTask`][fedunlearn.federated.task.ClassificationTask]
(full-weight training of the digits network) and, beside it,
[`LoraCausalLMTask`][fedunlearn.federated.lora_task.LoraCausalLMTask] (LoRA adapters of a causal LM).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

State = dict[str, torch.Tensor]


def clone_state(state: Mapping[str, torch.Tensor]) -> State:
    """A detached copy of a state dict, on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


class Task(Protocol):
    """What the federated loop needs from a model family."""

    #: Where the model lives and mini-batches are sent (``"cpu"``, ``"cuda"``).
    device: str

    def build_model(self) -> nn.Module:
        """A fresh model; its trainable state is overwritten by the loop."""

    def get_state(self, model: nn.Module) -> State:
        """The trainable state (cloned) that clients exchange."""

    def set_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Load a trainable state into ``model``."""

    def per_example_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss of each example in ``batch`` (shape ``[batch]``)."""

    def sequence_nll(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        r"""$-\log \pi(y \mid x)$ of each example's whole target (shape ``[batch]``): the loss of a
        label for a classifier, the answer's summed token losses for text (preference losses such
        as NPO compare these)."""

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Output logits as ``[rows, classes]`` and a weight per row (0 = does not count)."""


class ClassificationTask:
    """Full-weight training of a classifier on ``{"x", "y"}`` tensors.

    Args:
        model_factory: Builds the network (called with no arguments).
        init_seed: Seed of the parameter initialisation.
        device: Where the network lives.
    """

    def __init__(self, model_factory, init_seed: int = 0, device: str = "cpu") -> None:
        self.model_factory = model_factory
        self.init_seed = init_seed
        self.device = device

    def build_model(self) -> nn.Module:
        """A fresh network initialised from ``init_seed`` (on the CPU, then moved to ``device``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            return self.model_factory().to(self.device)

    def get_state(self, model: nn.Module) -> State:
        """Every parameter and buffer."""
        return clone_state(model.state_dict())

    def set_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Load every parameter and buffer."""
        model.load_state_dict(state)

    def per_example_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of each example."""
        return F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")

    def sequence_nll(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        r"""$-\log p(y \mid x)$ of each example: its per-example loss (one label per example)."""
        return self.per_example_loss(model, batch)

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits of each input; every row counts."""
        out = model(batch["x"])
        return out, torch.ones(len(out), device=out.device)

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Predicted class of each row of ``x`` (on the CPU)."""
        model.eval()
        return model(x.to(self.device)).argmax(dim=-1).cpu()

    def accuracy(
        self, model: nn.Module, state: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> float:
        """Share of rows of ``x`` that ``state`` (loaded into ``model``) classifies as ``y``."""
        self.set_state(model, state)
        return float((self.predict(model, x) == y).float().mean())
