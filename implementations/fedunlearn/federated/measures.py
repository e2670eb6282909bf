r"""Measures: statistics a client computes on its own data when the server asks.

Some methods need more from a client than an update: a loss for a stopping rule, the
memorisation of its sequences, the gradient and Hessian of a convex head at the current weights.
The server asks through the client seam,
[`ClientPool.measure`][fedunlearn.federated.pool.ClientPool.measure], naming a registered
[`Measure`][fedunlearn.federated.measures.Measure]; each client returns **sums** over the examples
its plan selects (and their count), so the server can pool clients exactly:
$\bar m = \sum_k S_k / \sum_k n_k$. Only these sums leave a client, never its examples.

Built in: ``loss`` ($\sum_i \ell_i$). An entry registers its own with
[`register_measure`][fedunlearn.federated.measures.register_measure]; a Flower client that
receives an unknown name imports the catalog first, as for objectives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.federated.client import ClientData
from fedunlearn.federated.registry import Registry
from fedunlearn.federated.task import State, Task

Batch = dict[str, torch.Tensor]
MeasureFn = Callable[[Task, nn.Module, State, Batch], dict[str, torch.Tensor]]
#: Examples per batch when a client computes a measure.
MEASURE_BATCH = 256


@dataclass(frozen=True)
class Measure:
    """A named per-batch statistic.

    Attributes:
        name: Registered name (what travels to a client).
        fn: ``fn(task, model, state, batch)`` -> named tensors, each a **sum** over the batch.
        uses_model: Whether the client loads ``state`` into its model before calling ``fn``
            (``False`` for statistics computed from ``state`` directly, e.g. of a linear head).
    """

    name: str
    fn: MeasureFn
    uses_model: bool = True


#: Measures by name.
MEASURES: Registry[Measure] = Registry("measure")


def register_measure(name: str, uses_model: bool = True) -> Callable[[MeasureFn], MeasureFn]:
    """Decorator: register ``fn(task, model, state, batch) -> {name: sum}`` as measure ``name``."""
    def decorate(fn: MeasureFn) -> MeasureFn:
        MEASURES.add(name, Measure(name, fn, uses_model))
        return fn
    return decorate


@register_measure("loss")
def loss_sum(task: Task, model: nn.Module, state: State, batch: Batch) -> dict[str, torch.Tensor]:
    r"""$\sum_i \ell_i$ over the batch, as ``{"loss": ...}``."""
    return {"loss": task.per_example_loss(model, batch).sum()}


@torch.no_grad()
def client_measure(task: Task, model: nn.Module, state: Mapping[str, torch.Tensor], data: ClientData,
                   name: str) -> tuple[dict[str, torch.Tensor], int]:
    """Measure ``name`` of ``state`` summed over ``data`` (what one client replies), and its size.

    Raises:
        KeyError: If no measure ``name`` is registered.
    """
    measure = MEASURES.get(name)
    state = dict(state)
    if measure.uses_model:
        task.set_state(model, state)
        model.eval()
    device = getattr(task, "device", "cpu")
    totals: dict[str, torch.Tensor] = {}
    for start in range(0, data.num_samples, MEASURE_BATCH):
        index = torch.arange(start, min(start + MEASURE_BATCH, data.num_samples))
        batch = {k: v.to(device) for k, v in data.batch(index).items()}
        for key, value in measure.fn(task, model, state, batch).items():
            value = value.detach().double().cpu()
            totals[key] = totals[key] + value if key in totals else value
    return totals, data.num_samples
