"""FedEraser: calibration by hand, bad histories and requests, and the reproduced claim.

The claim tests train the ``digits-backdoor`` scenario once (history every $\\Delta t = 2$ rounds)
and compare FedEraser at the paper's defaults with the retrain oracle of the same seed.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedunlearn import catalog
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import HistoryError
from fedunlearn.federated.loop import FederationConfig, local_step_count
from fedunlearn.incremental.federaser import (
    ENTRY,
    FedEraser,
    FedEraserConfig,
    FedEraserNoCalibration,
    calibrate_update,
    calibration_schedule,
)
from fedunlearn.unlearning.base import history_fingerprint, run_method, train_federation
from fedunlearn.unlearning.controls import Retrain
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.requests import ForgetRequest, ForgetRequestError
from fedunlearn.unlearning.scenarios import build_scenario

# ---------------------------------------------------------------- calibration, by hand


def test_calibrate_update_takes_norm_of_stored_and_direction_of_fresh() -> None:
    stored = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 2.0])}  # norms 5 and 2
    fresh = {"w": torch.tensor([0.0, -0.5]), "b": torch.tensor([1.0, 1.0])}  # norms 0.5, sqrt(2)
    out = calibrate_update(stored, fresh)
    # w: 5 * [0, -1] = [0, -5];  b: 2 * [1, 1] / sqrt(2) = [sqrt(2), sqrt(2)]
    assert torch.allclose(out["w"], torch.tensor([0.0, -5.0]))
    assert torch.allclose(out["b"], torch.full((2,), 2**0.5))


def test_calibrate_update_zero_fresh_and_integer_tensors_give_zero() -> None:
    stored = {"w": torch.tensor([1.0, 1.0]), "n": torch.tensor([3])}
    fresh = {"w": torch.zeros(2), "n": torch.tensor([5])}
    out = calibrate_update(stored, fresh)
    assert torch.equal(out["w"], torch.zeros(2))
    assert torch.equal(out["n"], torch.tensor([0]))


def test_calibration_schedule_halves_epochs_or_steps() -> None:
    config = FederationConfig(local_epochs=2, batch_size=10)
    same, epochs = calibration_schedule(config, 0.5)
    assert same == config and epochs == 1.0
    # 100 examples, batch 10: 20 steps for 2 epochs, 10 for the calibration
    assert local_step_count(100, config) == 20 and local_step_count(100, config, epochs) == 10
    stepped, epochs = calibration_schedule(FederationConfig(local_steps=7), 0.5)
    assert stepped.local_steps == 4 and epochs is None  # round(3.5) = 4
    with pytest.raises(ValueError, match="calibration_ratio"):
        calibration_schedule(config, 0.0)


def test_entry_registers_both_methods() -> None:
    assert ENTRY.methods == ("federaser", "federaser-no-calibration")
    assert catalog.get("federaser").implementation == "fedunlearn.incremental.federaser"
    assert get_method("federaser").config == FedEraserConfig(interval=2, calibration_ratio=0.5)
    with pytest.raises(ValueError, match="calibrate"):
        FedEraser(FedEraserConfig(calibrate="layer"))


# ---------------------------------------------------------------- the trained federation


@pytest.fixture(scope="module")
def setup():
    scenario = build_scenario("digits-backdoor", seed=0)
    config = dataclasses.replace(scenario.config, record_every=2)
    run = train_federation(scenario.task, scenario.clients, config)
    oracle = run_method(Retrain(), run, scenario.request)
    return scenario, run, oracle, evaluate(scenario, oracle.state, run.model)


def test_history_recorded_with_another_interval_is_refused(setup) -> None:
    scenario, run, _, _ = setup
    method = FedEraser(FedEraserConfig(interval=4))
    with pytest.raises(HistoryError, match=r"record_every=2.*asks for 4"):
        run_method(method, run, scenario.request)


def test_history_missing_rounds_is_refused(setup) -> None:
    scenario, run, _, _ = setup
    history = copy_history_without_round(run.history, 3)
    broken = dataclasses.replace(run, history=history)
    with pytest.raises(HistoryError, match=r"missing rounds \[3\]"):
        run_method(FedEraser(), broken, scenario.request)


def copy_history_without_round(history, round_index: int):
    """A shallow copy of ``history`` whose round list lacks one round."""
    clone = type(history)(history.init_state, history.record_every)
    clone.rounds = [r for r in history.rounds if r.round_index != round_index]
    clone.final_state = history.final_state
    return clone


def test_no_calibration_replays_fedavg_of_stored_updates(setup) -> None:
    scenario, run, _, _ = setup
    result = run_method(FedEraserNoCalibration(), run, scenario.request)
    # w_0 + sum over kept rounds of the n_k-weighted mean of the remaining clients' updates
    expected = {k: v.clone() for k, v in run.history.init_state.items()}
    for record in run.history.kept_rounds:
        ids = [c for c in record.participants if c != 0]
        total = sum(record.sample_counts[c] for c in ids)
        for key in expected:
            expected[key] += sum(record.sample_counts[c] / total * record.client_updates[c][key]
                                 for c in ids)
    for key, value in expected.items():
        assert torch.allclose(result.state[key], value, atol=1e-5)


def test_unknown_or_absent_client_is_refused(setup) -> None:
    _, run, _, _ = setup
    with pytest.raises(ForgetRequestError, match="unknown client"):
        run_method(FedEraser(), run, ForgetRequest.forget_clients(42))
    # a client in the federation that never took part in training
    extra = dict(run.clients)
    extra[10] = dataclasses.replace(run.clients[1], client_id=10)
    with pytest.raises(ForgetRequestError, match="never took part"):
        run_method(FedEraser(), dataclasses.replace(run, clients=extra),
                   ForgetRequest.forget_clients(10))
    with pytest.raises(ForgetRequestError, match="serves"):
        run_method(FedEraser(), run, ForgetRequest.forget_class(3))


def test_reproduced_claim_against_the_retrain_oracle(setup) -> None:
    """Asserted (smoke size, seed 0): rho_steps <= 0.25; backdoor ASR <= ASR(retrain) + 2 points;
    history unchanged; the uncalibrated replay is measurably worse (>= 5 points test accuracy).

    Not asserted, because it does not reproduce here: test accuracy within 3 points of the oracle.
    FedEraser applies one round's update per kept round, so it rebuilds a model of T / dt rounds;
    the next test asserts that explanation instead.
    """
    scenario, run, oracle, oracle_metrics = setup
    before = history_fingerprint(run.history)
    erased = run_method(FedEraser(), run, scenario.request)
    replayed = run_method(FedEraserNoCalibration(), run, scenario.request)
    assert history_fingerprint(run.history) == before
    erased_metrics = evaluate(scenario, erased.state, run.model)
    replayed_metrics = evaluate(scenario, replayed.state, run.model)
    original_metrics = evaluate(scenario, run.final_state, run.model)

    # Calibration at every kept round but round 0: half the local steps of each remaining client.
    expected_steps = sum(
        local_step_count(run.clients[c].num_samples, run.config, 0.5)
        for record in run.history.kept_rounds[1:] for c in record.participants if c != 0
    )
    assert erased.cost.client_steps == expected_steps
    assert erased.cost.client_steps / oracle.cost.client_steps <= 0.25
    assert replayed.cost.client_steps == 0
    assert original_metrics["asr"] > oracle_metrics["asr"] + 0.2  # the backdoor is there to remove
    assert erased_metrics["asr"] <= oracle_metrics["asr"] + 0.02
    assert erased_metrics["test_acc"] >= replayed_metrics["test_acc"] + 0.05


def test_federaser_is_bounded_by_retraining_for_the_kept_rounds(setup) -> None:
    """The accuracy gap comes from the shortened trajectory: FedEraser's test accuracy is at most
    3 points above retraining for ceil(T / dt) rounds, and closer to it than to the oracle.
    """
    scenario, run, _, oracle_metrics = setup
    kept = len(run.history.kept_rounds)
    short = dataclasses.replace(run, config=dataclasses.replace(run.config, rounds=kept))
    short_retrain = run_method(Retrain(), short, scenario.request)
    erased = FedEraser().reconstruct(run, scenario.request, CostCounter())
    erased_acc = evaluate(scenario, erased, run.model)["test_acc"]
    short_acc = evaluate(scenario, short_retrain.state, run.model)["test_acc"]
    assert erased_acc <= short_acc + 0.03
    assert abs(erased_acc - short_acc) < abs(erased_acc - oracle_metrics["test_acc"])
