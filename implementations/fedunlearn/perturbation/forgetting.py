r"""The pattern most perturbation methods share: the clients holding the forgotten data change the
global model themselves, then the others repair it.

1. **Local forgetting.** Every client that holds data the request forgets trains from the global
   state $\theta$ under a plan on that data (gradient ascent, projected ascent, NPO, ...); the
   server applies the sample-weighted mean of their updates:
   $\theta' = \theta + \sum_{k \in F} \frac{n^f_k}{\sum_{j \in F} n^f_j}\,\Delta_k$.
2. **Repair.** A few FedAvg rounds on the retained data, without the forgotten data (a
   forgotten client sits out), numbered after the original training's rounds.

Both steps go through the client seam ([`ClientPool`][fedunlearn.federated.pool.ClientPool]), so a
method built from them reads no client data and runs on Flower unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedunlearn.federated.aggregation import apply_update, weighted_average
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.loop import run_rounds
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.task import State, clone_state
from fedunlearn.federated.training import LocalPlan
from fedunlearn.unlearning.base import TrainedFederation


def forgetting_clients(run: TrainedFederation, request: ForgetRequest) -> list[int]:
    """The clients that hold data ``request`` forgets (each is asked through the pool).

    Raises:
        ForgetRequestError: If no client holds any of it.
    """
    counts = run.pool.sample_counts(LocalPlan("forgotten", request))
    owners = [cid for cid, n in counts.items() if n > 0]
    if not owners:
        raise ForgetRequestError(f"no client holds data of the {request.describe()}; nothing to forget")
    return owners


def forget_locally(run: TrainedFederation, state: Mapping[str, torch.Tensor], request: ForgetRequest,
                   plan: LocalPlan, counter: CostCounter, round_index: int, scale: float = 1.0) -> State:
    r"""The forgetting clients train from ``state`` under ``plan``; returns
    $\theta + s \sum_k \frac{n^f_k}{\sum_j n^f_j} \Delta_k$.

    Args:
        run: The trained federation (its pool reaches the clients).
        state: The global state the clients start from.
        request: What is forgotten (also selects the clients).
        plan: The local plan; its ``data`` must be ``"forgotten"`` and its request ``request``.
        counter: Receives every cost.
        round_index: Round number (it seeds each client's data order).
        scale: $s$ (``-1`` negates the clients' updates, e.g. to undo ordinary descent).

    Raises:
        ValueError: If the plan does not train on the request's forgotten data.
        ForgetRequestError: If no client holds data to forget.
    """
    if plan.data != "forgotten" or plan.request != request:
        raise ValueError(f"local forgetting trains on the request's forgotten data; got a plan on {plan.data!r} data "
                         f"of {plan.request.describe() if plan.request else 'no request'}")
    owners = forgetting_clients(run, request)
    updates, counts = run.pool.train(state, owners, round_index, run.config, plan, counter)
    step = weighted_average([updates[c] for c in owners], [counts[c] for c in owners])
    return apply_update(clone_state(state), step, scale=scale)


def repair_rounds(run: TrainedFederation, state: Mapping[str, torch.Tensor], request: ForgetRequest, rounds: int,
                  counter: CostCounter) -> State:
    """``rounds`` FedAvg rounds on the retained data from ``state``, numbered after training's."""
    start = run.config.rounds
    return run_rounds(run.pool, state, run.config, range(start, start + rounds),
                      plan=LocalPlan("retained", request), counter=counter)
