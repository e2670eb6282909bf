"""FedEraser: calibration by hand, bad histories and requests, and the reproduced claims.

The fast tests use a 4-round cut of ``digits-backdoor`` and check what holds by construction
(calibration steps, rounded up; the cost ratio). The claim tests (``slow``) compare FedEraser at
the paper's defaults with the retrain oracle of seed 0 through ``compare`` on the cached
federations the notebook uses, in two regimes: ``digits-backdoor`` (smoke: 10 clients, one local
epoch) and ``digits-backdoor-paper`` (FedEraser's: 20 clients, 10 local epochs, momentum 0.9).
Each names the control under which it fails and asserts that failure.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedunlearn import catalog
from fedunlearn.federated.aggregation import weighted_average
from fedunlearn.federated.history import HistoryError
from fedunlearn.federated.loop import run_rounds
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.training import FederationConfig, LocalPlan, local_step_count
from fedunlearn.incremental.federaser import (
    CALIBRATION_MARGIN,
    TRIGGER_CLOSURE,
    FedEraser,
    FedEraserConfig,
    FedEraserNoCalibration,
    calibrate_update,
    calibration_gain,
    calibration_plans,
    calibration_steps,
    expected_rho_steps,
    forgets_like_retraining,
    trigger_margin_closed,
)
from fedunlearn.unlearning import cache
from fedunlearn.unlearning.base import run_method
from fedunlearn.unlearning.compare import BACKDOOR_MARGIN, compare, tolerance
from fedunlearn.unlearning.controls import Retrain
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.registry import MethodSettingError, get_method
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


def test_calibration_steps_round_up() -> None:
    config = FederationConfig(local_epochs=1, batch_size=16)
    # 140 examples, batch 16: 9 steps a round; half is 4.5 -> 5 (the substrate's round() gives 4)
    assert local_step_count(140, config) == 9 and local_step_count(140, config, 0.5) == 4
    assert calibration_steps(140, config, 0.5) == 5
    assert calibration_steps(128, config, 0.5) == 4  # 8 steps: exact
    assert calibration_steps(140, config, 1.0) == 9
    assert calibration_steps(300, FederationConfig(local_epochs=1, batch_size=10), 0.1) == 3  # not 4 (float)
    assert calibration_steps(10, config, 0.01) == 1  # at least one step
    assert calibration_steps(100, FederationConfig(local_steps=7), 0.5) == 4  # step schedule: ceil(3.5)
    with pytest.raises(ValueError, match="calibration_ratio"):
        calibration_steps(100, config, 0.0)


def test_calibration_plans_per_client() -> None:
    request = ForgetRequest.forget_clients(0)
    config = FederationConfig(local_epochs=2, batch_size=10)
    plans = calibration_plans(config, 0.5, request, {1: 100, 2: 95})
    assert {c: (p.data, p.request, p.local_steps) for c, p in plans.items()} == {
        1: ("retained", request, 10), 2: ("retained", request, 10)}  # 20 steps a round -> 10
    assert local_step_count(100, plans[1].schedule(config)) == 10


def test_expected_cost_is_r_over_dt() -> None:
    assert expected_rho_steps(FedEraserConfig()) == 0.25  # the paper's 4x
    assert expected_rho_steps(FedEraserConfig(interval=4, calibration_ratio=1.0)) == 0.25


def test_entry_registers_both_methods() -> None:
    entry = catalog.get("federaser")
    assert entry.methods == ("federaser", "federaser-no-calibration")
    assert entry.implementation == "fedunlearn.incremental.federaser"
    assert get_method("federaser").config == FedEraserConfig(interval=2, calibration_ratio=0.5)
    assert isinstance(get_method("federaser-no-calibration"), FedEraserNoCalibration)
    assert get_method("federaser", calibration_ratio=1.0).label == "federaser[calibration_ratio=1.0]"
    with pytest.raises(ValueError, match="calibrate"):
        FedEraser(FedEraserConfig(calibrate="layer"))
    with pytest.raises(MethodSettingError, match="calibration_ratio"):
        get_method("federaser", calibration_ratio=0.0)


# ---------------------------------------------------------------- a small federation (fast)


@pytest.fixture(scope="module")
def small():
    """digits-backdoor cut to 4 rounds, history every 2 rounds (kept rounds 0 and 2)."""
    scenario = build_scenario("digits-backdoor", seed=0).restricted(rounds=4)
    return scenario, cache.trained_federation(scenario, 2)


def test_history_recorded_with_another_interval_is_refused(small) -> None:
    scenario, run = small
    method = FedEraser(FedEraserConfig(interval=4))
    with pytest.raises(HistoryError, match=r"record_every=2.*asks for 4"):
        run_method(method, run, scenario.request)


def copy_history_without_round(history, round_index: int):
    """A shallow copy of ``history`` whose round list lacks one round."""
    clone = type(history)(history.init_state, history.record_every)
    clone.rounds = [r for r in history.rounds if r.round_index != round_index]
    clone.final_state = history.final_state
    return clone


def test_history_missing_rounds_is_refused(small) -> None:
    scenario, run = small
    broken = dataclasses.replace(run, history=copy_history_without_round(run.history, 1))
    with pytest.raises(HistoryError, match=r"missing rounds \[1\]"):
        run_method(FedEraser(), broken, scenario.request)


def test_no_calibration_replays_fedavg_of_stored_updates(small) -> None:
    scenario, run = small
    result = run_method(FedEraserNoCalibration(), run, scenario.request)
    assert result.cost.client_steps == 0
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


def test_calibration_takes_half_the_local_steps_rounded_up_at_every_kept_round_but_the_first(small) -> None:
    """Claim 1's cost, by construction: ceil(r * s_k) steps per remaining client and kept round
    after the first, so rho_steps = (kept - 1) * ceil(r s) / (T s) when every client takes s steps."""
    scenario, run = small
    result = run_method(FedEraser(), run, scenario.request)
    steps = {c: local_step_count(n, run.config) for c, n in run.history.kept_rounds[0].sample_counts.items()}
    expected = sum(-(-steps[c] // 2) for record in run.history.kept_rounds[1:] for c in record.participants if c != 0)
    assert expected > 0 and result.cost.client_steps == expected
    assert result.cost.client_rounds == sum(len(r.participants) - 1 for r in run.history.kept_rounds[1:])
    retrain = run_method(Retrain(), run, scenario.request).cost.client_steps
    assert {steps[c] for c in steps if c != 0} == {9}  # every remaining client: 9 steps a round here
    kept, rounds = len(run.history.kept_rounds), run.config.rounds
    assert result.cost.client_steps / retrain == pytest.approx((kept - 1) * 5 / (rounds * 9))


def test_unknown_or_absent_client_is_refused(small) -> None:
    scenario, run = small
    with pytest.raises(ForgetRequestError, match="unknown client"):
        run_method(FedEraser(), run, ForgetRequest.forget_clients(42))
    # a client in the federation that never took part in training
    extra = {**scenario.clients, 10: dataclasses.replace(scenario.clients[1], client_id=10)}
    joined = dataclasses.replace(run, pool=InProcessPool(run.task, extra, run.model))
    with pytest.raises(ForgetRequestError, match="never took part"):
        run_method(FedEraser(), joined, ForgetRequest.forget_clients(10))
    with pytest.raises(ForgetRequestError, match="serves"):
        run_method(FedEraser(), run, ForgetRequest.forget_class(3))


# ---------------------------------------------------------------- the reproduced claims (slow)

SANITY = ("federaser", {"interval": 1, "calibration_ratio": 1.0})
SANITY_LABEL = "federaser[interval=1,calibration_ratio=1.0]"


class SwappedCalibration(FedEraser):
    """A broken step: the stored update's direction with the fresh update's length."""

    name = "federaser-swapped"

    def _calibrated_step(self, stored, fresh, ids, counts):
        return weighted_average([calibrate_update(fresh[k], stored[k]) for k in ids], counts)


@pytest.fixture(scope="module")
def smoke():
    """digits-backdoor (10 clients, one local epoch), seed 0: FedEraser, its ablation, the
    controls and the sanity setting against θ_r. ``run_method`` (inside ``compare``) also checks
    that no method modified the stored history."""
    return compare("digits-backdoor", ["do-nothing", "continue-fedavg", "federaser", "federaser-no-calibration",
                                       SANITY, SwappedCalibration()], progress=False)


@pytest.fixture(scope="module")
def paper():
    """digits-backdoor-paper (20 clients, 10 local epochs, batch 64, momentum 0.9), seed 0."""
    return compare("digits-backdoor-paper", ["do-nothing", "continue-fedavg", "federaser",
                                             "federaser-no-calibration", SwappedCalibration()], progress=False)


@pytest.mark.slow
def test_paper_regime_backdoor_logit_largely_removed(paper, smoke) -> None:
    """Claim 2, influence removed, in the paper-like regime: ASR within the tolerance of θ_r's, and
    at least TRIGGER_CLOSURE of θ_o's trigger-margin excess over θ_r removed.

    Fails under do-nothing (closure 0), continue-fedavg (0.09 at seed 0) and the uncalibrated
    replay FedAccum (0.35), all asserted; the ASR part alone would pass FedAccum. In the smoke
    regime FedEraser itself removes only 0.39 (asserted: the page's verdict is regime-bound).
    """
    assert paper.gap("do-nothing", "asr") > BACKDOOR_MARGIN  # a backdoor to remove
    assert paper.gap("federaser", "asr", "max") <= tolerance("asr")
    assert trigger_margin_closed(paper, "federaser") >= TRIGGER_CLOSURE
    for control in ("do-nothing", "continue-fedavg", "federaser-no-calibration"):
        assert trigger_margin_closed(paper, control) < TRIGGER_CLOSURE
    assert paper.gap("federaser-no-calibration", "asr") <= tolerance("asr")  # why ASR alone cannot tell
    assert trigger_margin_closed(smoke, "federaser") < TRIGGER_CLOSURE


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["smoke", "paper"])
def test_calibration_beats_replaying_stored_updates(regime, request) -> None:
    """Claim 2, calibration beats FedAccum: at least CALIBRATION_MARGIN more test accuracy than the
    uncalibrated replay (paired, same seed), and a forget loss closer to θ_r's, in both regimes.

    Fails under a broken calibration step that keeps the stored directions and takes the fresh
    lengths (``SwappedCalibration``; asserted).
    """
    cmp = request.getfixturevalue(regime)
    assert calibration_gain(cmp) >= CALIBRATION_MARGIN
    assert abs(cmp.gap("federaser", "forget_loss")) < abs(cmp.gap("federaser-no-calibration", "forget_loss"))
    assert calibration_gain(cmp, "federaser-swapped") < CALIBRATION_MARGIN


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["smoke", "paper"])
def test_not_retrain_equivalent_at_the_paper_defaults(regime, request, smoke) -> None:
    """Claim 2, "close to retraining", does not reproduce at the paper's defaults (Δt = 2, r = 0.5)
    in either regime: test accuracy and the forgotten examples' loss distribution (KS p-value) lie
    outside the retrain band. The criteria can be met: the sanity setting (Δt = 1, r = 1) meets
    all four in the smoke regime (asserted), and do-nothing fails the trigger margin (asserted).
    """
    cmp = request.getfixturevalue(regime)
    checks = forgets_like_retraining(cmp, "federaser")
    assert not checks["test_acc"] and not checks["forget_quality"]
    assert all(forgets_like_retraining(smoke, SANITY_LABEL).values())
    assert not forgets_like_retraining(cmp, "do-nothing")["trigger_margin"]


@pytest.mark.slow
def test_accuracy_is_bounded_by_retraining_for_the_kept_rounds(smoke) -> None:
    """Why claim 2's utility part does not reproduce in the smoke regime: FedEraser applies one
    round's update per kept round, so it rebuilds a model of ceil(T / dt) rounds. Its test accuracy
    is at most the accuracy tolerance above retraining for ceil(T / dt) rounds, and closer to that
    than to theta_r.

    Fails under do-nothing (theta_o is far above the shortened retraining; asserted).
    """
    cmp = smoke
    scenario = build_scenario("digits-backdoor", seed=0)
    run = cache.trained_federation(scenario, 2)
    kept = len(run.history.kept_rounds)
    short = run_rounds(run.pool, run.init_state, run.config, range(kept), plan=LocalPlan("retained", scenario.request))
    short_acc = evaluate(scenario, short, run.model)["test_acc"]

    def bounded(label: str) -> bool:
        acc = cmp.value(label, "test_acc")
        return acc <= short_acc + tolerance("test_acc") and abs(acc - short_acc) < abs(acc - cmp.value("retrain", "test_acc"))

    assert bounded("federaser")
    assert not bounded("do-nothing")
