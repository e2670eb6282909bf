"""Federated unlearning with knowledge distillation: subtraction and KD loss by hand, bad input,
and the reproduced claim on ``digits-backdoor`` against the retrain oracle of the same seed.

The claim test asserts what reproduces at smoke size (seed 0, the scenario's 20 rounds, the
method's default config, server data = half of the digits test split, evaluation on the other
half): zero client steps; ASR within 2 points of the oracle's; test accuracy within 3 points of
the oracle's; subtraction alone loses at least 5 points of test accuracy more than KD does.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fedunlearn.federated.history import HistoryError, TrainingHistory
from fedunlearn.incremental.kd_unlearning import (
    ENTRY,
    KDConfig,
    KnowledgeDistillationUnlearning,
    SubtractOnly,
    distillation_loss,
    subtract_contribution,
    target_contribution,
)
from fedunlearn.unlearning.base import history_fingerprint, run_method, train_federation
from fedunlearn.unlearning.controls import Retrain
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.requests import ForgetRequest, ForgetRequestError
from fedunlearn.unlearning.scenarios import build_scenario, split_server_inputs


def toy_history(record_every: int = 1) -> TrainingHistory:
    """Three rounds; client 0 takes part in rounds 0 and 2 only."""
    history = TrainingHistory({"w": torch.tensor([0.0])}, record_every=record_every)
    # round 0: n_0 = 1, n_1 = 3 -> weight of client 0 is 1/4
    history.record_round(0, {"w": torch.tensor([0.0])},
                         {0: {"w": torch.tensor([4.0])}, 1: {"w": torch.tensor([8.0])}}, {0: 1, 1: 3})
    history.record_round(1, {"w": torch.tensor([7.0])},
                         {1: {"w": torch.tensor([1.0])}, 2: {"w": torch.tensor([3.0])}}, {1: 3, 2: 2})
    # round 2: n_0 = 2, n_2 = 2 -> weight 1/2
    history.record_round(2, {"w": torch.tensor([9.0])},
                         {0: {"w": torch.tensor([2.0])}, 2: {"w": torch.tensor([6.0])}}, {0: 2, 2: 2})
    history.final_state = {"w": torch.tensor([10.0])}
    return history


# ---------------------------------------------------------------- subtraction, by hand


def test_target_contribution_weights_updates_as_fedavg_did() -> None:
    # 1/4 * 4 (round 0) + 1/2 * 2 (round 2) = 2; round 1 is skipped (client 0 absent)
    assert torch.allclose(target_contribution(toy_history(), (0,))["w"], torch.tensor([2.0]))
    # client 2: 2/5 * 3 + 1/2 * 6 = 4.2
    assert torch.allclose(target_contribution(toy_history(), (2,))["w"], torch.tensor([4.2]))
    # two clients at once: the sum
    assert torch.allclose(target_contribution(toy_history(), (0, 2))["w"], torch.tensor([6.2]))


def test_subtract_contribution_removes_it_from_the_final_model() -> None:
    history = toy_history()
    assert torch.allclose(subtract_contribution(history.final_state, history, (0,))["w"],
                          torch.tensor([8.0]))


def test_history_with_another_record_every_is_refused() -> None:
    with pytest.raises(HistoryError, match="record_every"):
        target_contribution(toy_history(record_every=2), (0,))


def test_history_with_missing_rounds_is_refused() -> None:
    history = toy_history()
    del history.rounds[1]
    with pytest.raises(HistoryError, match="missing rounds"):
        target_contribution(history, (0,))


def test_client_absent_from_history_is_refused() -> None:
    with pytest.raises(HistoryError, match="never appear"):
        target_contribution(toy_history(), (5,))


# ---------------------------------------------------------------- distillation loss, by hand


def test_distillation_loss_matches_hand_computation() -> None:
    teacher = torch.tensor([[0.0, 0.0]])
    student = torch.tensor([[math.log(3.0), 0.0]])
    # T = 1: p_t = (1/2, 1/2), p_s = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    assert distillation_loss(student, teacher, 1.0).item() == pytest.approx(0.5 * math.log(4 / 3))
    # T = 2: p_s = (sqrt3, 1) / (sqrt3 + 1); loss = 4 * KL
    s = math.sqrt(3.0)
    kl = 0.5 * math.log(0.5 * (s + 1) / s) + 0.5 * math.log(0.5 * (s + 1))
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(4 * kl)
    assert distillation_loss(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_loss_ignores_rows_with_zero_weight() -> None:
    teacher = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    student = torch.tensor([[math.log(3.0), 0.0], [-5.0, 5.0]])
    masked = distillation_loss(student, teacher, 1.0, weights=torch.tensor([1.0, 0.0]))
    assert masked.item() == pytest.approx(0.5 * math.log(4 / 3))
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, 0.0)


def test_split_server_inputs_is_disjoint_and_drops_labels() -> None:
    test = {"x": torch.arange(10.0)[:, None], "y": torch.arange(10)}
    evaluation, unlabeled = split_server_inputs(test, 0.3, seed=0)
    assert set(unlabeled) == {"x"} and len(unlabeled["x"]) == 3 and len(evaluation["y"]) == 7
    together = torch.cat([evaluation["x"], unlabeled["x"]]).flatten().sort().values
    assert torch.equal(together, torch.arange(10.0))


# ---------------------------------------------------------------- on the digits-backdoor scenario


@pytest.fixture(scope="module")
def backdoor():
    """digits-backdoor, seed 0: θ_o with its per-round history, the oracle, both methods."""
    sc = build_scenario("digits-backdoor", seed=0)  # the server holds half the test split, unlabeled
    unlabeled = sc.server_inputs
    run = train_federation(sc.task, sc.clients, dataclasses.replace(sc.config, record_every=1))
    before = history_fingerprint(run.history)
    results = {
        "retrain": run_method(Retrain(), run, sc.request),
        "kd": run_method(KnowledgeDistillationUnlearning(KDConfig(), unlabeled), run, sc.request),
        "kd-subtract-only": run_method(SubtractOnly(), run, sc.request),
    }
    metrics = {name: evaluate(sc, r.state, run.model) for name, r in results.items()}
    metrics["original"] = evaluate(sc, run.final_state, run.model)
    return {"sc": sc, "run": run, "results": results, "metrics": metrics, "before": before,
            "unlabeled": unlabeled}


def test_bad_requests_are_refused(backdoor) -> None:
    run, unlabeled = backdoor["run"], backdoor["unlabeled"]
    with pytest.raises(ForgetRequestError, match="unknown client"):
        run_method(KnowledgeDistillationUnlearning(unlabeled=unlabeled), run, ForgetRequest.forget_clients(42))
    with pytest.raises(ForgetRequestError, match="serves"):
        run_method(SubtractOnly(), run, ForgetRequest.forget_class(3))
    with pytest.raises(ValueError, match="unlabeled"):
        run_method(get_method("kd"), dataclasses.replace(run, server_inputs=None), backdoor["sc"].request)


def test_client_that_never_took_part_is_refused(backdoor) -> None:
    run = backdoor["run"]
    absent = dataclasses.replace(run, history=toy_history())  # its history knows clients 0-2 only
    with pytest.raises(ForgetRequestError, match="never took part"):
        run_method(SubtractOnly(), absent, ForgetRequest.forget_clients(7))


def test_history_recorded_sparsely_is_refused(backdoor) -> None:
    sc = backdoor["sc"]
    sparse = train_federation(sc.task, sc.clients, dataclasses.replace(sc.config, rounds=2, record_every=2))
    with pytest.raises(HistoryError, match="record_every"):
        run_method(SubtractOnly(), sparse, sc.request)


def test_no_client_takes_part_and_history_is_unchanged(backdoor) -> None:
    kd, ablation = backdoor["results"]["kd"], backdoor["results"]["kd-subtract-only"]
    assert kd.cost.client_steps == 0 and kd.cost.bytes_communicated == 0
    assert kd.cost.server_steps > 1 and ablation.cost.server_steps == 1
    assert history_fingerprint(backdoor["run"].history) == backdoor["before"]


def test_reproduced_claim_backdoor_removed_and_accuracy_repaired(backdoor) -> None:
    """ASR like the oracle's (±2 points), test accuracy within 3 points of the oracle's, and
    subtraction alone loses at least 5 points more test accuracy than KD."""
    m = backdoor["metrics"]
    assert m["original"]["asr"] > 0.2  # the scenario is informative: θ_o carries the backdoor
    assert m["kd"]["asr"] <= m["retrain"]["asr"] + 0.02
    assert abs(m["kd"]["test_acc"] - m["retrain"]["test_acc"]) <= 0.03
    assert m["kd-subtract-only"]["asr"] <= m["retrain"]["asr"] + 0.02
    assert m["kd"]["test_acc"] - m["kd-subtract-only"]["test_acc"] >= 0.05


def test_entry_is_declared_with_both_methods() -> None:
    assert ENTRY.slug == "kd-unlearning" and ENTRY.family == "incremental"
    assert set(ENTRY.methods) == {"kd", "kd-subtract-only"}
    assert get_method("kd-subtract-only").record_every == 1
