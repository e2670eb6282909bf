"""Small federations the decomposition entries' tests share (imported by the test files)."""

from __future__ import annotations

import torch

from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import TrainingHistory
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.training import FederationConfig
from fedunlearn.unlearning.base import TrainedFederation
from fedunlearn.unlearning.scenarios import build_scenario


def digits_setup(clients: dict | None = None, rounds: int = 3, num_clients: int = 6) -> TrainedFederation:
    """An untrained setup: clients ``0 .. num_clients - 1`` of digits-backdoor (or ``clients``), 24
    examples each, ``rounds`` rounds of batch 8 at lr 0.1, every client every round."""
    scenario = build_scenario("digits-backdoor", seed=0)
    if clients is None:
        clients = {c: d.select(torch.arange(d.num_samples) < 24) for c, d in scenario.clients.items()
                   if c < num_clients}
    model = scenario.task.build_model()
    config = FederationConfig(rounds=rounds, batch_size=8, lr=0.1, seed=0)
    return TrainedFederation(scenario.task, InProcessPool(scenario.task, clients, model), config,
                             scenario.task.get_state(model), {}, TrainingHistory({}), CostCounter(), model)


def states_equal(a: dict, b: dict) -> bool:
    """Same keys and every tensor identical, bit for bit."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
