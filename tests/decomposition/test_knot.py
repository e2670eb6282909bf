"""KNOT: cluster assignment, the simulated clock on toy speeds, exact retraining of one cluster (bit for bit, vote
and adapter-mean aggregation) on a toy federation, bad inputs, Flower, and the reproduced claims.

The claim tests (``slow``) ask exactly the notebook's comparisons: ``digits-client`` seed 0 (10 clients, C = 5;
cached) and ``profiles-client`` seed 0 at ``LM_SMOKE`` (4 clients, C = 2). Each names a control under which its
check fails: do-nothing (exactness, LM forgetting), a broken step that retrains every cluster (client steps), a
cluster that waits for the slowest client of the whole federation (simulated time), one cluster's model alone
in place of the vote (accuracy).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import pytest
import torch

from fedunlearn.decomposition.knot import (
    ENSEMBLE_POINTS,
    SPEED_DRAWS,
    SPEEDUP,
    STEPS_MARGIN,
    TARGET_POINTS,
    Knot,
    KnotConfig,
    accuracy_curves,
    cluster_clock,
    cluster_of,
    expected_steps_ratio,
    mean_state,
    round_times,
    simulated_times,
    synchronous_clock,
    time_to,
)
from fedunlearn.decomposition.sisa import CHECKPOINTS, shard_checkpoint
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import TrainingHistory
from fedunlearn.federated.requests import ForgetRequest, split_clients
from fedunlearn.federated.training import FederationConfig
from fedunlearn.unlearning import cache
from fedunlearn.unlearning.base import TrainedFederation, check_scenario, run_method
from fedunlearn.unlearning.compare import compare, tolerance
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario
from toys import digits_setup, states_equal

# ---------------------------------------------------------------- by hand


def test_clients_go_to_clusters_by_id() -> None:
    assert [cluster_of(c, 5) for c in range(10)] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert [cluster_of(c, 2) for c in range(4)] == [0, 1, 0, 1]
    assert expected_steps_ratio(10, 5) == pytest.approx(1 / 9)
    assert expected_steps_ratio(100, 5) == pytest.approx(19 / 99)


def test_mean_state_averages_the_active_clusters() -> None:
    states = [{"a": torch.tensor([1.0, 2.0])}, {"a": torch.tensor([3.0, 6.0])}, {"a": torch.tensor([9.0, 9.0])}]
    assert torch.equal(mean_state(states, [True, True, False])["a"], torch.tensor([2.0, 4.0]))
    with pytest.raises(ValueError, match="no cluster"):
        mean_state(states, [False] * 3)


def test_round_times_are_seeded_pareto_per_client_id() -> None:
    times = round_times(range(6), seed=3)
    assert times == round_times([5, 4, 3, 2, 1, 0], seed=3)  # a function of (seed, id), not of order
    assert round_times([2], seed=3)[2] == times[2]
    assert times != round_times(range(6), seed=4)
    assert all(t >= 1.0 for t in times.values())  # Pareto with scale 1
    many = list(round_times(range(4000), seed=0).values())
    assert statistics.median(many) == pytest.approx(2.0, rel=0.1)  # Pareto(1): median 2^(1/1)


def test_the_clock_on_toy_speeds() -> None:
    times = {0: 1.0, 1: 5.0, 2: 2.0, 3: 10.0}
    assert cluster_clock(times, [0, 2], 3) == [0.0, 2.0, 4.0, 6.0]  # waits for its slowest member only
    config = FederationConfig(rounds=3, clients_per_round=0)
    assert synchronous_clock(times, [0, 1, 2, 3], config) == [0.0, 10.0, 20.0, 30.0]  # waits for client 3
    assert time_to([0.0, 2.0, 4.0, 6.0], [0.1, 0.5, 0.9, 0.95], 0.9) == 4.0
    assert time_to([0.0, 2.0], [0.1, 0.5], 0.9) == math.inf


# ---------------------------------------------------------------- a toy federation


def toy(clients: dict | None = None, rounds: int = 3) -> TrainedFederation:
    return digits_setup(clients, rounds, num_clients=6)


def retained_setup(setup: TrainedFederation, request: ForgetRequest) -> TrainedFederation:
    return toy(split_clients(setup.pool.clients, request)[0], setup.config.rounds)


class Averaged(Knot):
    """KNOT serving the parameter mean of the cluster models (its language-model aggregation) on the toy."""

    name = "test-knot-averaged"

    def voting(self, setup):
        return False


@pytest.mark.parametrize("method", [Knot(KnotConfig(clusters=2)), Averaged(KnotConfig(clusters=2))],
                         ids=["vote", "mean"])
@pytest.mark.parametrize("forgotten", [0, 3])
def test_retrained_cluster_equals_clusters_trained_without_the_client_bit_for_bit(method, forgotten: int) -> None:
    setup = toy()
    run = method.train_federation(setup)
    request = ForgetRequest.forget_clients(forgotten)
    result = run_method(method, run, request)
    oracle = method.train_federation(retained_setup(setup, request))
    assert states_equal(result.state, oracle.final_state)
    # the other cluster's stored state is θ_o's, untouched; only the affected cluster's 2 remaining clients train
    other = 1 - cluster_of(forgotten, 2)
    assert states_equal(shard_checkpoint(run.extras, other, 0, run.init_state),
                 shard_checkpoint(oracle.extras, other, 0, oracle.init_state))
    assert result.cost.client_steps == 3 * 2 * 3  # 3 rounds, 2 clients, 24/8 = 3 steps
    # the trajectory the clock observes ends where unlearning ends
    trajectory = method.retraining_trajectory(run, request, cluster_of(forgotten, 2))
    assert len(trajectory) == 4 and states_equal(trajectory[0], run.init_state)
    assert states_equal(trajectory[-1], shard_checkpoint(oracle.extras, cluster_of(forgotten, 2), 0, oracle.init_state))


def test_a_step_that_skips_the_retraining_is_not_exact() -> None:
    """Control (broken step): serving θ_o's clusters without retraining is not exact."""
    class Skip(Knot):
        name = "test-knot-skip"

        def affected(self, run, request):
            return []

    method = Skip(KnotConfig(clusters=2))
    setup = toy()
    request = ForgetRequest.forget_clients(0)
    result = run_method(method, method.train_federation(setup), request)
    assert not states_equal(result.state, method.train_federation(retained_setup(setup, request)).final_state)


