"""The round loop and the in-process pool: determinism, sampling, cost counters, the recorded
history, stopping, and plans (data selection, objectives, schedules)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedunlearn.federated.aggregation import fedavg
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.costs import CostCounter, state_bytes
from fedunlearn.federated.history import TrainingHistory
from fedunlearn.federated.loop import run_rounds, sample_clients
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest
from fedunlearn.federated.task import ClassificationTask
from fedunlearn.federated.training import (
    FederationConfig,
    LocalPlan,
    client_update,
    local_step_count,
    minibatch_order,
)

SIZES = {0: 5, 1: 8, 2: 13}  # unequal on purpose


def make_clients(sizes: dict[int, int] = SIZES) -> dict[int, ClientData]:
    generator = torch.Generator().manual_seed(123)
    clients, start = {}, 0
    for cid, n in sizes.items():
        x = torch.randn(n, 4, generator=generator)
        y = torch.randint(0, 3, (n,), generator=generator)
        clients[cid] = ClientData(cid, {"x": x, "y": y}, torch.arange(start, start + n))
        start += n
    return clients


@pytest.fixture
def task() -> ClassificationTask:
    return ClassificationTask(lambda: nn.Linear(4, 3), init_seed=0)


@pytest.fixture
def init_state(task: ClassificationTask) -> dict[str, torch.Tensor]:
    return task.get_state(task.build_model())


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_federation(task, clients, init_state, config, *, rounds=None, start_state=None, **kwargs):
    """FedAvg rounds over ``clients`` in process (the pattern every caller of the loop follows)."""
    return run_rounds(InProcessPool(task, clients), start_state if start_state is not None else init_state,
                      config, rounds if rounds is not None else range(config.rounds), **kwargs)


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_states(task, init_state) -> None:
    config = FederationConfig(rounds=3, clients_per_round=2, batch_size=4, lr=0.1, seed=7)
    first = run_federation(task, make_clients(), init_state, config)
    again = run_federation(task, make_clients(), init_state, config)
    assert states_equal(first, again)
    assert not states_equal(first, init_state)


def test_different_seed_gives_a_different_state(task, init_state) -> None:
    config = FederationConfig(rounds=3, batch_size=4, lr=0.1, seed=7)
    first = run_federation(task, make_clients(), init_state, config)
    other = run_federation(
        task, make_clients(), init_state, FederationConfig(**{**config.as_dict(), "seed": 8})
    )
    assert not states_equal(first, other)


def test_running_in_two_parts_equals_running_at_once(task, init_state) -> None:
    """Round numbers, not call boundaries, seed sampling and data order (what replay relies on)."""
    config = FederationConfig(rounds=4, clients_per_round=2, batch_size=3, lr=0.1, seed=1)
    at_once = run_federation(task, make_clients(), init_state, config)
    halfway = run_federation(task, make_clients(), init_state, config, rounds=[0, 1])
    in_parts = run_federation(
        task, make_clients(), init_state, config, rounds=[2, 3], start_state=halfway
    )
    assert states_equal(at_once, in_parts)


def test_loop_does_not_touch_global_rng(task, init_state) -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    run_federation(task, make_clients(), init_state, FederationConfig(rounds=2, batch_size=4))
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- sampling


def test_client_sampling_is_deterministic_sorted_and_of_size_k() -> None:
    available = range(20)
    for r in range(10):
        chosen = sample_clients(available, 5, seed=3, round_index=r)
        assert chosen == sample_clients(reversed(available), 5, seed=3, round_index=r)
        assert len(chosen) == 5 == len(set(chosen))
        assert chosen == sorted(chosen)
        assert set(chosen) <= set(available)
    per_round = {tuple(sample_clients(available, 5, seed=3, round_index=r)) for r in range(10)}
    assert len(per_round) > 1, "every round sampled the same clients"


@pytest.mark.parametrize("k", [0, 4, 9])
def test_sampling_everyone_when_k_is_zero_or_too_large(k: int) -> None:
    assert sample_clients([3, 1, 2, 0], k, seed=0, round_index=5) == [0, 1, 2, 3]


def test_minibatch_order_covers_each_example_once_per_pass() -> None:
    batches = minibatch_order(10, 4, steps=6, generator=torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))


# --------------------------------------------------------------------------- counters


def test_client_steps_follow_sizes_epochs_and_batch(task, init_state) -> None:
    # B = 4, E = 2: ceil(5/4)=2, ceil(8/4)=2, ceil(13/4)=4 steps per epoch -> 4 + 4 + 8 = 16
    # per round with every client, 3 rounds -> 48 steps and 9 client participations.
    config = FederationConfig(rounds=3, local_epochs=2, batch_size=4, lr=0.05)
    counter = CostCounter()
    run_federation(task, make_clients(), init_state, config, counter=counter)
    assert counter.client_steps == 48
    assert counter.client_rounds == 9
    assert [local_step_count(n, config) for n in SIZES.values()] == [4, 4, 8]


def test_local_steps_override_epochs(task, init_state) -> None:
    config = FederationConfig(rounds=2, local_epochs=5, local_steps=3, batch_size=4)
    counter = CostCounter()
    run_federation(task, make_clients(), init_state, config, counter=counter)
    assert counter.client_steps == 2 * 3 * 3  # rounds * clients * local_steps


def test_sampled_steps_and_bytes_match_the_participants(task, init_state) -> None:
    config = FederationConfig(rounds=4, clients_per_round=2, batch_size=4, seed=11)
    counter, history = CostCounter(), TrainingHistory(init_state)
    run_federation(task, make_clients(), init_state, config, counter=counter, history=history)
    participations = [cid for r in range(4) for cid in sample_clients(SIZES, 2, 11, r)]
    assert counter.client_rounds == 8 == len(participations)
    assert counter.client_steps == sum(-(-SIZES[c] // 4) for c in participations)
    # Linear(4, 3): 12 weights + 3 biases, float32 -> 60 bytes each way per participation
    assert state_bytes(init_state) == 60
    assert counter.bytes_down == 60 * 8
    update_bytes = sum(
        state_bytes(u) for record in history.rounds for u in record.client_updates.values()
    )
    assert counter.bytes_up == update_bytes == 60 * 8
    assert counter.bytes_communicated == 2 * 60 * 8
    assert counter.wall_time_s > 0


def test_empty_client_is_an_error(task, init_state) -> None:
    empty = ClientData(
        5,
        {"x": torch.zeros(0, 4), "y": torch.zeros(0, dtype=torch.long)},
        torch.zeros(0, dtype=torch.long),
    )
    with pytest.raises(ValueError, match="client 5 has no example to train on"):
        client_update(
            task, task.build_model(), init_state, empty, FederationConfig(), 0, LocalPlan(), CostCounter()
        )


def test_a_plan_can_train_named_parameters_only() -> None:
    """FUSED's partial training: what the plan names trains, the rest comes back unchanged (a zero
    update); the names survive the plan's round trip through its Flower config. Control: the same
    plan without ``trainable`` moves both layers."""
    task = ClassificationTask(lambda: nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), init_seed=0)
    start = task.get_state(task.build_model())
    data = make_clients()[2]
    plan = LocalPlan(trainable=("2",))
    assert LocalPlan.from_config(plan.to_config()) == plan
    update, _ = client_update(task, task.build_model(), start, data, FederationConfig(), 0, plan, CostCounter())
    assert all(float(update[k].abs().sum()) == 0 for k in ("0.weight", "0.bias"))
    assert float(update["2.weight"].abs().sum()) > 0
    everything, _ = client_update(task, task.build_model(), start, data, FederationConfig(), 0, LocalPlan(),
                                  CostCounter())
    assert float(everything["0.weight"].abs().sum()) > 0
    with pytest.raises(ValueError, match=r"no trainable parameter matches \['9'\]"):
        client_update(task, task.build_model(), start, data, FederationConfig(), 0, LocalPlan(trainable=("9",)),
                      CostCounter())


# --------------------------------------------------------------------------- history


def test_history_records_every_round_and_replays_the_aggregation(task, init_state) -> None:
    config = FederationConfig(rounds=3, clients_per_round=2, batch_size=4, seed=2)
    counter, history = CostCounter(), TrainingHistory(init_state)
    seen: list[int] = []
    final = run_federation(
        task,
        make_clients(),
        init_state,
        config,
        counter=counter,
        history=history,
        on_round=lambda r, state: seen.append(r),
    )
    assert seen == [0, 1, 2]
    assert [r.round_index for r in history.rounds] == [0, 1, 2]
    assert states_equal(history.rounds[0].global_state, init_state)
    for r, record in enumerate(history.rounds):
        assert record.participants == sample_clients(SIZES, 2, 2, r)
        assert record.sample_counts == {c: SIZES[c] for c in record.participants}
        after = fedavg(record.global_state, record.client_updates, record.sample_counts)
        following = history.rounds[r + 1].global_state if r < 2 else history.final_state
        assert states_equal(after, following)
    assert states_equal(history.final_state, final)
    # every round kept: one global state plus two updates of 60 bytes each
    assert counter.history_bytes == 3 * (60 + 2 * 60)


# --------------------------------------------------------------------------- stopping


def test_stop_ends_the_loop_after_the_first_true_round(task, init_state) -> None:
    config = FederationConfig(rounds=6, batch_size=4)
    seen, counter = [], CostCounter()
    final = run_federation(task, make_clients(), init_state, config, counter=counter,
                           on_round=lambda r, state: seen.append(r), stop=lambda r, state: r == 2)
    assert seen == [0, 1, 2]
    assert counter.client_rounds == 3 * len(SIZES)
    assert states_equal(final, run_federation(task, make_clients(), init_state, config, rounds=range(3)))


# --------------------------------------------------------------------------- plans


def owner_clients() -> dict[int, ClientData]:
    """Three clients whose records 0..25 carry class labels (for class and record requests)."""
    clients = make_clients()
    return {cid: ClientData(cid, d.tensors, d.record_ids, class_labels=d.tensors["y"].clone())
            for cid, d in clients.items()}


def test_plan_selects_retained_forgotten_or_all_with_a_forget_column() -> None:
    data = owner_clients()[1]
    request = ForgetRequest.forget_class(int(data.tensors["y"][0]))
    mask = data.tensors["y"] == request.label
    assert LocalPlan("retained", request).select(data).num_samples == int((~mask).sum())
    assert LocalPlan("forgotten", request).select(data).num_samples == int(mask.sum())
    everything = LocalPlan("all", request).select(data)
    assert everything.num_samples == data.num_samples
    assert torch.equal(everything.tensors["forget"], mask)
    with pytest.raises(ValueError, match="needs a forget request"):
        LocalPlan("retained")
    with pytest.raises(ValueError, match="'all', 'retained' or 'forgotten'"):
        LocalPlan("some")


def test_retained_plan_trains_on_kept_examples_and_weights_by_them(task, init_state) -> None:
    clients = owner_clients()
    request = ForgetRequest.forget_records(range(0, 26, 2))  # every even record id
    pool = InProcessPool(task, clients)
    plan = LocalPlan("retained", request)
    counts = pool.sample_counts(plan)
    assert counts == {cid: int((d.record_ids % 2 == 1).sum()) for cid, d in clients.items()}
    updates, weights = pool.train(init_state, [0, 1, 2], 0, FederationConfig(batch_size=4), plan, CostCounter())
    assert weights == counts
    # the same update as a client holding only its odd records
    kept = {cid: d.select(d.record_ids % 2 == 1) for cid, d in clients.items()}
    direct, _ = InProcessPool(task, kept).train(init_state, [0, 1, 2], 0, FederationConfig(batch_size=4),
                                                LocalPlan(), CostCounter())
    assert all(states_equal(updates[c], direct[c]) for c in updates)


def test_plan_schedule_overrides_epochs_steps_optimizer_and_lr() -> None:
    config = FederationConfig(local_epochs=2, local_steps=7, lr=0.1, optimizer="sgd")
    schedule = LocalPlan(local_epochs=0.5, optimizer="adam", lr=0.01).schedule(config)
    assert (schedule.local_epochs, schedule.local_steps, schedule.optimizer, schedule.lr) == (0.5, 0, "adam", 0.01)
    assert local_step_count(40, replace_batch(schedule, 10)) == 2  # half of 4 batches
    assert LocalPlan(local_steps=3).schedule(config).local_steps == 3
    assert LocalPlan().schedule(config) == config


def replace_batch(config: FederationConfig, batch_size: int) -> FederationConfig:
    return FederationConfig(**{**config.as_dict(), "batch_size": batch_size})


def test_plan_round_trips_through_plain_config() -> None:
    from fedunlearn.federated.objectives import ProjectedAscent

    reference = {"w": torch.ones(2)}
    plan = LocalPlan("forgotten", ForgetRequest.forget_clients(2), objective=ProjectedAscent(radius=0.5),
                     local_steps=4, optimizer="adam", lr=0.02, optimizer_options=(("beta", 0.5),),
                     states={"reference": reference})
    values = plan.to_config()
    assert all(isinstance(v, (str, int, float, bool, list)) for v in values.values())
    again = LocalPlan.from_config(values, {"reference": reference})
    assert again == plan
    assert again.objective == ProjectedAscent(radius=0.5)


def test_plan_states_are_counted_as_bytes_down(task, init_state) -> None:
    from fedunlearn.federated.objectives import NegativePreference

    pool, counter = InProcessPool(task, make_clients()), CostCounter()
    plan = LocalPlan(objective=NegativePreference(beta=0.1), states={"reference": init_state})
    pool.train(init_state, [0, 1], 0, FederationConfig(batch_size=4), plan, counter)
    assert counter.bytes_down == 2 * (60 + 60)  # the state and the reference, to each participant
    assert counter.bytes_up == 2 * 60


def test_pool_evaluate_is_the_sample_weighted_mean_loss(task, init_state) -> None:
    clients = make_clients()
    model = task.build_model()
    task.set_state(model, init_state)
    with torch.no_grad():
        losses = torch.cat([task.per_example_loss(model, d.tensors) for d in clients.values()])
    counter = CostCounter()
    value = InProcessPool(task, clients).evaluate(init_state, [0, 1, 2], LocalPlan(), counter)
    assert value == pytest.approx(float(losses.mean()), rel=1e-6)
    assert counter.bytes_down == 3 * 60 and counter.client_steps == 0


def test_pool_measure_returns_each_clients_sums_and_counts_its_bytes(task, init_state) -> None:
    from fedunlearn.federated.measures import MEASURES, register_measure

    if "test-label-sum" not in MEASURES.names():
        @register_measure("test-label-sum", uses_model=False)
        def label_sum(task, model, state, batch):
            return {"labels": batch["y"].sum().double(), "twice": 2 * batch["y"].double().sum().expand(3)}
    clients, counter = make_clients(), CostCounter()
    replies = InProcessPool(task, clients).measure(init_state, [2, 0], LocalPlan(), "test-label-sum", counter)
    assert list(replies) == [2, 0]
    for cid in (0, 2):
        sums, n = replies[cid]
        assert n == clients[cid].num_samples
        assert float(sums["labels"]) == float(clients[cid].tensors["y"].sum())
        assert sums["twice"].tolist() == [2 * float(clients[cid].tensors["y"].sum())] * 3
    assert counter.bytes_down == 2 * 60 and counter.bytes_up == 2 * (8 + 3 * 8)
    with pytest.raises(KeyError, match="unknown measure 'no-such-measure'"):
        InProcessPool(task, clients).measure(init_state, [0], LocalPlan(), "no-such-measure", counter)


def test_the_aggregation_rule_comes_from_the_config(task, init_state) -> None:
    config = FederationConfig(rounds=1, batch_size=4, aggregation="median")
    history = TrainingHistory(init_state)
    final = run_federation(task, make_clients(), init_state, config, history=history)
    record = history.rounds[0]
    stacked = {k: torch.stack([record.client_updates[c][k] for c in (0, 1, 2)]) for k in init_state}
    for key, value in init_state.items():
        assert torch.allclose(final[key], value + stacked[key].median(dim=0).values, atol=1e-7)
