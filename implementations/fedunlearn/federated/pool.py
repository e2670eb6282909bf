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
([`ClientPool.evaluate`][fedunlearn.federated.pool.ClientPool.evaluate]), and so is any other
statistic of their data ([`ClientPool.measure`][fedunlearn.federated.pool.ClientPool.measure], by
the name of a registered [measure][fedunlearn.federated.measures]).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.federated.client import ClientData
from fedunlearn.federated.costs import CostCounter, state_bytes
from fedunlearn.federated.measures import client_measure
from fedunlearn.federated.requests import ForgetRequest, validate
from fedunlearn.federated.task import State, Task
from fedunlearn.federated.training import FederationConfig, LocalPlan, client_update


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
    def _measure(self, state: State, participants: Sequence[int], plan: LocalPlan,
                 measure: str) -> dict[int, tuple[State, int]]:
        """Per participant: the measure's sums over the plan's data, and its size."""

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

    def measure(self, state: Mapping[str, torch.Tensor], participants: Sequence[int], plan: LocalPlan,
                measure: str, counter: CostCounter) -> dict[int, tuple[State, int]]:
        """Ask each participant for the registered measure ``measure`` of ``state`` on its plan data.

        The state is sent to each participant (bytes down); each replies named sums (bytes up)
        and its number of examples.

        Returns:
            Client id -> (named sums over its selected examples, their number).
        """
        replies = self._measure(dict(state), list(participants), plan, measure)
        for cid in participants:
            counter.bytes_down += state_bytes(state)
            counter.bytes_up += state_bytes(replies[cid][0])
        return {cid: replies[cid] for cid in participants}

    def evaluate(self, state: Mapping[str, torch.Tensor], participants: Sequence[int], plan: LocalPlan,
                 counter: CostCounter) -> float:
        """Mean per-example loss of ``state`` over the participants' plan data (sample-weighted;
        the ``loss`` measure pooled)."""
        replies = self.measure(state, participants, plan, "loss", counter)
        total = sum(float(sums["loss"]) for sums, _ in replies.values())
        count = sum(n for _, n in replies.values())
        return total / count


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

    def _measure(self, state, participants, plan, measure):
        return {cid: client_measure(self.task, self.model, state, plan.select(self.clients[cid]), measure)
                for cid in participants}
