"""Federated unlearning with knowledge distillation: subtraction, distillation loss and one
distillation step by hand, bad inputs on a tiny federation, and the reproduced claim on
``digits-backdoor`` against the retrain oracle of the same seed.

The claim tests (``slow``) run the comparison engine at smoke size (seed 0, the scenario's 20
rounds, the method's default config, server data = half of the digits test split, evaluation on
the other half; federation and oracles from the shared cache) and assert what reproduces: zero
client steps and bytes; ASR and test accuracy of ``kd`` in the retrain band of θ_r (θ_o's ASR
outside it); ``kd``'s test accuracy at least ``REPAIR_MIN_GAIN`` above the subtraction alone's.
Each claim test also applies its check to a named control and asserts that it fails there.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from fedunlearn import catalog
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import HistoryError, TrainingHistory
from fedunlearn.federated.objectives import distillation_loss
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.task import ClassificationTask
from fedunlearn.federated.training import FederationConfig
from fedunlearn.incremental.kd_unlearning import (
    ENTRY,
    REPAIR_MIN_GAIN,
    KDConfig,
    KnowledgeDistillationUnlearning,
    SubtractOnly,
    distill,
    subtract_contribution,
    target_contribution,
)
from fedunlearn.unlearning.base import (
    TrainedFederation,
    history_fingerprint,
    run_method,
    train_federation,
)
from fedunlearn.unlearning.compare import BACKDOOR_MARGIN, Comparison, compare
from fedunlearn.unlearning.registry import get_method
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


# ---------------------------------------------------------------- distillation, by hand


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


def _linear_federation(teacher: dict[str, torch.Tensor]) -> TrainedFederation:
    """A federation whose θ_o is ``teacher``: logits z = W x of a bias-free 1 -> 2 linear layer."""
    task = ClassificationTask(lambda: nn.Linear(1, 2, bias=False))
    model = task.build_model()
    return TrainedFederation(task, InProcessPool(task, {}, model), FederationConfig(), teacher, teacher,
                             TrainingHistory(teacher), CostCounter(), model)


def test_one_distillation_step_matches_hand_computation() -> None:
    # Teacher W_t = [ln 3, 0]^T, student W_s = 0, one input x = 1, T = 1, plain SGD lr 0.4.
    # p_t = (3/4, 1/4), p_s = (1/2, 1/2); d(T^2 KL)/dz_s = T (p_s - p_t) = (-1/4, 1/4) = dL/dW (x = 1)
    # W_1 = 0 - 0.4 * (-1/4, 1/4) = (0.1, -0.1); one server step, no client step.
    run = _linear_federation({"weight": torch.tensor([[math.log(3.0)], [0.0]])})
    config = KDConfig(temperature=1.0, epochs=1, batch_size=1, lr=0.4, momentum=0.0)
    counter = CostCounter()
    student = distill(run, {"weight": torch.zeros(2, 1)}, {"x": torch.ones(1, 1)}, config, counter)
    assert torch.allclose(student["weight"], torch.tensor([[0.1], [-0.1]]), atol=1e-6)
    assert counter.server_steps == 1 and counter.client_steps == 0


def test_distilling_the_teacher_into_itself_changes_nothing() -> None:
    # The KL gradient vanishes where student = teacher: 3 epochs x ceil(10 / 4) = 9 steps, no move.
    teacher = {"weight": torch.tensor([[1.5], [-0.5]])}
    counter = CostCounter()
    student = distill(_linear_federation(teacher), teacher, {"x": torch.linspace(-1, 1, 10)[:, None]},
                      KDConfig(epochs=3, batch_size=4), counter)
    assert torch.allclose(student["weight"], teacher["weight"], atol=1e-7)
    assert counter.server_steps == 9


def test_split_server_inputs_is_disjoint_and_drops_labels() -> None:
    test = {"x": torch.arange(10.0)[:, None], "y": torch.arange(10)}
    evaluation, unlabeled = split_server_inputs(test, 0.3, seed=0)
    assert set(unlabeled) == {"x"} and len(unlabeled["x"]) == 3 and len(evaluation["y"]) == 7
    together = torch.cat([evaluation["x"], unlabeled["x"]]).flatten().sort().values
    assert torch.equal(together, torch.arange(10.0))


# ---------------------------------------------------------------- tiny federation, bad inputs


@pytest.fixture(scope="module")
def tiny():
    """Clients 0-2 of digits-backdoor, 24 examples each, 3 rounds (every client every round), and
    20 of the scenario's unlabeled server inputs."""
    scenario = build_scenario("digits-backdoor", seed=0)
    clients = {c: d.select(torch.arange(d.num_samples) < 24) for c, d in scenario.clients.items() if c < 3}
    config = FederationConfig(rounds=3, batch_size=8, lr=0.1, seed=0)
    pool = InProcessPool(scenario.task, clients)
    run = train_federation(scenario.task, pool, config, server_inputs={"x": scenario.server_inputs["x"][:20]})
    return scenario.task, pool, run


