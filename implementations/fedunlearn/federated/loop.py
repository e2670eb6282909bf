r"""The one round loop: sample participants, train them through the pool, record, aggregate.

[`run_rounds`][fedunlearn.federated.loop.run_rounds] is the only loop over communication rounds
in the package. Training $\theta_o$, retraining, continuing FedAvg, repair rounds after an
unlearning step and rapid retraining all call it with a
[`ClientPool`][fedunlearn.federated.pool.ClientPool] (in-process or Flower), a
[`LocalPlan`][fedunlearn.federated.training.LocalPlan] (which data, which objective) and
optionally a history to record into, a callback after each round and a stopping rule
(``stop(round_index, state) -> bool``, e.g. "the forget metric reached its threshold").

Participants of round $t$ are sampled from ``(seed, t)``
([`sample_clients`][fedunlearn.federated.loop.sample_clients]), so the same seed gives the same
participants on every engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from tqdm import tqdm

from fedunlearn.federated.aggregation import aggregate
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import TrainingHistory
from fedunlearn.federated.pool import ClientPool
from fedunlearn.federated.task import State, clone_state
from fedunlearn.federated.training import FederationConfig, LocalPlan, derived_seed


def sample_clients(available: Iterable[int], k: int, seed: int, round_index: int) -> list[int]:
    """The clients taking part in round ``round_index`` (sorted).

    Args:
        available: Client ids that may be sampled.
        k: How many to sample; 0 or at least ``len(available)`` means all.
        seed: Federation seed.
        round_index: Round number.
    """
    ids = sorted(available)
    if k <= 0 or k >= len(ids):
        return ids
    generator = torch.Generator().manual_seed(derived_seed(seed, round_index, 0x5A3))
    chosen = torch.randperm(len(ids), generator=generator)[:k]
    return sorted(ids[i] for i in chosen.tolist())


def run_rounds(pool: ClientPool, start_state: Mapping[str, torch.Tensor], config: FederationConfig,
               rounds: Iterable[int], *, plan: LocalPlan | None = None, available: Iterable[int] | None = None,
               counter: CostCounter | None = None, history: TrainingHistory | None = None,
               on_round: Callable[[int, State], None] | None = None,
               stop: Callable[[int, State], bool] | None = None, progress: bool | str = False) -> State:
    """Federated rounds from ``start_state``.

    Args:
        pool: The clients.
        start_state: The state sent in the first round.
        config: Sampling, local schedule and aggregation rule.
        rounds: Round numbers to run (they seed sampling and data order).
        plan: What participants train (default: all their data, mean loss).
        available: Clients that may be sampled (default: every client with data under ``plan``).
        counter: Receives every cost (and the wall time of the loop).
        history: If given, every round is recorded into it, and the final state.
        on_round: Called as ``on_round(round_index, new_state)`` after each aggregation.
        stop: Called after ``on_round``; the loop ends after the first round where it is true.
        progress: Show a progress bar (a string is used as its label).

    Returns:
        The last global state.
    """
    plan = plan if plan is not None else LocalPlan()
    counter = counter if counter is not None else CostCounter()
    if available is None:
        available = [cid for cid, n in pool.sample_counts(plan).items() if n > 0]
    available = sorted(available)
    state = clone_state(start_state)
    label = progress if isinstance(progress, str) else "federated rounds"
    with counter.timed():
        for r in tqdm(list(rounds), desc=label, disable=not progress, leave=False):
            participants = sample_clients(available, config.clients_per_round, config.seed, r)
            updates, counts = pool.train(state, participants, r, config, plan, counter)
            if history is not None:
                counter.history_bytes += history.record_round(r, state, updates, counts)
            state = aggregate(config.aggregation, state, updates, counts, config.trim_fraction)
            if on_round is not None:
                on_round(r, state)
            if stop is not None and stop(r, state):
                break
        if history is not None:
            history.final_state = clone_state(state)
    return state
