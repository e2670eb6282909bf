"""Per-client adapters and FUSED: layer grouping and critical-layer scores by hand on a toy history, the budget
rule, exact deletion of a client's adapter (bit for bit) and FUSED's reversal (bit for bit) on a toy federation,
the sparse plan training nothing outside the critical layers, bad inputs, and the reproduced claims.

The claim tests (``slow``) ask exactly the notebook's comparisons (``LM_METHODS`` on ``profiles-client`` seed 0 at
``LM_SMOKE``, ``DIGITS_METHODS`` on ``digits-backdoor`` seeds ``DIGITS_SEEDS``), so the shared cache serves both.
Controls: do-nothing's gaps (exactness), a step that keeps the deleted client's adapter (exactness), every layer
trainable (the trainable-fraction bound), a budget of every round (the cost bound), and θ_o itself (forgetting).
"""

from __future__ import annotations

import pytest
import torch

from fedunlearn.decomposition.fused import (
    ADAPTERS,
    DIGITS_METHODS,
    DIGITS_SEEDS,
    LM_METHODS,
    MAX_RHO_STEPS,
    MAX_TRAINABLE,
    Fused,
    FusedConfig,
    PerClientAdapters,
    adapter_of,
    client_adapters,
    critical_layers,
    delete_adapters,
    fused_selection,
    layer_of,
    layer_scores,
    layer_sizes,
    mean_adapter,
    remove_adapter,
    sparse_rounds,
    trainable_names,
)
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import RoundRecord, TrainingHistory
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError, split_clients
from fedunlearn.federated.task import clone_state
from fedunlearn.unlearning.base import TrainedFederation, run_method, train_federation
from fedunlearn.unlearning.compare import compare
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario
from toys import digits_setup, states_equal

# ---------------------------------------------------------------- by hand