def test_kd_runs_on_the_server_only_and_leaves_the_history_alone(tiny) -> None:
    _, _, run = tiny
    before = history_fingerprint(run.history)
    kd = run_method(KnowledgeDistillationUnlearning(KDConfig(epochs=2, batch_size=8)), run,
                    ForgetRequest.forget_clients(0))
    ablation = run_method(SubtractOnly(), run, ForgetRequest.forget_clients(0))
    assert kd.cost.client_steps == 0 and kd.cost.bytes_communicated == 0 and kd.cost.client_rounds == 0
    assert kd.cost.server_steps == 1 + 2 * 3  # the subtraction + 2 epochs x ceil(20 / 8) mini-batches
    assert ablation.cost.server_steps == 1 and ablation.cost.client_steps == 0
    assert history_fingerprint(run.history) == before
    assert set(kd.state) == set(run.final_state)


def test_bad_requests_are_refused(tiny) -> None:
    _, _, run = tiny
    with pytest.raises(ForgetRequestError, match="unknown client"):
        run_method(get_method("kd"), run, ForgetRequest.forget_clients(42))
    with pytest.raises(ForgetRequestError, match="serves"):
        run_method(SubtractOnly(), run, ForgetRequest.forget_class(3))
    with pytest.raises(ValueError, match="unlabeled"):
        run_method(get_method("kd"), dataclasses.replace(run, server_inputs=None), ForgetRequest.forget_clients(0))


def test_client_that_never_took_part_is_refused(tiny) -> None:
    task, pool, run = tiny
    # One round with 2 of the 3 clients: one client never takes part.
    short = train_federation(task, pool, dataclasses.replace(run.config, rounds=1, clients_per_round=2))
    absent = sorted(set(pool.client_ids()) - short.history.clients)
    assert len(absent) == 1
    with pytest.raises(ForgetRequestError, match="never took part"):
        run_method(SubtractOnly(), short, ForgetRequest.forget_clients(absent[0]))


def test_history_recorded_sparsely_is_refused(tiny) -> None:
    task, pool, run = tiny
    sparse = train_federation(task, pool, dataclasses.replace(run.config, rounds=2, record_every=2))
    with pytest.raises(HistoryError, match="record_every"):
        run_method(SubtractOnly(), sparse, ForgetRequest.forget_clients(0))


def test_entry_is_declared_with_both_methods() -> None:
    assert ENTRY.slug == "kd-unlearning" and ENTRY.family == "incremental"
    assert catalog.get("kd-unlearning").methods == ("kd", "kd-subtract-only")  # derived from the registrations
    assert get_method("kd").history_interval() == 1
    assert get_method("kd-subtract-only").history_interval() == 1
    assert get_method("kd", epochs=3).config == KDConfig(epochs=3)


# ---------------------------------------------------------------- the reproduced claim


@pytest.fixture(scope="module")
def backdoor() -> Comparison:
    """digits-backdoor, seed 0 (cached θ_o, θ_r): kd, its ablation and two controls."""
    return compare("digits-backdoor", ["do-nothing", "continue-fedavg", "kd", "kd-subtract-only"], seeds=(0,),
                   progress=False)


def no_client_takes_part(comparison: Comparison, label: str) -> bool:
    """No client step and no byte exchanged, at every seed."""
    costs = [row["methods"][label]["cost"] for row in comparison.per_seed]
    return all(c["client_steps"] == 0 and c["bytes_communicated"] == 0 for c in costs)


def backdoor_removed_and_accuracy_repaired(comparison: Comparison, label: str) -> bool:
    """ASR and test accuracy in the retrain band, and test accuracy at least REPAIR_MIN_GAIN above
    the subtraction alone."""
    gain = comparison.gap(label, "test_acc") - comparison.gap("kd-subtract-only", "test_acc")
    return (comparison.equivalent(label, "asr") and comparison.equivalent(label, "test_acc")
            and gain >= REPAIR_MIN_GAIN)


@pytest.mark.slow
def test_reproduced_claim_no_client_takes_part(backdoor: Comparison) -> None:
    """Zero client steps and bytes for ``kd`` (server steps: the subtraction and the distillation;
    the ablation: the subtraction only). Fails under the control ``continue-fedavg`` (its clients
    train), as asserted."""
    assert no_client_takes_part(backdoor, "kd")
    steps = {label: backdoor.per_seed[0]["methods"][label]["cost"]["server_steps"]
             for label in ("kd", "kd-subtract-only")}
    assert steps["kd"] > 1 and steps["kd-subtract-only"] == 1
    assert not no_client_takes_part(backdoor, "continue-fedavg")


@pytest.mark.slow
def test_reproduced_claim_backdoor_removed_and_accuracy_repaired(backdoor: Comparison) -> None:
    """θ_o carries the backdoor (its ASR is outside the retrain band and more than BACKDOOR_MARGIN
    above θ_r's); ``kd``'s ASR and test accuracy are in the band (measured: ASR 0 like θ_r, test
    accuracy −0.9 points), the subtraction alone removes the backdoor too, and ``kd`` beats it by
    at least REPAIR_MIN_GAIN in test accuracy (measured: +14.7 points). Fails under do-nothing
    (ASR) and under the ablation ``kd-subtract-only`` (test accuracy −15.6 points, no gain), as
    asserted."""
    assert backdoor.informative("asr")
    assert backdoor.value("original", "asr") > backdoor.value("retrain", "asr") + BACKDOOR_MARGIN
    assert backdoor.equivalent("kd-subtract-only", "asr")
    assert backdoor_removed_and_accuracy_repaired(backdoor, "kd")
    for control in ("do-nothing", "kd-subtract-only"):
        assert not backdoor_removed_and_accuracy_repaired(backdoor, control)
