r"""The client seam: a pool of clients that train and evaluate on request.

Every training that involves clients — federated training, retraining, calibration, gradient
ascent by the target client, repair rounds — goes through a
[`ClientPool`][fedunlearn.federated.pool.ClientPool]: the server hands it a state, the
participants, the round, the federation config and a
[`LocalPlan`][fedunlearn.federated.training.LocalPlan], and gets back each participant's update
and sample count. The pool counts every cost once, in one place
([`ClientPool.train`][fedunlearn.federated.pool.ClientPool.train]): bytes down (the state and the
plan's states, per participant), bytes up (each update), client-rounds and the local steps the
clients report.

[`InProcessPool`][fedunlearn.federated.pool.InProcessPool] is the embedded default (the clients'
data in this process); the Flower app's pool sends the same requests to SuperNodes. A method that
trains only through a pool therefore runs on Flower unchanged, and the server never reads a
client's examples: even the loss a stopping rule needs is asked of the clients
([`ClientPool.evaluate`][fedunlearn.federated.pool.ClientPool.evaluate]).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.federated.client import ClientData
from fedunlearn.federated.costs import CostCounter, state_bytes
from fedunlearn.federated.requests import ForgetRequest, validate
from fedunlearn.federated.task import State, Task
from fedunlearn.federated.training import FederationConfig, LocalPlan, client_update

EVAL_BATCH = 256


@dataclass(frozen=True)
class ClientReply:
    r"""What one client returns from a round.

    Attributes:
        update: $\Delta^k_t$.
        num_examples: Examples it trained on (its aggregation weight).
        steps: Local optimiser steps it took.
    """

    update: State
    num_examples: int
    steps: int


class ClientPool(ABC):
    """The clients of a federation, as the server sees them (subclass for an engine)."""

    @abstractmethod
    def client_ids(self) -> list[int]:
        """Every client of the federation (sorted)."""

    @abstractmethod
    def sample_counts(self, plan: LocalPlan) -> dict[int, int]:
        """Client id -> number of examples the plan would train on (0 if none)."""

    @abstractmethod
    def check(self, request: ForgetRequest) -> None:
        """Raise ``ForgetRequestError`` if the request does not fit these clients."""

    @abstractmethod
    def _train(self, state: State, participants: Sequence[int], round_index: int,
               config: FederationConfig, plan: LocalPlan) -> dict[int, ClientReply]:
        """Run ``client_update`` on every participant; reply per client."""

    @abstractmethod
    def _evaluate(self, state: State, participants: Sequence[int], plan: LocalPlan) -> dict[int, tuple[float, int]]:
        """Per participant: sum of per-example losses of the plan's data, and its size."""

    def train(self, state: Mapping[str, torch.Tensor], participants: Sequence[int], round_index: int,
              config: FederationConfig, plan: LocalPlan, counter: CostCounter
              ) -> tuple[dict[int, State], dict[int, int]]:
        """Every participant trains from ``state`` under ``plan``; costs are counted here.

        Returns:
            ``(updates, sample_counts)`` keyed by client id, in ``participants`` order.
        """
        replies = self._train(dict(state), list(participants), round_index, config, plan)
        sent = state_bytes(state) + sum(state_bytes(s) for s in plan.states.values())
        updates, counts = {}, {}
        for cid in participants:
            reply = replies[cid]
            counter.bytes_down += sent
            counter.bytes_up += state_bytes(reply.update)
            counter.client_rounds += 1
            counter.client_steps += reply.steps
            updates[cid], counts[cid] = reply.update, reply.num_examples
        return updates, counts

    def evaluate(self, state: Mapping[str, torch.Tensor], participants: Sequence[int], plan: LocalPlan,
                 counter: CostCounter) -> float:
        """Mean per-example loss of ``state`` over the participants' plan data (sample-weighted).

        The state is sent to each participant (bytes down); the clients reply two numbers.
        """
        replies = self._evaluate(dict(state), list(participants), plan)
        counter.bytes_down += state_bytes(state) * len(participants)
        total = sum(loss for loss, _ in replies.values())
        count = sum(n for _, n in replies.values())
        return total / count


@torch.no_grad()
def client_loss(task: Task, model: nn.Module, state: Mapping[str, torch.Tensor], data: ClientData) -> tuple[float, int]:
    """Sum of per-example losses of ``state`` on ``data`` and the number of examples."""
    task.set_state(model, state)
    model.eval()
    device = getattr(task, "device", "cpu")
    total = 0.0
    for start in range(0, data.num_samples, EVAL_BATCH):
        index = torch.arange(start, min(start + EVAL_BATCH, data.num_samples))
        batch = {k: v.to(device) for k, v in data.batch(index).items()}
        total += float(task.per_example_loss(model, batch).sum())
    return total, data.num_samples


class InProcessPool(ClientPool):
    """Clients whose data lives in this process (the embedded default).

    Args:
        task: The task.
        clients: Client id -> data.
        model: A model instance to reuse (built from the task when omitted).
    """

    def __init__(self, task: Task, clients: Mapping[int, ClientData], model: nn.Module | None = None) -> None:
        self.task = task
        self.clients = dict(clients)
        self.model = model if model is not None else task.build_model()

    def client_ids(self) -> list[int]:
        """Every client id (sorted)."""
        return sorted(self.clients)

    def sample_counts(self, plan: LocalPlan) -> dict[int, int]:
        """Examples each client would train on under ``plan``."""
        return {cid: plan.select(data).num_samples for cid, data in sorted(self.clients.items())}

    def check(self, request: ForgetRequest) -> None:
        """[`validate`][fedunlearn.federated.requests.validate] against the clients' data."""
        validate(request, self.clients)

    def _train(self, state, participants, round_index, config, plan):
        replies = {}
        for cid in participants:
            steps = CostCounter()
            update, n = client_update(self.task, self.model, state, self.clients[cid], config, round_index,
                                      plan, steps)
            replies[cid] = ClientReply(update, n, steps.client_steps)
        return replies

    def _evaluate(self, state, participants, plan):
        return {cid: client_loss(self.task, self.model, state, plan.select(self.clients[cid]))
                for cid in participants}
