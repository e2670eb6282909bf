"""FedAvg: federated averaging (McMahan et al., AISTATS 2017; key ``mcmahan2017communication``).

In each round the server sends the global weights $w_t$ to a sample $S_t$ of clients; client $k$
runs $E$ local epochs of mini-batch SGD on its $n_k$ examples and returns $w^k_{t+1}$; the server
averages them weighted by sample counts:

$$ w_{t+1} = \\sum_{k \\in S_t} \\frac{n_k}{n_{S_t}} \\, w^k_{t+1}, \\qquad n_{S_t} = \\sum_{k\\in S_t} n_k. $$

Written with updates $\\Delta^k_t = w^k_{t+1} - w_t$ this is $w_{t+1} = w_t + \\sum_k \\frac{n_k}{n_{S_t}}
\\Delta^k_t$, the form every incremental unlearning method manipulates.

Implemented: the weighted aggregation (this module) used by the shared loop
([`run_federation`][fedunlearn.federated.loop.run_federation]), client sampling of a fixed number
$K$ of clients per round (the paper's fraction $C$ times the client count), local epochs, batch
size and learning rate; the paper's FedSGD baseline
([`fedsgd_config`][fedunlearn.foundations.fedavg.fedsgd_config]) and the rounds-to-target measure
of its Tables 2-4 ([`accuracy_curve`][fedunlearn.foundations.fedavg.accuracy_curve],
[`rounds_to_target`][fedunlearn.foundations.fedavg.rounds_to_target]). Not implemented: the
paper's experiments on MNIST/CIFAR/Shakespeare (scikit-learn digits stands in) and its full
learning-rate sweeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from fedunlearn.catalog import Entry, ReportedClaim
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.task import ClassificationTask, State, clone_state

if TYPE_CHECKING:
    from fedunlearn.federated.loop import FederationConfig


def weighted_average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> State:
    """Average state dicts with the given (non-negative, not all zero) weights.

    Args:
        states: State dicts with identical keys and shapes.
        weights: One weight per state, e.g. sample counts $n_k$; normalised here.

    Returns:
        $\\sum_k (w_k / \\sum_j w_j) \\, \\text{state}_k$, in float32 for float tensors.

    Raises:
        ValueError: On an empty input, mismatched lengths or keys, or a zero total weight.
    """
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state, got {len(states)} states, {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    keys = list(states[0])  # the result keeps the first state's key order
    for state in states[1:]:
        if state.keys() != states[0].keys():
            missing, extra = sorted(set(keys) - set(state)), sorted(set(state) - set(keys))
            raise ValueError(f"states to average have different keys: missing {missing}, extra {extra}")
    averaged: State = {}
    for key in keys:
        reference = states[0][key]
        if not torch.is_floating_point(reference):
            averaged[key] = reference.clone()  # integer buffers (e.g. counters) are not averaged
            continue
        acc = torch.zeros_like(reference, dtype=torch.float32)
        for state, weight in zip(states, weights):
            acc += (weight / total) * state[key].float()
        averaged[key] = acc.to(reference.dtype)
    return averaged


def apply_update(state: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor], scale: float = 1.0) -> State:
    """Return ``state + scale * update`` key by key."""
    return {k: (v + scale * update[k]).to(v.dtype) if torch.is_floating_point(v) else v.clone() for k, v in state.items()}


def state_difference(after: Mapping[str, torch.Tensor], before: Mapping[str, torch.Tensor]) -> State:
    """Return the update ``after - before`` key by key."""
    return {k: (after[k] - before[k]) if torch.is_floating_point(before[k]) else torch.zeros_like(before[k]) for k in before}


def fedavg_aggregate(
    global_state: Mapping[str, torch.Tensor],
    client_updates: Mapping[int, Mapping[str, torch.Tensor]],
    sample_counts: Mapping[int, int],
) -> State:
    """One FedAvg server step: $w_{t+1} = w_t + \\sum_k \\frac{n_k}{n} \\Delta^k_t$.

    Args:
        global_state: The weights $w_t$ sent to the clients.
        client_updates: Client id -> update $\\Delta^k_t = w^k_{t+1} - w_t$.
        sample_counts: Client id -> $n_k$.

    Returns:
        The new global state.
    """
    ids = sorted(client_updates)
    missing = [cid for cid in ids if cid not in sample_counts]
    if missing:
        raise ValueError(f"no sample count for clients {missing}")
    mean_update = weighted_average([client_updates[c] for c in ids], [sample_counts[c] for c in ids])
    return apply_update(global_state, mean_update)


def fedsgd_config(config: FederationConfig, client_sizes: Iterable[int]) -> FederationConfig:
    """The FedSGD baseline of the paper for ``config``: one full-batch gradient step per round.

    FedSGD is FedAvg with $B = \\infty$ (the whole local data set is one batch) and $E = 1$
    (one step), so each client returns $-\\eta\\, \\nabla F_k(w_t)$ and the server takes one
    synchronous gradient step on the weighted average.

    Args:
        config: The FedAvg configuration (seed, rounds, lr, sampling are kept).
        client_sizes: Sample counts $n_k$ of the clients (the batch must hold the largest).
    """
    return replace(config, local_steps=1, local_epochs=1, batch_size=max(client_sizes))


def rounds_to_target(curve: Sequence[float], target: float) -> int | None:
    """Rounds needed to reach ``target``: 1 + the first index where ``curve`` is at least it.

    Args:
        curve: Metric after each round (``curve[0]`` after round 1).
        target: Threshold, e.g. 0.9 test accuracy.

    Returns:
        The round count, or ``None`` if the curve never reaches ``target``.
    """
    return next((i + 1 for i, value in enumerate(curve) if value >= target), None)


def accuracy_curve(
    task: ClassificationTask,
    clients: Mapping[int, ClientData],
    init_state: Mapping[str, torch.Tensor],
    config: FederationConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    stop_at: float | None = None,
    counter: CostCounter | None = None,
) -> list[float]:
    """Accuracy on ``(x, y)`` of the global model after each round of federated training.

    Args:
        task: A classification task.
        clients: Client id -> data.
        init_state: $w_0$.
        config: Federation hyperparameters (``config.rounds`` rounds at most).
        x: Evaluation inputs.
        y: Evaluation labels.
        stop_at: Stop after the first round whose accuracy reaches this value.
        counter: Receives the training costs (evaluation is not counted).

    Returns:
        One accuracy per round run.
    """
    # Imported here: the loop imports this module for its aggregation step.
    from fedunlearn.federated.loop import run_federation

    counter = counter if counter is not None else CostCounter()
    model, evaluator = task.build_model(), task.build_model()
    state, curve = clone_state(init_state), []
    for r in range(config.rounds):
        state = run_federation(
            task, clients, init_state, config, rounds=[r], start_state=state, model=model,
            counter=counter,
        )
        curve.append(task.accuracy(evaluator, state, x, y))
        if stop_at is not None and curve[-1] >= stop_at:
            break
    return curve


ENTRY = Entry(
    slug="fedavg",
    family="foundations",
    title="FedAvg: federated averaging",
    citation_keys=("mcmahan2017communication",),
    summary="Clients train locally for several epochs; the server averages their weights by sample count.",
    claims=(
        ReportedClaim(
            claim="Communication rounds needed versus synchronous SGD (FedSGD)",
            reported="10-100x fewer rounds",
            where="Abstract (per-model tables in the paper; not re-read here)",
        ),
        ReportedClaim(
            claim="Robust to unbalanced and non-IID client data (converges, more slowly)",
            reported="qualitative",
            where="Abstract",
        ),
    ),
)
