"""FedAvg: aggregation against hand-computed numbers, the FedSGD baseline, and the paper's claim.

The claim test runs the notebook's smoke configuration (digits, 10 clients, FedAvg with E=5 and
B=10 against FedSGD) and asserts the qualitative result on values computed here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedunlearn import catalog
from fedunlearn.data.digits import load_split
from fedunlearn.data.federated_digits import digits_clients
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.loop import FederationConfig, run_federation
from fedunlearn.federated.task import ClassificationTask
from fedunlearn.foundations.fedavg import (
    ENTRY,
    accuracy_curve,
    apply_update,
    fedavg_aggregate,
    fedsgd_config,
    rounds_to_target,
    state_difference,
    weighted_average,
)
from fedunlearn.models.mlp import DigitsMLP


# ---------------------------------------------------------------- aggregation, by hand


def test_weighted_average_matches_hand_computation() -> None:
    # Client A holds n=1 example, client B n=3: weights 1/4 and 3/4.
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(4.0)}
    b = {"w": torch.tensor([5.0, -2.0]), "b": torch.tensor(0.0)}
    # w: (1*[1, 2] + 3*[5, -2]) / 4 = [16, -4] / 4 = [4, -1];  b: (1*4 + 3*0) / 4 = 1
    averaged = weighted_average([a, b], [1, 3])
    assert torch.equal(averaged["w"], torch.tensor([4.0, -1.0]))
    assert torch.equal(averaged["b"], torch.tensor(1.0))


def test_fedavg_aggregate_adds_weighted_mean_update_to_global_state() -> None:
    global_state = {"w": torch.tensor([0.5, 0.5]), "steps": torch.tensor(9)}
    updates = {
        7: {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(5)},
        3: {"w": torch.tensor([5.0, -2.0]), "steps": torch.tensor(7)},
    }
    # weights: client 7 has n=1, client 3 has n=3 -> mean update [4, -1] (as above)
    new_state = fedavg_aggregate(global_state, updates, {7: 1, 3: 3})
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


def test_fedavg_aggregate_needs_every_sample_count() -> None:
    updates = {0: {"w": torch.ones(1)}, 1: {"w": torch.ones(1)}}
    with pytest.raises(ValueError, match=r"no sample count for clients \[1\]"):
        fedavg_aggregate({"w": torch.zeros(1)}, updates, {0: 5})


# ---------------------------------------------------------------- FedSGD and the measure


def test_rounds_to_target() -> None:
    assert rounds_to_target([0.2, 0.5, 0.91, 0.89, 0.95], 0.9) == 3
    assert rounds_to_target([0.9], 0.9) == 1
    assert rounds_to_target([0.2, 0.5], 0.9) is None
    assert rounds_to_target([], 0.9) is None


def test_fedsgd_config_is_one_full_batch_step() -> None:
    base = FederationConfig(rounds=7, local_epochs=5, batch_size=10, lr=0.3, seed=4)
    sgd = fedsgd_config(base, [12, 40, 25])
    assert (sgd.local_steps, sgd.batch_size) == (1, 40)
    assert (sgd.rounds, sgd.lr, sgd.seed) == (7, 0.3, 4)


def test_fedsgd_round_is_one_gradient_step_on_all_data() -> None:
    """With every client taking part, a FedSGD round equals full-batch gradient descent on the
    union of the clients' data, whatever the partition (sample-weighted mean of client means)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(9, 3, generator=generator)
    y = torch.randint(0, 2, (9,), generator=generator)
    sizes = (2, 3, 4)  # unequal clients: weights matter
    starts = (0, 2, 5)
    clients = {
        cid: ClientData(cid, {"x": x[s : s + n], "y": y[s : s + n]}, torch.arange(s, s + n))
        for cid, (s, n) in enumerate(zip(starts, sizes))
    }
    task = ClassificationTask(lambda: nn.Linear(3, 2), init_seed=1)
    model = task.build_model()
    init = task.get_state(model)
    config = fedsgd_config(FederationConfig(rounds=1, lr=0.5), sizes)
    federated = run_federation(task, clients, init, config)

    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    expected = {name: p.detach() - 0.5 * p.grad for name, p in model.named_parameters()}
    for name, value in expected.items():
        torch.testing.assert_close(federated[name], value, rtol=0, atol=1e-6)


def test_entry_claims_are_in_the_catalog() -> None:
    assert catalog.get("fedavg").claims == ENTRY.claims
    assert "10-100x" in ENTRY.claims[0].reported


# ---------------------------------------------------------------- the claim, at smoke size

TARGET = 0.9


@pytest.fixture(scope="module")
def rounds_needed() -> dict[tuple[str, str], int | None]:
    """Rounds each method needs on each partition (notebook's smoke configuration, seed 0)."""
    split = load_split(seed=0)
    task = ClassificationTask(DigitsMLP, init_seed=0)
    init = task.get_state(task.build_model())
    found: dict[tuple[str, str], int | None] = {}
    for partition in ("iid", "dirichlet"):
        clients = digits_clients(split, partition, 10, seed=0, alpha=0.3)
        fedavg = FederationConfig(rounds=20, local_epochs=5, batch_size=10, lr=0.1, seed=0)
        fedsgd = fedsgd_config(
            FederationConfig(rounds=150, lr=0.75, seed=0), [c.num_samples for c in clients.values()]
        )
        for method, config in (("fedavg", fedavg), ("fedsgd", fedsgd)):
            curve = accuracy_curve(
                task, clients, init, config, split.x_test, split.y_test, stop_at=TARGET
            )
            found[method, partition] = rounds_to_target(curve, TARGET)
    return found


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_fedavg_needs_fewer_rounds_than_fedsgd(rounds_needed, partition) -> None:
    fedavg = rounds_needed["fedavg", partition]
    fedsgd = rounds_needed["fedsgd", partition]
    assert fedavg is not None, f"FedAvg did not reach {TARGET} in 20 rounds ({partition})"
    # FedSGD not reaching the target within 150 rounds also means FedAvg was faster.
    assert fedsgd is None or fedsgd > 2 * fedavg


def test_non_iid_is_no_faster_than_iid_for_fedavg(rounds_needed) -> None:
    iid, non_iid = rounds_needed["fedavg", "iid"], rounds_needed["fedavg", "dirichlet"]
    assert iid is not None and non_iid is not None
    assert iid <= non_iid
