"""Aggregation rules of the substrate against numbers computed by hand.

``fedavg`` (sample-weighted mean update), the robust rules ``coordinate_median`` and
``trimmed_mean`` (unweighted, per coordinate), the dispatcher ``aggregate`` and the state-dict
arithmetic they share. Every expected value is worked out in a comment.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedunlearn.federated.aggregation import (
    AGGREGATORS,
    aggregate,
    apply_update,
    coordinate_median,
    fedavg,
    state_difference,
    state_norm,
    trimmed_mean,
    weighted_average,
)
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.loop import run_rounds
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.task import ClassificationTask
from fedunlearn.federated.training import FederationConfig, LocalPlan

# ---------------------------------------------------------------- weighted average and FedAvg


def test_weighted_average_matches_hand_computation() -> None:
    # Client A holds n=1 example, client B n=3: weights 1/4 and 3/4.
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(4.0)}
    b = {"w": torch.tensor([5.0, -2.0]), "b": torch.tensor(0.0)}
    # w: (1*[1, 2] + 3*[5, -2]) / 4 = [16, -4] / 4 = [4, -1];  b: (1*4 + 3*0) / 4 = 1
    averaged = weighted_average([a, b], [1, 3])
    assert torch.equal(averaged["w"], torch.tensor([4.0, -1.0]))
    assert torch.equal(averaged["b"], torch.tensor(1.0))


def test_fedavg_adds_weighted_mean_update_to_global_state() -> None:
    global_state = {"w": torch.tensor([0.5, 0.5]), "steps": torch.tensor(9)}
    updates = {
        7: {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(5)},
        3: {"w": torch.tensor([5.0, -2.0]), "steps": torch.tensor(7)},
    }
    # weights: client 7 has n=1, client 3 has n=3 -> mean update [4, -1] (as above)
    new_state = fedavg(global_state, updates, {7: 1, 3: 3})
    assert torch.equal(new_state["w"], torch.tensor([4.5, -0.5]))
    # the integer buffer is neither averaged nor incremented: the global value is kept
    assert new_state["steps"].dtype == torch.int64
    assert new_state["steps"].item() == 9


def test_integer_buffers_are_not_averaged() -> None:
    a = {"count": torch.tensor([2, 4])}
    b = {"count": torch.tensor([10, 20])}
    averaged = weighted_average([a, b], [1, 1])
    assert averaged["count"].dtype == torch.int64
    assert torch.equal(averaged["count"], torch.tensor([2, 4]))  # the first state's value


def test_half_precision_is_accumulated_in_float32_and_returned_in_its_dtype() -> None:
    a = {"w": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([2.0], dtype=torch.float16)}
    averaged = weighted_average([a, b], [1, 3])  # (1 + 6) / 4 = 1.75, exact in float16
    assert averaged["w"].dtype == torch.float16
    assert averaged["w"].item() == 1.75


def test_update_and_difference_are_inverse() -> None:
    before = {"w": torch.tensor([1.0, -1.0]), "n": torch.tensor(3)}
    after = {"w": torch.tensor([1.5, -3.0]), "n": torch.tensor(3)}
    delta = state_difference(after, before)
    assert torch.equal(delta["w"], torch.tensor([0.5, -2.0]))
    assert torch.equal(delta["n"], torch.tensor(0))
    assert torch.equal(apply_update(before, delta)["w"], after["w"])


def test_apply_update_scales_and_state_norm_is_euclidean() -> None:
    state = {"w": torch.tensor([1.0, 1.0]), "n": torch.tensor(2)}
    update = {"w": torch.tensor([3.0, -4.0]), "n": torch.tensor(5)}
    # [1, 1] - 0.5 * [3, -4] = [-0.5, 3]; the integer tensor is kept
    moved = apply_update(state, update, scale=-0.5)
    assert torch.equal(moved["w"], torch.tensor([-0.5, 3.0]))
    assert moved["n"].item() == 2
    # sqrt(3^2 + 4^2) = 5; integer tensors do not count
    assert state_norm(update) == 5.0


def test_weighted_average_ignores_key_order() -> None:
    a = {"w": torch.zeros(2), "b": torch.zeros(1)}
    b = {"b": torch.full((1,), 4.0), "w": torch.full((2,), 2.0)}  # same keys, another order
    averaged = weighted_average([a, b], [1, 1])
    assert list(averaged) == ["w", "b"]
    assert torch.equal(averaged["w"], torch.ones(2)) and torch.equal(averaged["b"], torch.full((1,), 2.0))


@pytest.mark.parametrize(
    ("states", "weights", "message"),
    [
        ([], [], "one weight per state"),
        ([{"w": torch.ones(1)}], [1, 2], "one weight per state"),
        ([{"w": torch.ones(1)}, {"w": torch.ones(1)}], [0, 0], "positive sum"),
        ([{"w": torch.ones(1)}, {"w": torch.ones(1)}], [2, -1], "non-negative"),
        ([{"w": torch.ones(1)}, {"v": torch.ones(1)}], [1, 1], r"different keys: missing \['w'\], extra \['v'\]"),
    ],
)
def test_weighted_average_rejects_bad_input(states, weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        weighted_average(states, weights)


def test_fedavg_needs_every_sample_count() -> None:
    updates = {0: {"w": torch.ones(1)}, 1: {"w": torch.ones(1)}}
    with pytest.raises(ValueError, match=r"no sample count for clients \[1\]"):
        fedavg({"w": torch.zeros(1)}, updates, {0: 5})


@pytest.mark.parametrize("rule", sorted(AGGREGATORS))
def test_every_rule_rejects_an_empty_round(rule) -> None:
    with pytest.raises(ValueError, match="no client update to aggregate"):
        aggregate(rule, {"w": torch.zeros(1)}, {}, {})


# ---------------------------------------------------------------- coordinate-wise median


def test_coordinate_median_of_three_updates() -> None:
    global_state = {"w": torch.tensor([0.5, 0.5]), "steps": torch.tensor(9)}
    updates = {
        0: {"w": torch.tensor([1.0, 10.0]), "steps": torch.tensor(1)},
        1: {"w": torch.tensor([2.0, -5.0]), "steps": torch.tensor(1)},
        2: {"w": torch.tensor([100.0, 0.0]), "steps": torch.tensor(1)},
    }
    # per coordinate: median(1, 2, 100) = 2 and median(10, -5, 0) = 0 -> [0.5 + 2, 0.5 + 0]
    new_state = coordinate_median(global_state, updates, {0: 1, 1: 1, 2: 1})
    assert torch.equal(new_state["w"], torch.tensor([2.5, 0.5]))
    assert new_state["steps"].item() == 9  # integer buffers keep the global value


def test_coordinate_median_ignores_sample_counts() -> None:
    updates = {0: {"w": torch.tensor([1.0])}, 1: {"w": torch.tensor([2.0])}, 2: {"w": torch.tensor([100.0])}}
    # FedAvg with counts 1, 1, 1000 would move almost to 100; the median stays at 2
    heavy = coordinate_median({"w": torch.zeros(1)}, updates, {0: 1, 1: 1, 2: 1000})
    assert heavy["w"].item() == 2.0


def test_coordinate_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    updates = {k: {"w": torch.tensor([v])} for k, v in enumerate((10.0, 1.0, 3.0, 2.0))}
    # sorted 1, 2, 3, 10 -> (2 + 3) / 2 = 2.5
    assert coordinate_median({"w": torch.zeros(1)}, updates, dict.fromkeys(updates, 1))["w"].item() == 2.5


def test_coordinate_median_of_one_update_is_that_update() -> None:
    state = coordinate_median({"w": torch.tensor([1.0])}, {4: {"w": torch.tensor([-3.0])}}, {4: 7})
    assert state["w"].item() == -2.0  # 1 + (-3)


# ---------------------------------------------------------------- trimmed mean


def test_trimmed_mean_drops_the_outliers_of_each_coordinate() -> None:
    global_state = {"w": torch.tensor([0.0, 10.0])}
    values = ([1.0, 0.0], [2.0, 1.0], [3.0, -500.0], [4.0, 2.0], [1000.0, 3.0])
    updates = {k: {"w": torch.tensor(v)} for k, v in enumerate(values)}
    counts = dict.fromkeys(updates, 1)
    # beta = 0.2 of K = 5 -> drop floor(0.2 * 5) = 1 smallest and 1 largest per coordinate:
    #   coordinate 0: 1, 2, 3, 4, 1000 -> mean(2, 3, 4) = 3    (outlier 1000 ignored)
    #   coordinate 1: -500, 0, 1, 2, 3 -> mean(0, 1, 2) = 1    (outlier -500 ignored)
    robust = trimmed_mean(global_state, updates, counts, trim_fraction=0.2)
    assert torch.equal(robust["w"], torch.tensor([3.0, 11.0]))
    # FedAvg with equal counts follows the outliers: 0 + (1+2+3+4+1000)/5 = 202 and
    # 10 + (0+1-500+2+3)/5 = 10 - 98.8 = -88.8
    plain = fedavg(global_state, updates, counts)
    torch.testing.assert_close(plain["w"], torch.tensor([202.0, -88.8]))


def test_trimmed_mean_that_cuts_nothing_is_the_unweighted_mean() -> None:
    updates = {0: {"w": torch.tensor([1.0])}, 1: {"w": torch.tensor([2.0])}, 2: {"w": torch.tensor([6.0])}}
    # floor(0.1 * 3) = 0 values cut -> (1 + 2 + 6) / 3 = 3, whatever the sample counts
    state = trimmed_mean({"w": torch.zeros(1)}, updates, {0: 1, 1: 1, 2: 100}, trim_fraction=0.1)
    assert state["w"].item() == 3.0


@pytest.mark.parametrize("trim_fraction", [-0.1, 0.5, 0.7])
def test_trimmed_mean_rejects_a_fraction_outside_zero_to_half(trim_fraction) -> None:
    updates = {0: {"w": torch.ones(1)}, 1: {"w": torch.ones(1)}}
    with pytest.raises(ValueError, match=r"trim_fraction must lie in \[0, 0.5\)"):
        trimmed_mean({"w": torch.zeros(1)}, updates, {0: 1, 1: 1}, trim_fraction=trim_fraction)


# ---------------------------------------------------------------- the dispatcher


def test_aggregate_dispatches_by_name_and_passes_the_trim_fraction() -> None:
    global_state = {"w": torch.tensor([0.0])}
    updates = {k: {"w": torch.tensor([v])} for k, v in enumerate((1.0, 2.0, 3.0, 4.0, 1000.0))}
    counts = {0: 1, 1: 1, 2: 1, 3: 1, 4: 4}
    # fedavg: (1 + 2 + 3 + 4 + 4*1000) / 8 = 4010 / 8 = 501.25
    assert aggregate("fedavg", global_state, updates, counts)["w"].item() == 501.25
    # median of 1, 2, 3, 4, 1000 = 3
    assert aggregate("median", global_state, updates, counts)["w"].item() == 3.0
    # trim 0.2 -> mean(2, 3, 4) = 3; trim 0.1 -> nothing cut -> 1010 / 5 = 202
    assert aggregate("trimmed-mean", global_state, updates, counts, trim_fraction=0.2)["w"].item() == 3.0
    assert aggregate("trimmed-mean", global_state, updates, counts, trim_fraction=0.1)["w"].item() == 202.0


def test_aggregate_rejects_an_unknown_rule_and_lists_the_known_ones() -> None:
    updates = {0: {"w": torch.ones(1)}}
    with pytest.raises(ValueError, match=r"unknown aggregation 'krum'; use one of fedavg, median, trimmed-mean"):
        aggregate("krum", {"w": torch.zeros(1)}, updates, {0: 1})


def test_the_round_loop_aggregates_with_the_configured_rule() -> None:
    """One round of ``run_rounds`` with ``aggregation="median"`` equals the median of the
    updates the pool returns for the same round (and differs from FedAvg on unequal clients)."""
    generator = torch.Generator().manual_seed(5)
    sizes = (3, 4, 9)
    clients, start = {}, 0
    for cid, n in enumerate(sizes):
        x, y = torch.randn(n, 2, generator=generator), torch.randint(0, 2, (n,), generator=generator)
        clients[cid] = ClientData(cid, {"x": x, "y": y}, torch.arange(start, start + n))
        start += n
    task = ClassificationTask(lambda: nn.Linear(2, 2), init_seed=0)
    pool = InProcessPool(task, clients)
    init = task.get_state(pool.model)
    config = FederationConfig(rounds=1, batch_size=2, lr=0.5, aggregation="median")
    updates, counts = pool.train(init, [0, 1, 2], 0, config, LocalPlan(), CostCounter())
    looped = run_rounds(pool, init, config, range(1))
    expected = coordinate_median(init, updates, counts)
    assert all(torch.equal(looped[k], expected[k]) for k in expected)
    assert any(not torch.equal(looped[k], fedavg(init, updates, counts)[k]) for k in expected)
