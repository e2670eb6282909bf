"""The common interface of unlearning methods, and the trained federation they start from.

A method is a small class with a ``name``, the request ``granularities`` it serves and a frozen
``Config`` of the paper's defaults. Its [`unlearn`][fedunlearn.unlearning.base.UnlearningMethod.unlearn]
receives the trained federation (clients, config, initial and final state, history), the request
and a [`CostCounter`][fedunlearn.federated.costs.CostCounter]; it must do all its training through
the shared loop functions with that counter, so its cost is *measured*, not estimated.
[`run_method`][fedunlearn.unlearning.base.run_method] validates the request, runs the method,
times it and checks that the stored history was not modified.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar, Mapping

import torch
from torch import nn

from fedunlearn.federated.client import ClientData
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import TrainingHistory
from fedunlearn.federated.loop import FederationConfig, run_federation
from fedunlearn.federated.task import State, Task
from fedunlearn.unlearning.requests import ForgetRequest, ForgetRequestError, validate


@dataclass
class TrainedFederation:
    """A federation after training: everything an unlearning method may use.

    Attributes:
        task: The task (model family, trainable state, loss).
        clients: Client id -> data, as trained on (including data to forget).
        config: Federated hyperparameters of training.
        init_state: $w_0$.
        final_state: $\\theta_o$, the trained model.
        history: What the loop recorded.
        cost: Cost of training.
        model: A reusable model instance.
        server_inputs: Unlabeled inputs the server holds (see
            [`Scenario`][fedunlearn.unlearning.scenarios.Scenario]), if any.
    """

    task: Task
    clients: dict[int, ClientData]
    config: FederationConfig
    init_state: State
    final_state: State
    history: TrainingHistory
    cost: CostCounter
    model: nn.Module = field(repr=False)
    server_inputs: dict[str, torch.Tensor] | None = field(default=None, repr=False)


def train_federation(task: Task, clients: Mapping[int, ClientData], config: FederationConfig,
                     init_state: State | None = None, progress: bool | str = False,
                     server_inputs: dict[str, torch.Tensor] | None = None) -> TrainedFederation:
    """Train $\\theta_o$ with FedAvg and record its history (every ``config.record_every`` rounds)."""
    model = task.build_model()
    init_state = init_state if init_state is not None else task.get_state(model)
    history = TrainingHistory(init_state, config.record_every, {"config": config.as_dict()})
    cost = CostCounter()
    final = run_federation(task, clients, init_state, config, model=model, counter=cost,
                           history=history, progress=progress)
    return TrainedFederation(task, dict(clients), config, init_state, final, history, cost, model,
                             server_inputs)


class UnlearningMethod:
    """Base class of unlearning methods (subclass and implement ``unlearn``)."""

    name: ClassVar[str] = ""
    granularities: ClassVar[frozenset[str]] = frozenset({"client"})
    #: The $\Delta t$ the training history must be recorded with (``None``: any). The benchmark
    #: trains $\theta_o$ with this ``record_every`` (recording does not change training).
    record_every: int | None = None

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """Return the unlearned state; count all work in ``counter``."""
        raise NotImplementedError


@dataclass
class UnlearningResult:
    """What a method returned, with the cost the shared counters measured."""

    method: str
    state: State
    cost: CostCounter


def history_fingerprint(history: TrainingHistory) -> str:
    """SHA-256 over every stored tensor and round record (detects in-place modification)."""
    digest = hashlib.sha256()

    def feed(state: Mapping[str, torch.Tensor] | None) -> None:
        for key in sorted(state or {}):
            digest.update(key.encode())
            digest.update(state[key].detach().contiguous().numpy().tobytes())

    feed(history.init_state)
    feed(history.final_state)
    for r in history.rounds:
        digest.update(repr((r.round_index, r.participants, sorted(r.sample_counts.items()))).encode())
        feed(r.global_state)
        for cid in sorted(r.client_updates):
            feed(r.client_updates[cid])
    return digest.hexdigest()


def run_method(method: UnlearningMethod, run: TrainedFederation, request: ForgetRequest) -> UnlearningResult:
    """Validate, run and measure one unlearning method.

    Raises:
        ForgetRequestError: If the request is invalid or of a granularity the method cannot serve.
        RuntimeError: If the method modified the stored history.
    """
    if request.kind not in method.granularities:
        raise ForgetRequestError(
            f"method {method.name!r} serves {sorted(method.granularities)} requests, not {request.kind!r}"
        )
    validate(request, run.clients, run.history.clients if request.kind == "client" else None)
    before = history_fingerprint(run.history)
    counter = CostCounter()
    with counter.timed():
        state = method.unlearn(run, request, counter)
    if history_fingerprint(run.history) != before:
        raise RuntimeError(f"method {method.name!r} modified the stored training history")
    return UnlearningResult(method.name, state, counter)
