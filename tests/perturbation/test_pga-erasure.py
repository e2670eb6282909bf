"""Projected-gradient-ascent client erasure: the reference model, the radius rule, the projection
and one projected step by hand, the accuracy measure, the early stop through the client seam, bad
inputs, and the reproduced claims on ``digits-backdoor`` against the retrain oracle of the same seed.

The claim tests (``slow``) run the comparison engine at smoke size (seed 0, the scenario's 20
rounds, default config; federation and oracles from the shared cache). Each applies its check to a
named control and asserts that it fails there.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from fedunlearn import catalog
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.measures import client_measure
from fedunlearn.federated.objectives import ProjectedAscent
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.task import ClassificationTask
from fedunlearn.federated.training import FederationConfig, local_train
from fedunlearn.perturbation.pga_erasure import (
    ENTRY,
    MEASURE,
    PGAConfig,
    PGAErasure,
    RetrainRounds,
    accuracy_sums,
    ascend,
    damages_retained,
    erased_with_dip,
    notebook_radius,
    reference_model,
    repaired_in_one_round,
)
from fedunlearn.unlearning.base import history_fingerprint, run_method, train_federation
from fedunlearn.unlearning.compare import Comparison, compare
from fedunlearn.unlearning.registry import MethodSettingError, get_method
from fedunlearn.unlearning.scenarios import build_scenario

# ---------------------------------------------------------------- reference model, by hand

LAST = {"w": torch.tensor([1.0, 1.0])}
UPDATES = {0: {"w": torch.tensor([2.0, 0.0])}, 1: {"w": torch.tensor([0.0, 4.0])}, 2: {"w": torch.tensor([4.0, 4.0])}}
COUNTS = {0: 1, 1: 1, 2: 2}
# FedAvg: w^T = [1, 1] + (1 [2, 0] + 1 [0, 4] + 2 [4, 4]) / 4 = [3.5, 4]
FINAL = {"w": torch.tensor([3.5, 4.0])}


def test_reference_is_the_weighted_mean_of_the_other_clients_last_models() -> None:
    # w_1 = [1, 5], w_2 = [5, 5]: (1 [1, 5] + 2 [5, 5]) / 3 = [11/3, 5] = (4 [3.5, 4] - 1 [3, 1]) / 3
    assert torch.allclose(reference_model(FINAL, LAST, UPDATES, COUNTS, (0,))["w"], torch.tensor([11 / 3, 5.0]))
    # two targets: only w_2 remains
    assert torch.allclose(reference_model(FINAL, LAST, UPDATES, COUNTS, (0, 1))["w"], torch.tensor([5.0, 5.0]))


def test_reference_with_equal_counts_is_the_papers_formula() -> None:
    counts = {0: 3, 1: 3, 2: 3}
    final = {"w": LAST["w"] + sum(u["w"] for u in UPDATES.values()) / 3}  # [3, 3.667]
    own = LAST["w"] + UPDATES[2]["w"]
    expected = (3 * final["w"] - own) / 2  # (N w^T - w_i^{T-1}) / (N - 1)
    assert torch.allclose(reference_model(final, LAST, UPDATES, counts, (2,))["w"], expected)
    assert torch.allclose(expected, torch.tensor([2.0, 3.0]))  # mean of [3, 1] and [1, 5]


def test_reference_without_the_target_in_the_last_round_is_the_final_model() -> None:
    assert torch.allclose(reference_model(FINAL, LAST, UPDATES, COUNTS, (7,))["w"], FINAL["w"])


def test_reference_needs_another_client_in_the_last_round() -> None:
    with pytest.raises(ForgetRequestError, match="only ones"):
        reference_model(FINAL, LAST, UPDATES, COUNTS, (0, 1, 2))


class ConstantTask(ClassificationTask):
    """Every fresh model has weight [3] (whatever its init seed)."""

    def __init__(self) -> None:
        super().__init__(lambda: nn.Linear(1, 1, bias=False))

    def build_model(self) -> nn.Module:
        model = super().build_model()
        with torch.no_grad():
            model.weight.fill_(3.0)
        return model


def test_notebook_radius_is_the_root_of_the_mean_squared_distance_over_the_divisor() -> None:
    # every fresh model is at squared distance 9 from w_ref = 0: delta = sqrt(9 / 3)
    assert notebook_radius(ConstantTask(), {"weight": torch.zeros(1, 1)}, 4, 3.0, seed=0) == pytest.approx(math.sqrt(3))
    assert notebook_radius(ConstantTask(), {"weight": torch.zeros(1, 1)}, 2, 1.0, seed=0) == pytest.approx(3.0)


# ---------------------------------------------------------------- projection and one step, by hand


def linear() -> tuple[ClassificationTask, nn.Module]:
    task = ClassificationTask(lambda: nn.Linear(1, 2, bias=False))
    return task, task.build_model()


def test_projection_scales_back_onto_the_ball_and_leaves_the_inside_alone() -> None:
    task, model = linear()
    reference = {"weight": torch.tensor([[1.0], [1.0]])}
    task.set_state(model, {"weight": torch.tensor([[4.0], [5.0]])})  # 5 from the reference
    ProjectedAscent(radius=2.5).after_step(task, model, {"reference": reference})
    assert torch.allclose(task.get_state(model)["weight"], torch.tensor([[2.5], [3.0]]))  # 1 + (3, 4) / 2
    ProjectedAscent(radius=2.5).after_step(task, model, {"reference": reference})
    assert torch.allclose(task.get_state(model)["weight"], torch.tensor([[2.5], [3.0]]))


def test_one_projected_ascent_step_matches_hand_computation() -> None:
    # W = 0, x = 1, y = 0: p = (1/2, 1/2), dCE/dW = p - e_0 = (-1/2, 1/2). Ascent, lr 4: W = (-2, 2),
    # at distance 2 sqrt 2 from the reference 0; projected onto radius 1: (-1, 1) / sqrt 2.
    task, model = linear()
    zero = {"weight": torch.zeros(2, 1)}
    config = FederationConfig(batch_size=1, lr=4.0, momentum=0.0)
    data = {"x": torch.ones(1, 1), "y": torch.zeros(1, dtype=torch.long)}
    counter = CostCounter()
    state = local_train(task, model, zero, data, config, 1, 0, counter, objective=ProjectedAscent(radius=1.0),
                        states={"reference": zero})
    assert torch.allclose(state["weight"], torch.tensor([[-1.0], [1.0]]) / math.sqrt(2))
    assert counter.client_steps == 1


def test_accuracy_measure_counts_correct_classes_and_answer_tokens() -> None:
    task, model = linear()
    task.set_state(model, {"weight": torch.tensor([[1.0], [-1.0]])})  # class 0 for x > 0, 1 for x < 0
    batch = {"x": torch.tensor([[1.0], [-1.0], [2.0]]), "y": torch.tensor([0, 0, 0])}
    assert float(accuracy_sums(task, model, {}, batch)["correct"]) == 2.0

    class FixedLM(nn.Module):
        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(1, 4, 8)
            logits[0, 1, 5] = logits[0, 2, 7] = 1.0  # predicts 5 then 7 for the answer [5, 6]
            return type("Out", (), {"logits": logits})()

    lm_batch = {"input_ids": torch.tensor([[1, 2, 5, 6]]), "attention_mask": torch.ones(1, 4),
                "labels": torch.tensor([[-100, -100, 5, 6]])}
    assert float(accuracy_sums(task, FixedLM(), {}, lm_batch)["correct"]) == 0.5


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("radius", [0.0, -1.0, float("nan")])
def test_non_positive_radius_is_refused(radius: float) -> None:
    with pytest.raises(ValueError, match=f"radius={radius!r}"):
        PGAConfig(radius=radius)
    with pytest.raises((ValueError, MethodSettingError), match="radius="):
        get_method("pga-erasure", radius=radius)
    assert get_method("pga-erasure", radius="inf").config.radius == math.inf


@pytest.mark.parametrize("field", ["epochs", "lr", "check_every", "random_models", "radius_divisor"])
def test_other_bad_settings_are_refused(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field}=0"):
        PGAConfig(**{field: 0})
    with pytest.raises(ValueError, match="stop_ratio=1.5"):
        PGAConfig(stop_ratio=1.5)


# ---------------------------------------------------------------- a tiny federation


class CountingPool(InProcessPool):
    """An in-process pool that counts the measure requests it serves."""

    measured: list[tuple[tuple[int, ...], str]]

    def _measure(self, state, participants, plan, measure):
        self.measured.append((tuple(participants), measure))
        return {cid: client_measure(self.task, self.model, state, plan.select(self.clients[cid]), measure)
                for cid in participants}


@pytest.fixture(scope="module")
def tiny():
    """Clients 0-2 of digits-backdoor, 24 examples each, 3 rounds (every client every round)."""
    scenario = build_scenario("digits-backdoor", seed=0)
    clients = {c: d.select(torch.arange(d.num_samples) < 24) for c, d in scenario.clients.items() if c < 3}
    pool = CountingPool(scenario.task, clients)
    pool.measured = []
    run = train_federation(scenario.task, pool, FederationConfig(rounds=3, batch_size=8, lr=0.1, seed=0))
    return scenario.task, pool, run


def test_ascent_runs_its_budget_without_early_stop_and_asks_clients_to_validate(tiny) -> None:
    _, pool, run = tiny
    request = ForgetRequest.forget_clients(0)
    reference = PGAErasure().reference(run, request)
    pool.measured.clear()
    config = PGAConfig(stop_ratio=0.0, epochs=2, check_every=2)
    counter = CostCounter()
    _, steps = ascend(run, reference, request, config, 1.0, counter)
    assert steps == 2 * 3 and counter.client_steps == 6  # 2 epochs x ceil(24 / 8)
    assert pool.measured == [((1,), MEASURE)] * 4  # w_ref, then after steps 2, 4, 6; one validator


def test_early_stop_ends_the_ascent_at_the_first_check_below_tau(tiny) -> None:
    _, pool, run = tiny
    request = ForgetRequest.forget_clients(0)
    reference = PGAErasure().reference(run, request)
    seen = []
    config = PGAConfig(stop_ratio=1.0, lr=1.0, validators=0)  # stop as soon as accuracy drops at all
    _, steps = ascend(run, reference, request, config, math.inf, CostCounter(),
                      on_check=lambda step, state, acc: seen.append((step, acc)))
    assert steps == seen[-1][0] < 5 * 3
    assert seen[-1][1] < seen[0][1] and all(acc >= seen[0][1] for _, acc in seen[1:-1])


def test_method_leaves_the_history_alone_and_counts_its_work(tiny) -> None:
    _, _, run = tiny
    before = history_fingerprint(run.history)
    result = run_method(PGAErasure(PGAConfig(epochs=1, repair_rounds=1)), run, ForgetRequest.forget_clients(0))
    assert history_fingerprint(run.history) == before
    assert set(result.state) == set(run.final_state)
    assert result.cost.client_steps >= 1 + 2 * 3  # ascent steps + one repair round of clients 1 and 2
    assert result.cost.bytes_down > 0 and result.cost.server_steps == 1


def test_client_that_never_took_part_is_refused(tiny) -> None:
    task, pool, run = tiny
    short = train_federation(task, pool, dataclasses.replace(run.config, rounds=1, clients_per_round=2))
    absent = sorted(set(pool.client_ids()) - short.history.clients)
    assert len(absent) == 1
    request = ForgetRequest.forget_clients(absent[0])
    with pytest.raises(ForgetRequestError, match="never took part"):
        run_method(PGAErasure(), short, request)
    with pytest.raises(ForgetRequestError, match="never took part"):
        PGAErasure().unlearn(short, request, CostCounter())
    with pytest.raises(ForgetRequestError, match="serves"):
        run_method(PGAErasure(), run, ForgetRequest.forget_class(3))


def test_entry_is_declared() -> None:
    assert ENTRY.slug == "pga-erasure" and ENTRY.family == "perturbation"
    assert catalog.get("pga-erasure").methods == ("pga-erasure",)
    assert get_method("pga-erasure").history_interval() == 1


# ---------------------------------------------------------------- the reproduced claims

AFTER_ASCENT = "pga-erasure[repair_rounds=0]"
UNCONSTRAINED = "pga-erasure[radius=inf,stop_ratio=0.0,repair_rounds=0]"
BALL_OFF_STOP_ON = "pga-erasure[radius=inf,repair_rounds=0]"
UNCONSTRAINED_REPAIRED = "pga-erasure[radius=inf,stop_ratio=0.0]"


@pytest.fixture(scope="module")
def backdoor() -> Comparison:
    """digits-backdoor, seed 0 (cached θ_o, θ_r): the method, its ablations and the controls."""
    inf = float("inf")
    return compare("digits-backdoor", [
        "do-nothing", ("continue-fedavg", {"rounds": 1}), "pga-erasure", ("pga-erasure", {"repair_rounds": 0}),
        ("pga-erasure", {"radius": inf, "repair_rounds": 0}),
        ("pga-erasure", {"radius": inf, "stop_ratio": 0.0, "repair_rounds": 0}),
        ("pga-erasure", {"radius": inf, "stop_ratio": 0.0}), RetrainRounds()], seeds=(0,), progress=False)


@pytest.mark.slow
def test_reproduced_claim_backdoor_gone_right_after_ascent_with_a_dip(backdoor: Comparison) -> None:
    """ASR in the retrain band right after the ascent (measured 0, like θ_r) and test accuracy
    MIN_DIP or more below θ_o's (measured about 29 points). Fails under do-nothing and
    continue-fedavg (ASR 0.59 and 0.57, no dip), as asserted."""
    assert backdoor.informative("asr")
    assert erased_with_dip(backdoor, AFTER_ASCENT)
    for control in ("do-nothing", "continue-fedavg[rounds=1]"):
        assert not erased_with_dip(backdoor, control)


@pytest.mark.slow
def test_reproduced_claim_one_round_repairs_accuracy_cheaply(backdoor: Comparison) -> None:
    """After one repair round test accuracy is above retraining's first round (0.92 vs 0.35) and
    within REPAIR_ACCURACY_GAP of θ_r (+1.3 points), at ρ_steps 0.06. Fails under the ablation
    unconstrained ascent + one round (test accuracy 0.07: the model diverged) and for retraining's
    own first round, as asserted. (do-nothing and continue-fedavg pass this utility check too: it
    says nothing about forgetting; the ASR after the round is in the next test.)"""
    assert repaired_in_one_round(backdoor, "pga-erasure", "retrain-rounds")
    assert not repaired_in_one_round(backdoor, UNCONSTRAINED_REPAIRED, "retrain-rounds")
    assert not repaired_in_one_round(backdoor, "retrain-rounds", "retrain-rounds")


@pytest.mark.slow
def test_backdoor_partly_returns_after_the_repair_round(backdoor: Comparison) -> None:
    """Not the paper's outcome (its backdoor stays at the floor): after one repair round the ASR
    is outside the retrain band (measured 0.16) though far below θ_o's and continue-fedavg's
    (0.59, 0.57)."""
    assert not backdoor.equivalent("pga-erasure", "asr")
    assert backdoor.value("pga-erasure", "asr") < backdoor.value("continue-fedavg[rounds=1]", "asr") - 0.2


@pytest.mark.slow
def test_reproduced_claim_unconstrained_ascent_damages_retained_classes(backdoor: Comparison) -> None:
    """Without ball and early stop the ascent (same budget) leaves retained accuracy at chance
    (0.10 vs 0.58 for the method right after its ascent). The setting under which it fails: δ = ∞
    with the early stop on gives the method's own model (damage 0: the ball never binds before
    the stop), as asserted."""
    assert damages_retained(backdoor, UNCONSTRAINED, AFTER_ASCENT)
    assert not damages_retained(backdoor, BALL_OFF_STOP_ON, AFTER_ASCENT)