def test_state_keys_group_into_layers() -> None:
    assert layer_of("0.weight") == layer_of("0.bias") == "0"
    lora = "base_model.model.model.layers.1.mlp.up_proj"
    assert layer_of(f"{lora}.lora_A.weight") == layer_of(f"{lora}.lora_B.weight") == lora
    assert layer_sizes({"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(3), "2.weight": torch.zeros(1, 3)}) == {
        "0": 9, "2": 3}


def toy_history() -> TrainingHistory:
    init = {"a.weight": torch.zeros(2), "a.bias": torch.zeros(1), "b.weight": torch.zeros(4)}
    history = TrainingHistory(init)
    history.rounds = [
        RoundRecord(0, [0, 1], {0: 1, 1: 1}, init, {
            0: {"a.weight": torch.tensor([3.0, 0.0]), "a.bias": torch.tensor([4.0]), "b.weight": torch.ones(4)},
            1: {"a.weight": torch.zeros(2), "a.bias": torch.zeros(1), "b.weight": torch.full((4,), 2.0)}}),
        RoundRecord(1, [0], {0: 1}),  # not kept: no tensors, no score
        RoundRecord(2, [1], {1: 1}, init, {
            1: {"a.weight": torch.tensor([0.0, 1.0]), "a.bias": torch.zeros(1), "b.weight": torch.zeros(4)}}),
    ]
    return history


def test_layer_scores_sum_each_uploads_layer_norm_over_rounds_and_clients() -> None:
    # a: |(3, 0, 4)| = 5 (client 0), 0 (client 1), 1 (round 2) -> 6;  b: |1,1,1,1| = 2, |2,2,2,2| = 4 -> 6
    assert layer_scores(toy_history()) == pytest.approx({"a": 6.0, "b": 6.0})
    assert layer_scores(toy_history(), per_parameter=True) == pytest.approx({"a": 2.0, "b": 1.5})
    with pytest.raises(ValueError, match="kept no client update"):
        layer_scores(TrainingHistory({"a.weight": torch.zeros(1)}))


def test_critical_layers_take_the_top_scores_within_the_budget() -> None:
    scores, sizes = {"x": 9.0, "y": 5.0, "z": 5.0, "w": 1.0}, {"x": 50, "y": 8, "z": 8, "w": 1}
    assert critical_layers(scores, sizes, 100, layers=2, max_fraction=0.2) == ("y", "z")  # x does not fit; tie by name
    assert critical_layers(scores, sizes, 100, layers=2, max_fraction=0.6) == ("x", "y")
    assert critical_layers(scores, sizes, 100, layers=5, max_fraction=0.1) == ("y", "w")  # z would pass 10
    with pytest.raises(ValueError, match="no layer fits max_fraction=0.005 of 100 parameters"):
        critical_layers(scores, sizes, 100, layers=2, max_fraction=0.005)


def test_sparse_rounds_and_bad_config_values() -> None:
    assert [sparse_rounds(FusedConfig(), t) for t in (1, 6, 20)] == [1, 1, 5]
    for field, value in (("layers", 0), ("max_fraction", 0.0), ("max_fraction", 1.5), ("round_fraction", 0.0)):
        with pytest.raises(ValueError, match=f"{field} must be .*got {value}"):
            get_method("fused", **{field: value})


# ---------------------------------------------------------------- a toy federation (digits)


def toy(clients: dict | None = None, rounds: int = 3) -> TrainedFederation:
    return digits_setup(clients, rounds, num_clients=4)


def test_deleting_a_clients_adapter_equals_training_without_it_bit_for_bit() -> None:
    """Exact: the re-averaged adapters equal per-client adapters trained without client 2. Control: keeping the
    deleted client's adapter (averaging all four) is not the oracle."""
    method, setup = PerClientAdapters(), toy()
    run = method.train_federation(setup)
    assert sorted(client_adapters(run.extras)) == [0, 1, 2, 3]
    request = ForgetRequest.forget_clients(2)
    result = run_method(method, run, request)
    oracle = method.train_federation(toy(split_clients(setup.pool.clients, request)[0]))
    assert states_equal(result.state, oracle.final_state)
    assert result.cost.client_steps == 0 and oracle.cost.client_steps == 3 * 3 * 3  # rounds x clients x 24/8
    assert run.cost.client_steps == 3 * 4 * 3  # the same local steps as FedAvg with every client every round
    assert not states_equal(run.final_state, oracle.final_state)


def test_per_client_adapters_are_each_clients_own_training_and_the_mean_by_hand() -> None:
    method, setup = PerClientAdapters(), toy()
    run = method.train_federation(setup)
    adapters = client_adapters(run.extras)
    alone = train_federation(setup.task, InProcessPool(setup.task, {1: setup.pool.clients[1]}, setup.model),
                             setup.config, setup.init_state)
    assert states_equal(adapters[1], alone.final_state)  # client 1 trained alone from w_0
    by_hand = {k: sum(adapters[c][k] for c in range(4)) / 4 for k in adapters[0]}
    assert all(torch.allclose(run.final_state[k], by_hand[k]) for k in by_hand)
    assert states_equal(mean_adapter(adapters), run.final_state)


def test_deleting_an_adapter_that_does_not_exist_names_it_and_changes_nothing() -> None:
    method = PerClientAdapters()
    run = method.train_federation(toy())
    stored = clone_state(run.extras[ADAPTERS])
    kept = {c: a for c, a in client_adapters(run.extras).items() if c != 3}
    with pytest.raises(ForgetRequestError, match=r"no adapter for client\(s\) \[3\]"):
        delete_adapters(kept, [1, 3])
    with pytest.raises(ForgetRequestError, match="7"):  # never in the federation: refused before unlearning
        run_method(method, run, ForgetRequest.forget_clients(7))
    partial = TrainedFederation(run.task, run.pool, run.config, run.init_state, run.final_state, run.history,
                                run.cost, run.model, extras={ADAPTERS: {k: v for k, v in run.extras[ADAPTERS].items()
                                                                        if not k.startswith("3.")}})
    with pytest.raises(ForgetRequestError, match=r"no adapter for client\(s\) \[3\]"):
        method.unlearn(partial, ForgetRequest.forget_clients(3), CostCounter())
    assert states_equal(run.extras[ADAPTERS], stored)
    with pytest.raises(ValueError, match="no adapter left"):
        mean_adapter({})


def fedavg_toy() -> TrainedFederation:
    setup = toy()
    return train_federation(setup.task, setup.pool, setup.config, setup.init_state, model=setup.model)


def test_fused_trains_only_the_critical_layers_and_removing_the_adapter_restores_theta_o() -> None:
    run = fedavg_toy()
    method = Fused()
    chosen, fraction = fused_selection(run, method.config)
    assert chosen == ("4",)  # the 64x64 layers hold 46 % of the MLP each: only the head fits 10 %
    assert fraction == pytest.approx(650 / 8970) and fraction <= MAX_TRAINABLE
    assert trainable_names(run.model, chosen) == ["4.weight", "4.bias"]
    result = run_method(method, run, ForgetRequest.forget_clients(0))
    changed = {k for k in run.final_state if not torch.equal(result.state[k], run.final_state[k])}
    assert changed == {"4.weight", "4.bias"}
    adapter = adapter_of(result.state, run.final_state)
    assert set(adapter) == changed and all(v.dtype == torch.float64 for v in adapter.values())
    assert states_equal(remove_adapter(result.state, adapter), run.final_state)  # reversal, bit for bit
    # cost: one round (floor(0.25 * 3) -> 1) of the three retained clients, 3 steps each
    assert result.cost.client_steps == 1 * 3 * 3


def test_fused_with_every_layer_trainable_changes_every_layer() -> None:
    """Control for the sparsity check: with the budget lifted, the plan trains the whole model."""
    run = fedavg_toy()
    result = run_method(Fused(FusedConfig(layers=3, max_fraction=1.0)), run, ForgetRequest.forget_clients(0))
    assert all(not torch.equal(result.state[k], run.final_state[k]) for k in run.final_state)


# ---------------------------------------------------------------- reproduced claims


@pytest.fixture(scope="module")
def language():
    """The notebook's comparison on the language model (profiles-client, seed 0, LM_SMOKE)."""
    return compare("profiles-client", LM_METHODS, seeds=(0,), progress=False, **LM_SMOKE)


@pytest.fixture(scope="module")
def digits():
    """The notebook's comparison on digits-backdoor."""
    return compare("digits-backdoor", DIGITS_METHODS, seeds=DIGITS_SEEDS, progress=False)


@pytest.mark.slow
def test_reproduced_claim_per_client_adapters_are_exact(language) -> None:
    """Every metric equals per-client adapters trained without client 0 (zero gaps), at zero client steps.
    Control: do-nothing's θ_o of the same federation is not within zero of its own oracle's metrics."""
    row = language.per_seed[0]["methods"]["per-client-adapters"]
    assert all(gap == 0 for gap in row["gaps"].values())
    assert row["metrics"] == {k: v for k, v in row["own_oracle"].items() if k in row["metrics"]}
    assert row["cost"]["client_steps"] == 0
    assert any(row["trained_metrics"][k] != row["own_oracle"][k] for k in ("forget_el", "canary_exposure"))
    # the up-front price the page reports: the mean of lone adapters answers worse than the joint FedAvg adapter
    assert row["trained_metrics"]["retain_answer_prob"] < language.value("original", "retain_answer_prob")


@pytest.mark.slow
def test_reproduced_claim_per_client_deletion_bit_for_bit() -> None:
    """The served state after deletion equals the own oracle's final state tensor by tensor (cached runs).
    Control: the state before deletion does not."""
    from dataclasses import replace

    from fedunlearn.unlearning import cache

    scenario = build_scenario("profiles-client", seed=0).restricted(**LM_SMOKE)
    method = get_method("per-client-adapters")
    run = cache.trained_federation(scenario, method=method)
    own = cache.trained_federation(replace(scenario, clients=split_clients(scenario.clients, scenario.request)[0]),
                                   method=method)
    unlearned = cache.unlearned(scenario, run, method, scenario.request).state
    assert states_equal(unlearned, own.final_state)
    assert not states_equal(run.final_state, own.final_state)


@pytest.mark.slow
def test_reproduced_claim_fused_budget(language, digits) -> None:
    """FUSED trains at most MAX_TRAINABLE of the parameters at ρ_steps <= MAX_RHO_STEPS. Controls: every layer
    trainable exceeds the fraction; a budget of every round exceeds the cost bound."""
    for cmp, scenario in ((language, build_scenario("profiles-client", 0).restricted(**LM_SMOKE)),
                          (digits, build_scenario("digits-backdoor", 0))):
        from fedunlearn.unlearning import cache

        run = cache.trained_federation(scenario, 1)
        assert fused_selection(run, FusedConfig())[1] <= MAX_TRAINABLE
        assert fused_selection(run, FusedConfig(layers=99, max_fraction=1.0))[1] > MAX_TRAINABLE
        assert cmp.rho("fused") <= MAX_RHO_STEPS
        assert sparse_rounds(FusedConfig(round_fraction=1.0), run.config.rounds) / run.config.rounds > MAX_RHO_STEPS


@pytest.mark.slow
def test_reproduced_claim_fused_reversal_on_the_runs() -> None:
    """Removing the adapter of the cached FUSED results gives θ_o back bit for bit (LM and digits). Control: the
    unlearned state differs from θ_o."""
    from fedunlearn.unlearning import cache

    for scenario in (build_scenario("profiles-client", 0).restricted(**LM_SMOKE), build_scenario("digits-backdoor", 0)):
        run = cache.trained_federation(scenario, 1)
        state = cache.unlearned(scenario, run, get_method("fused"), scenario.request).state
        assert not states_equal(state, run.final_state)
        assert states_equal(remove_adapter(state, adapter_of(state, run.final_state)), run.final_state)


@pytest.mark.slow
def test_reproduced_claim_fused_forgetting_as_measured(language, digits) -> None:
    """What the notebook reports: the issue's pass (forget metrics in θ_r's band) does NOT hold here. On digits
    the backdoor survives (ASR outside the band at every seed) though test accuracy stays in band; on the LM the
    forgetting metrics stay outside the band; every layer trainable for the same rounds removes more of the backdoor,
    still not into the band. Control: θ_o (do nothing) is outside the same bands, so the metrics are informative;
    if a change made FUSED pass, this test fails and the page must be updated."""
    assert digits.informative("asr") and not digits.equivalent("fused", "asr")
    assert digits.equivalent("fused", "test_acc")
    ablation = get_method(DIGITS_METHODS[1][0], **DIGITS_METHODS[1][1]).label  # every layer, the same rounds
    assert digits.value(ablation, "asr") < digits.value("fused", "asr") and not digits.equivalent(ablation, "asr")
    assert language.informative("forget_el") and not language.equivalent("fused", "forget_el")


# ---------------------------------------------------------------- on Flower


def test_fused_unlearns_on_flower_as_in_process(tmp_path, flower_server) -> None:
    """A FedAvg ``mode="train"`` run, then ``mode="unlearn"`` with ``method="fused"``: the sparse plan
    (``trainable``) travels to the ClientApps, and the unlearned state equals the in-process one; only the
    critical layers changed."""
    import json

    from safetensors.torch import load_file

    from fedunlearn.flower.settings import RunSettings

    config = {"scenario": "digits-backdoor", "seed": 0, "num-clients": 4, "rounds": 4}
    method = get_method("fused")
    scenario = RunSettings.from_run_config(config).build_scenario()
    model = scenario.task.build_model()
    reference = train_federation(scenario.task, scenario.pool(model), scenario.config, scenario.task.get_state(model),
                                 model=model)
    expected = run_method(method, reference, scenario.request)
    nodes = {300 + c: c for c in scenario.clients}
    paths = {"history-path": str(tmp_path / "history"), "out-dir": str(tmp_path / "out")}
    for mode, own in (("train", {}), ("unlearn", {"method": "fused", "method-config": "{}"})):
        flower_server(config, nodes, {**paths, **own, "mode": mode})
    out = tmp_path / "out" / "unlearn-fused"
    assert json.loads((out / "result.json").read_text())["status"] == "finished"
    got = load_file(out / "state.safetensors")
    flower_server.assert_same_state(got, expected.state)
    trained = TrainingHistory.load(tmp_path / "history").final_state
    assert {k for k in got if not torch.equal(got[k], trained[k])} == {"4.weight", "4.bias"}