def test_a_cluster_left_without_clients_stops_voting() -> None:
    method = Knot(KnotConfig(clusters=4))  # clusters: {0, 4}, {1, 5}, {2}, {3}
    run = method.train_federation(toy())
    state = run_method(method, run, ForgetRequest.forget_clients(2)).state
    assert state["active"].tolist() == [1.0, 1.0, 0.0, 1.0]
    method.trained_model(run).load_state_dict(state)


def test_bad_input_names_the_value(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="clusters must be >= 1, got 0"):
        get_method("knot", clusters=0)
    with pytest.raises(ValueError, match="clusters=7 exceeds"):
        Knot(KnotConfig(clusters=7)).train_federation(toy())
    with pytest.raises(ValueError, match="knot: clusters=11 exceeds the number of clients \\(10\\)"):
        check_scenario(get_method("knot", clusters=11), build_scenario("digits-client", seed=0))
    monkeypatch.setenv("FEDUNLEARN_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="clusters=4 exceeds the number of clients \\(3\\)"):
        compare("digits-client", [("knot", {"clusters": 4})], num_clients=3, rounds=1, progress=False)
    assert not any(tmp_path.rglob("meta.json"))  # nothing trained, nothing stored


# ---------------------------------------------------------------- on Flower


def test_knot_trains_and_unlearns_on_flower_as_in_process(tmp_path, flower_server) -> None:
    """``mode="train"`` with ``method="knot"`` trains the clusters through the Flower pool (cluster states saved
    with the history), ``mode="unlearn"`` retrains client 0's cluster: both equal the in-process engine."""
    import json

    from safetensors.torch import load_file

    from fedunlearn.flower.settings import RunSettings

    config = {"scenario": "digits-backdoor", "seed": 0, "num-clients": 4, "rounds": 2}
    overrides = {"clusters": 2}
    method = get_method("knot", **overrides)
    scenario = RunSettings.from_run_config(config).build_scenario()
    model = scenario.task.build_model()
    setup = TrainedFederation(scenario.task, scenario.pool(model), scenario.config, scenario.task.get_state(model),
                              {}, TrainingHistory({}), CostCounter(), model, scenario.server_inputs)
    reference = method.train_federation(setup)
    expected = run_method(method, reference, scenario.request)
    nodes = {300 + c: c for c in scenario.clients}
    paths = {"history-path": str(tmp_path / "history"), "out-dir": str(tmp_path / "out")}
    own = {"method": "knot", "method-config": json.dumps(overrides)}
    for mode in ("train", "unlearn"):
        flower_server(config, nodes, {**paths, **own, "mode": mode})
    history = TrainingHistory.load(tmp_path / "history")
    assert set(history.extras) == {CHECKPOINTS}
    flower_server.assert_same_state(history.final_state, reference.final_state)
    out = tmp_path / "out" / "unlearn-knot"
    assert json.loads((out / "result.json").read_text())["status"] == "finished"
    flower_server.assert_same_state(load_file(out / "state.safetensors"), expected.state)


# ---------------------------------------------------------------- reproduced claims (the notebook's calls)

SCENARIO = "digits-client"


@pytest.fixture(scope="module")
def digits():
    """digits-client, seed 0: KNOT (C = 5) against its own oracle, and do-nothing (the notebook's call)."""
    return compare(SCENARIO, ["knot", "do-nothing"], seeds=(0,), progress=False)


@pytest.fixture(scope="module")
def language():
    """profiles-client, seed 0 at LM_SMOKE: KNOT with C = 2 adapters, and do-nothing (the notebook's call)."""
    return compare("profiles-client", [("knot", {"clusters": 2}), "do-nothing"], seeds=(0,), progress=False,
                   **LM_SMOKE)


@pytest.mark.slow
def test_reproduced_claim_exact_within_the_cluster(digits) -> None:
    """Every metric of the unlearned vote equals KNOT trained without client 0 (zero gaps), and the states are
    equal bit for bit. Control: do-nothing (the monolithic θ_o) has non-zero gaps to θ_r."""
    assert all(gap == 0 for gap in digits.per_seed[0]["methods"]["knot"]["gaps"].values())
    assert any(gap != 0 for gap in digits.per_seed[0]["methods"]["do-nothing"]["gaps"].values())
    scenario, method = build_scenario(SCENARIO, seed=0), Knot()
    run = cache.trained_federation(scenario, method=method)
    own = cache.trained_federation(replace(scenario, clients=split_clients(scenario.clients, scenario.request)[0]),
                                   method=method)
    assert states_equal(cache.unlearned(scenario, run, method, scenario.request).state, own.final_state)


class EveryCluster(Knot):
    """Control (broken step): every request retrains every cluster."""

    name = "test-knot-every-cluster"

    def affected(self, run, request):
        return list(range(self.config.clusters))


def test_a_step_that_retrains_every_cluster_costs_a_full_retraining() -> None:
    """The control of the cost claim, on the toy (3 rounds, 6 clients of 3 steps): retraining every cluster costs
    what retraining all retained clients costs; KNOT retrains one cluster of three clients less the forgotten."""
    setup = toy()
    request = ForgetRequest.forget_clients(0)
    run = Knot(KnotConfig(clusters=2)).train_federation(setup)
    assert run_method(EveryCluster(KnotConfig(clusters=2)), run, request).cost.client_steps == 3 * 5 * 3
    assert run_method(Knot(KnotConfig(clusters=2)), run, request).cost.client_steps == 3 * 2 * 3


@pytest.mark.slow
def test_reproduced_claim_a_deletion_costs_one_cluster(digits) -> None:
    """The deletion's client steps are the affected cluster's: ρ = (N/C − 1)/(N − 1) = 1/9 of retraining, below
    (1 + margin)/C; the issue's lower bound (1 − margin)/C is NOT met with 2 clients per cluster (reported).
    Controls: do-nothing (ρ = 0) fails the equality; a broken step retraining every cluster costs a whole
    retraining (``test_a_step_that_retrains_every_cluster_costs_a_full_retraining``, on the toy)."""
    scenario = build_scenario(SCENARIO, seed=0)
    rho = digits.per_seed[0]["methods"]["knot"]["rho_steps"]
    assert rho == pytest.approx(expected_steps_ratio(len(scenario.clients), 5))
    assert rho <= (1 + STEPS_MARGIN) / 5 and rho < (1 - STEPS_MARGIN) / 5
    assert digits.per_seed[0]["methods"]["do-nothing"]["rho_steps"] != pytest.approx(rho)


@pytest.fixture(scope="module")
def clock():
    """The notebook's clock inputs: seed 0 of digits-client, KNOT's and synchronous retraining's curves."""
    scenario, method = build_scenario(SCENARIO, seed=0), Knot()
    run = cache.trained_federation(scenario, method=method)
    curves = accuracy_curves(scenario, method, run)
    return scenario, method, run, curves, curves["sync"][-1] - TARGET_POINTS


def clock_medians(clock, synchronous_cluster: bool = False) -> dict[str, float]:
    out = {"target": [], "done": []}
    for draw in range(SPEED_DRAWS):
        t = simulated_times(*clock, draw, synchronous_cluster)
        out["target"].append(math.inf if t["knot_target"] == 0 else t["sync_target"] / t["knot_target"])
        out["done"].append(t["sync_done"] / t["knot_done"])
    return {k: statistics.median(v) for k, v in out.items()}


@pytest.mark.slow
def test_reproduced_claim_simulated_time_at_least_twice_faster(digits, clock) -> None:
    """Median over the seeded client-speed draws: time to the target accuracy (both retrainings serving their
    partial model) and time to the finished retraining are both >= SPEEDUP times shorter for KNOT. Control:
    a cluster whose rounds wait for the slowest client of the whole federation (no asynchrony) finishes no
    sooner than synchronous retraining (speed-up 1)."""
    medians = clock_medians(clock)
    assert medians["target"] >= SPEEDUP and medians["done"] >= SPEEDUP
    assert clock_medians(clock, synchronous_cluster=True)["done"] == pytest.approx(1.0)


@pytest.mark.slow
def test_reproduced_claim_vote_accuracy_after_forgetting(digits, clock) -> None:
    """After forgetting client 0 the vote's test accuracy is within ENSEMBLE_POINTS of the monolithic θ_r's
    (before the request it is 2.2 points below the monolithic θ_o on this seed: reported, not asserted).
    Control: the retrained cluster's model alone (client 5 only) is not within it."""
    scenario, method, run, _, _ = clock
    row = digits.per_seed[0]
    assert row["methods"]["knot"]["metrics"]["test_acc"] >= row["oracle"]["test_acc"] - ENSEMBLE_POINTS
    alone = method.retraining_trajectory(run, scenario.request, 0)[-1]
    model = scenario.task.build_model()
    model.load_state_dict(alone)
    accuracy = cache.evaluation(scenario, alone, model).metrics["test_acc"]
    assert accuracy < row["oracle"]["test_acc"] - ENSEMBLE_POINTS


@pytest.mark.slow
def test_reproduced_claim_language_model_adapters(language) -> None:
    """Per-cluster adapters, served as their mean: exact against KNOT's own oracle (zero gaps); the forgotten
    client's canary exposure and extraction likelihood are within tolerance of the monolithic θ_r, and its EL
    and MA are at most the unseen people's. Control: do-nothing keeps the canary (exposure outside the band)."""
    row = language.per_seed[0]["methods"][Knot(KnotConfig(clusters=2)).label]
    oracle = language.per_seed[0]["oracle"]
    assert all(gap == 0 for gap in row["gaps"].values())
    for metric in ("canary_exposure", "forget_el"):
        assert abs(row["metrics"][metric] - oracle[metric]) <= tolerance(metric)
    assert row["metrics"]["forget_el"] <= row["metrics"]["unseen_el"]
    assert row["metrics"]["forget_ma"] <= row["metrics"]["unseen_ma"]
    nothing = language.per_seed[0]["methods"]["do-nothing"]["metrics"]
    assert abs(nothing["canary_exposure"] - oracle["canary_exposure"]) > tolerance("canary_exposure")
