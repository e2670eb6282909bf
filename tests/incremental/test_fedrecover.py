"""FedRecover: L-BFGS and thresholds by hand, bad histories and requests, and the reproduced claims.

The fast tests use a 4-round cut of ``digits-poisoned``. The claim tests (``slow``) compare
FedRecover at its defaults, its no-correction ablation and the controls with the retrain oracle of
seed 0 through ``compare`` (10 clients, clients 0 and 1 backdoored, 40 rounds; the cached
federation the notebook uses). What is asserted is what reproduces at this size, with the criteria
named once in the entry module (see the entry page): test accuracy within ``MAX_ACCURACY_GAP`` of
the oracle, client steps at most ``MAX_RHO_STEPS`` of retraining, backdoor ASR far below the
poisoned model's and within ``MAX_RESIDUAL_ASR`` of the oracle (the 2-point retrain tolerance of the
ASR does *not* hold at the defaults), and the ablation clearly further from the oracle. Each claim
test names the control under which it fails, and asserts that failure where it is cheap.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fedunlearn import catalog
from fedunlearn.federated.history import HistoryError
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.incremental.fedrecover import (
    ABLATION_MARGIN,
    MAX_ACCURACY_GAP,
    MAX_RESIDUAL_ASR,
    MAX_RHO_STEPS,
    POISONED_ASR,
    RECOVERY_METRICS,
    FedRecover,
    FedRecoverConfig,
    FedRecoverNoCorrection,
    abnormality_threshold,
    add_pair,
    exact_round,
    flatten,
    lbfgs_hvp,
    unflatten,
)
from fedunlearn.unlearning import cache
from fedunlearn.unlearning.base import run_method
from fedunlearn.unlearning.compare import compare, tolerance
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.scenarios import build_scenario

# ---------------------------------------------------------------- pure functions, by hand


def test_lbfgs_one_pair_matches_hand_computed_bfgs() -> None:
    # s = e1, y = (1, 1): sigma = y.s / s.s = 1, B = I - e1 e1^T + y y^T / y.s = [[1, 1], [1, 2]]
    s, y = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    assert torch.allclose(lbfgs_hvp([(s, y)], s), y)  # secant equation
    assert torch.allclose(lbfgs_hvp([(s, y)], torch.tensor([0.0, 1.0])), torch.tensor([1.0, 2.0]))


def test_lbfgs_two_pairs_match_dense_bfgs_recursion() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=generator, dtype=torch.float64)
    hessian = a @ a.T + torch.eye(5, dtype=torch.float64)
    steps = [torch.randn(5, generator=generator, dtype=torch.float64) for _ in range(2)]
    pairs = [(s, hessian @ s) for s in steps]
    s_new, y_new = pairs[-1]
    dense = (y_new @ s_new) / (s_new @ s_new) * torch.eye(5, dtype=torch.float64)
    for s, y in pairs:  # B <- B - B s s^T B / s^T B s + y y^T / y^T s
        dense = dense - torch.outer(dense @ s, dense @ s) / (s @ dense @ s) + torch.outer(y, y) / (y @ s)
    v = torch.randn(5, generator=generator, dtype=torch.float64)
    assert torch.allclose(lbfgs_hvp(pairs, v), dense @ v)
    assert torch.allclose(lbfgs_hvp(pairs, s_new), y_new)


def test_flatten_unflatten_round_trip_keeps_integer_buffers() -> None:
    state = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "n": torch.tensor([7]), "b": torch.tensor([5.0])}
    vector = flatten(state)
    assert torch.equal(vector, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64))
    back = unflatten(vector * 2, state)
    assert torch.equal(back["w"], state["w"] * 2) and torch.equal(back["n"], state["n"])
    assert back["w"].dtype == torch.float32


def test_abnormality_threshold_is_max_over_rounds_of_quantiles() -> None:
    rounds = [[torch.tensor([0.1, -0.5]), torch.tensor([0.2])], [torch.tensor([0.3, 0.05])], []]
    assert abnormality_threshold(rounds, 0.0) == pytest.approx(0.5)  # the largest |coordinate|
    # alpha = 0.5: medians 0.2 (of 0.1, 0.2, 0.5) and 0.175 (of 0.05, 0.3) -> tau = 0.2
    assert abnormality_threshold(rounds, 0.5) == pytest.approx(0.2)


def test_exact_rounds_of_the_default_schedule() -> None:
    config = FedRecoverConfig()  # T_w = 3, T_c = 15, T_f = 2
    assert [t for t in range(40) if exact_round(t, 40, config)] == [0, 1, 2, 17, 32, 38, 39]
    no_correction = dataclasses.replace(config, correction_period=0, final_rounds=0)
    assert [t for t in range(40) if exact_round(t, 40, no_correction)] == [0, 1, 2]


def test_add_pair_skips_bad_curvature_and_keeps_newest() -> None:
    buffer: list = []
    add_pair(buffer, (torch.tensor([1.0]), torch.tensor([-1.0])), 2, 1e-8)  # s.y < 0
    add_pair(buffer, (torch.zeros(1), torch.zeros(1)), 2, 1e-8)  # no step
    assert buffer == []
    for value in (1.0, 2.0, 3.0):
        add_pair(buffer, (torch.tensor([value]), torch.tensor([value])), 2, 1e-8)
    assert [float(s) for s, _ in buffer] == [2.0, 3.0]


def test_entry_registers_both_methods() -> None:
    entry = catalog.get("fedrecover")
    assert entry.methods == ("fedrecover", "fedrecover-no-correction")
    assert entry.implementation == "fedunlearn.incremental.fedrecover"
    assert get_method("fedrecover").config == FedRecoverConfig()
    ablation_method = get_method("fedrecover-no-correction")
    assert isinstance(ablation_method, FedRecoverNoCorrection)
    assert ablation_method.label == "fedrecover-no-correction"
    ablation = ablation_method.config
    assert (ablation.correction_period, ablation.final_rounds, ablation.tolerance_rate) == (0, 0, None)
    assert get_method("fedrecover", final_rounds=5).label == "fedrecover[final_rounds=5]"


# ---------------------------------------------------------------- a small federation (fast)


@pytest.fixture(scope="module")
def small():
    """digits-poisoned cut to 4 rounds (fast), history of every round."""
    scenario = build_scenario("digits-poisoned", seed=0).restricted(rounds=4)
    return scenario, cache.trained_federation(scenario, 1)


def test_all_rounds_exact_equals_retraining(small) -> None:
    scenario, run = small
    oracle_state, oracle_cost = cache.retrained_oracle(scenario, run)
    everything = FedRecover(FedRecoverConfig(warmup_rounds=4))
    result = run_method(everything, run, scenario.request)
    assert result.cost.client_steps == oracle_cost.client_steps
    assert result.cost.server_steps == 0
    for key, value in oracle_state.items():
        assert torch.allclose(result.state[key], value, atol=1e-6), key


def test_history_with_another_interval_is_refused(small) -> None:
    scenario, _ = small
    thinned = cache.trained_federation(scenario, 2)
    with pytest.raises(HistoryError, match="record_every"):
        run_method(FedRecover(), thinned, scenario.request)


def test_history_with_missing_rounds_is_refused(small) -> None:
    scenario, run = small
    history = copy.copy(run.history)  # shallow: the fixture's round list stays intact
    history.rounds = [run.history.rounds[0], *run.history.rounds[2:]]
    with pytest.raises(HistoryError, match="missing rounds"):
        run_method(FedRecover(), dataclasses.replace(run, history=history), scenario.request)


def test_bad_requests_are_refused(small) -> None:
    scenario, run = small
    with pytest.raises(ForgetRequestError, match="unknown client"):
        run_method(FedRecover(), run, ForgetRequest.forget_clients(99))
    with pytest.raises(ForgetRequestError, match="serves"):
        run_method(FedRecover(), run, ForgetRequest.forget_class(3))
    # a client in the federation that never took part in training
    extra = {**scenario.clients, 10: dataclasses.replace(scenario.clients[9], client_id=10)}
    joined = dataclasses.replace(run, pool=InProcessPool(run.task, extra, run.model))
    with pytest.raises(ForgetRequestError, match="never took part"):
        run_method(FedRecover(), joined, ForgetRequest.forget_clients(10))


# ---------------------------------------------------------------- the reproduced claims (slow)


ALL_EXACT = ("fedrecover", {"warmup_rounds": 40})  # a broken schedule: every round asks every client


@pytest.fixture(scope="module")
def comparison():
    """digits-poisoned (10 clients, clients 0 and 1 backdoored, 40 rounds), seed 0, smoke size:
    FedRecover at its defaults, its ablation and the controls against the retrain oracle, on the
    cached federation the notebook uses. ``run_method`` (inside ``compare``) also checks that no
    method modified the stored history."""
    return compare("digits-poisoned", ["do-nothing", "continue-fedavg", "fedrecover", "fedrecover-no-correction",
                                       ALL_EXACT], progress=False)


def worst_gap(cmp, label: str) -> float:
    """The largest |gap to theta_r| over the recovery metrics (test accuracy and ASR)."""
    return max(abs(cmp.gap(label, metric)) for metric in RECOVERY_METRICS)


@pytest.mark.slow
def test_fedrecover_saves_most_client_work(comparison) -> None:
    """Claim 2: 0 < rho_steps <= MAX_RHO_STEPS (at least 80% of client steps saved; the paper 88%),
    the rest estimated on the server.

    Fails under do-nothing (no work at all: rho_steps 0, no estimates; asserted) and under a
    broken schedule that asks every client in every round (``fedrecover[warmup_rounds=40]``:
    rho_steps 1, it is train-from-scratch; asserted).
    """
    cmp = comparison
    assert 0 < cmp.rho("fedrecover") <= MAX_RHO_STEPS
    assert cmp.rho("fedrecover[warmup_rounds=40]") == 1
    assert cmp.per_seed[0]["methods"]["fedrecover"]["cost"]["server_steps"] > 0
    assert cmp.rho("do-nothing") == 0 and cmp.per_seed[0]["methods"]["do-nothing"]["cost"]["server_steps"] == 0


@pytest.mark.slow
def test_fedrecover_matches_oracle_accuracy_and_removes_most_of_the_backdoor(comparison) -> None:
    """Claim 1, as far as it reproduces here: theta_o carries the backdoor (ASR above
    POISONED_ASR), FedRecover's test accuracy is within MAX_ACCURACY_GAP of theta_r's and its ASR
    at most MAX_RESIDUAL_ASR above. (ASR within the 2-point retrain tolerance does not hold at the
    defaults and is not asserted; the page reports it.)

    Fails under do-nothing (ASR +0.98), continue-fedavg (+0.93) and the ablation
    ``fedrecover-no-correction`` (+0.41); all three asserted.
    """
    cmp = comparison
    assert cmp.value("original", "asr") > POISONED_ASR  # the poisoned model carries the backdoor
    assert abs(cmp.gap("fedrecover", "test_acc")) <= MAX_ACCURACY_GAP
    assert cmp.gap("fedrecover", "asr") <= MAX_RESIDUAL_ASR
    for control in ("do-nothing", "continue-fedavg", "fedrecover-no-correction"):
        assert cmp.gap(control, "asr") > MAX_RESIDUAL_ASR
    assert MAX_RESIDUAL_ASR > tolerance("asr")  # the weaker criterion, named as such


@pytest.mark.slow
def test_recovery_without_corrections_is_clearly_worse(comparison) -> None:
    """Claim 3: without periodic correction, abnormality fixing and final tuning, the worst gap to
    theta_r (test accuracy or ASR) is larger by at least ABLATION_MARGIN.

    Fails when the corrections are broken (exact rounds after warm-up never asked: FedRecover then
    is its ablation, margin 0) and under the ablation in FedRecover's place.
    """
    cmp = comparison
    assert worst_gap(cmp, "fedrecover-no-correction") >= worst_gap(cmp, "fedrecover") + ABLATION_MARGIN
