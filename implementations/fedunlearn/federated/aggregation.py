r"""Aggregation rules: how the server turns client updates into the next global state.

Every rule takes the global state $w_t$, the updates $\Delta^k_t = w^k_{t+1} - w_t$ of the
participants $S_t$ and their sample counts $n_k$, and returns $w_{t+1}$:

- ``fedavg`` (McMahan et al., AISTATS 2017): $w_{t+1} = w_t + \sum_{k \in S_t}
  \frac{n_k}{n_{S_t}} \Delta^k_t$ with $n_{S_t} = \sum_{k \in S_t} n_k$;
- ``median``: the coordinate-wise median of the updates (Yin et al., ICML 2018), unweighted;
- ``trimmed-mean``: per coordinate, drop the $\lfloor \beta K \rfloor$ largest and smallest of
  the $K$ updates and average the rest (Yin et al., ICML 2018), unweighted.

The rule is chosen by ``FederationConfig.aggregation``; the loop, every unlearning method and the
Flower server call [`aggregate`][fedunlearn.federated.aggregation.aggregate]. The state-dict
arithmetic the methods share (averages, differences, scaled sums) lives here too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from fedunlearn.federated.task import State

Updates = Mapping[int, Mapping[str, torch.Tensor]]


def weighted_average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> State:
    r"""Average state dicts with non-negative weights (normalised here).

    Args:
        states: State dicts with identical keys and shapes.
        weights: One weight per state, e.g. sample counts $n_k$.

    Returns:
        $\sum_k (w_k / \sum_j w_j)\, \text{state}_k$, in float32 for float tensors; integer
        tensors (buffers such as counters) are taken from the first state.

    Raises:
        ValueError: On an empty input, mismatched lengths or keys, or a zero total weight.
    """
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state, got {len(states)} states, {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    _check_keys(states)
    averaged: State = {}
    for key, reference in states[0].items():
        if not torch.is_floating_point(reference):
            averaged[key] = reference.clone()
            continue
        acc = torch.zeros_like(reference, dtype=torch.float32)
        for state, weight in zip(states, weights):
            acc += (weight / total) * state[key].float()
        averaged[key] = acc.to(reference.dtype)
    return averaged


def _check_keys(states: Sequence[Mapping[str, torch.Tensor]]) -> None:
    keys = set(states[0])
    for state in states[1:]:
        if set(state) != keys:
            missing, extra = sorted(keys - set(state)), sorted(set(state) - keys)
            raise ValueError(f"states to combine have different keys: missing {missing}, extra {extra}")


def apply_update(state: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor],
                 scale: float = 1.0) -> State:
    """``state + scale * update`` key by key (integer tensors are kept)."""
    return {k: (v + scale * update[k]).to(v.dtype) if torch.is_floating_point(v) else v.clone()
            for k, v in state.items()}


def state_difference(after: Mapping[str, torch.Tensor], before: Mapping[str, torch.Tensor]) -> State:
    """The update ``after - before`` key by key (zero for integer tensors)."""
    return {k: (after[k] - before[k]) if torch.is_floating_point(before[k]) else torch.zeros_like(before[k])
            for k in before}


def state_norm(state: Mapping[str, torch.Tensor]) -> float:
    """Euclidean norm of all floating tensors of ``state`` taken as one vector."""
    return float(sum(float(v.float().pow(2).sum()) for v in state.values() if torch.is_floating_point(v)) ** 0.5)


def _ordered(updates: Updates, counts: Mapping[int, int]) -> tuple[list[int], list[Mapping[str, torch.Tensor]]]:
    ids = sorted(updates)
    missing = [cid for cid in ids if cid not in counts]
    if missing:
        raise ValueError(f"no sample count for clients {missing}")
    if not ids:
        raise ValueError("no client update to aggregate")
    return ids, [updates[c] for c in ids]


def fedavg(global_state: Mapping[str, torch.Tensor], updates: Updates, counts: Mapping[int, int]) -> State:
    r"""FedAvg: $w_{t+1} = w_t + \sum_k \frac{n_k}{n_{S_t}} \Delta^k_t$."""
    ids, ordered = _ordered(updates, counts)
    return apply_update(global_state, weighted_average(ordered, [counts[c] for c in ids]))


def _coordinatewise(global_state: Mapping[str, torch.Tensor], updates: Updates, counts: Mapping[int, int],
                    reduce: Callable[[torch.Tensor], torch.Tensor]) -> State:
    _, ordered = _ordered(updates, counts)
    _check_keys(ordered)
    combined = {}
    for key, reference in global_state.items():
        if torch.is_floating_point(reference):
            stacked = torch.stack([u[key].float() for u in ordered])
            combined[key] = reduce(stacked).to(reference.dtype)
        else:
            combined[key] = torch.zeros_like(reference)
    return apply_update(global_state, combined)


def coordinate_median(global_state: Mapping[str, torch.Tensor], updates: Updates,
                      counts: Mapping[int, int]) -> State:
    """Coordinate-wise median of the updates (the mean of the two middle values for even $K$)."""
    return _coordinatewise(global_state, updates, counts, lambda s: s.quantile(0.5, dim=0)
                           if s.shape[0] > 1 else s[0])


def trimmed_mean(global_state: Mapping[str, torch.Tensor], updates: Updates, counts: Mapping[int, int],
                 trim_fraction: float = 0.1) -> State:
    r"""Coordinate-wise $\beta$-trimmed mean: drop the $\lfloor \beta K \rfloor$ largest and smallest.

    Raises:
        ValueError: If $\beta \notin [0, 0.5)$ or nothing would remain.
    """
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must lie in [0, 0.5), got {trim_fraction}")

    def reduce(stacked: torch.Tensor) -> torch.Tensor:
        cut = int(trim_fraction * stacked.shape[0])
        return stacked.sort(dim=0).values[cut : stacked.shape[0] - cut].mean(dim=0)

    return _coordinatewise(global_state, updates, counts, reduce)


#: Aggregation rules by name (``FederationConfig.aggregation``).
AGGREGATORS: dict[str, Callable[..., State]] = {
    "fedavg": fedavg,
    "median": coordinate_median,
    "trimmed-mean": trimmed_mean,
}


def aggregate(rule: str, global_state: Mapping[str, torch.Tensor], updates: Updates,
              counts: Mapping[int, int], trim_fraction: float = 0.1) -> State:
    """Apply the named aggregation rule.

    Raises:
        ValueError: On an unknown rule (listing the known ones).
    """
    if rule not in AGGREGATORS:
        raise ValueError(f"unknown aggregation {rule!r}; use one of {', '.join(AGGREGATORS)}")
    if rule == "trimmed-mean":
        return trimmed_mean(global_state, updates, counts, trim_fraction)
    return AGGREGATORS[rule](global_state, updates, counts)
