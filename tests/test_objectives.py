"""Objectives of local training: hand-computed losses, the hooks, and rebuilding by name."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.objectives import (
    OBJECTIVES,
    Distillation,
    GradientAscent,
    NegativePreference,
    Objective,
    ProjectedAscent,
    RetainRegularisedAscent,
    distillation_loss,
    objective_from_dict,
    register_objective,
)
from fedunlearn.federated.task import ClassificationTask
from fedunlearn.federated.training import FederationConfig, local_train


@pytest.fixture
def task() -> ClassificationTask:
    return ClassificationTask(lambda: nn.Linear(3, 2), init_seed=0)


def batch(n: int = 6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"x": torch.randn(n, 3, generator=generator), "y": torch.randint(0, 2, (n,), generator=generator)}


def gradient(task, model, objective, data) -> torch.Tensor:
    model.zero_grad()
    objective.loss(task, model, data).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def test_mean_loss_and_ascent_are_opposites(task) -> None:
    model, data = task.build_model(), batch()
    mean = task.per_example_loss(model, data).mean()
    assert Objective().loss(task, model, data).item() == pytest.approx(mean.item())
    assert GradientAscent().loss(task, model, data).item() == pytest.approx(-mean.item())


def test_npo_tends_to_gradient_ascent_as_beta_goes_to_zero(task) -> None:
    """d NPO / d l_theta = -2 sigma(beta (l_ref - l_theta)) -> -1 as beta -> 0: ascent's gradient."""
    model, data = task.build_model(), batch()
    start = task.get_state(model)
    generator = torch.Generator().manual_seed(2)
    reference = {k: v + torch.randn(v.shape, generator=generator) for k, v in start.items()}
    npo = NegativePreference(beta=1e-4)
    columns = {**data, **npo.prepare(task, model, data, {"reference": reference})}
    task.set_state(model, start)
    ascent = gradient(task, model, GradientAscent(), data)
    assert torch.allclose(gradient(task, model, npo, columns), ascent, atol=1e-4)
    # a large beta weighs examples unevenly: no longer ascent's gradient
    far = NegativePreference(beta=5.0)
    columns = {**data, **far.prepare(task, model, data, {"reference": reference})}
    task.set_state(model, start)
    assert not torch.allclose(gradient(task, model, far, columns), ascent, atol=1e-3)


def test_npo_value_by_hand(task) -> None:
    model, data = task.build_model(), batch(2)
    losses = task.per_example_loss(model, data).detach()
    columns = {**data, "reference_loss": losses + torch.tensor([0.5, -0.5])}
    value = NegativePreference(beta=2.0).loss(task, model, columns).item()
    # -(2/beta) mean log sigmoid(-beta * (l_ref - l)) with l_ref - l = +-0.5
    expected = -(2 / 2.0) * (math.log(1 / (1 + math.exp(1.0))) + math.log(1 / (1 + math.exp(-1.0)))) / 2
    assert value == pytest.approx(expected, rel=1e-5)


def test_projected_ascent_stays_within_the_ball(task) -> None:
    model = task.build_model()
    start = task.get_state(model)
    config = FederationConfig(batch_size=3, lr=0.5)
    projected = local_train(task, model, start, batch(), config, 20, 0, CostCounter(),
                            objective=ProjectedAscent(radius=0.25), states={"reference": start})
    free = local_train(task, model, start, batch(), config, 20, 0, CostCounter(), objective=GradientAscent())

    def distance(state):
        return sum(float((state[k] - start[k]).pow(2).sum()) for k in start) ** 0.5

    assert distance(projected) == pytest.approx(0.25, rel=1e-4)
    assert distance(free) > 1.0  # unconstrained ascent runs away


def test_retain_regularised_ascent_by_hand(task) -> None:
    model, data = task.build_model(), batch(4)
    losses = task.per_example_loss(model, data).detach()
    forget = torch.tensor([True, False, True, False])
    value = RetainRegularisedAscent(retain_weight=0.5).loss(task, model, {**data, "forget": forget}).item()
    assert value == pytest.approx(float(-losses[forget].mean() + 0.5 * losses[~forget].mean()), rel=1e-5)


def test_distillation_loss_by_hand_and_zero_at_the_teacher() -> None:
    teacher = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    student = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    p = torch.softmax(teacher / 2.0, dim=-1)
    kl = (p * (p.log() - torch.log_softmax(student / 2.0, dim=-1))).sum(-1).mean()
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(4.0 * kl.item(), rel=1e-6)
    assert distillation_loss(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    weighted = distillation_loss(student, teacher, 2.0, torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(4.0 * (p[0] * (p[0].log() - math.log(0.5))).sum().item(), rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, 0.0)


def test_distillation_pulls_the_student_to_the_teacher(task) -> None:
    model = task.build_model()
    teacher = {k: torch.randn_like(v) for k, v in task.get_state(model).items()}
    start = task.get_state(model)
    inputs = {"x": batch(32)["x"]}
    counter = CostCounter()
    student = local_train(task, model, start, inputs, FederationConfig(batch_size=8, lr=0.5), 60, 0, counter,
                          objective=Distillation(temperature=1.0), states={"teacher": teacher},
                          step_kind="server_steps")
    assert (counter.server_steps, counter.client_steps) == (60, 0)

    def disagreement(state):
        task.set_state(model, state)
        with torch.no_grad():
            out = model(inputs["x"]).argmax(-1)
        task.set_state(model, teacher)
        with torch.no_grad():
            return float((out != model(inputs["x"]).argmax(-1)).float().mean())

    assert disagreement(student) < disagreement(start)


def test_objectives_rebuild_from_plain_data() -> None:
    for objective in (Objective(), GradientAscent(), ProjectedAscent(radius=2.0), NegativePreference(beta=0.3),
                      Distillation(temperature=3.0), RetainRegularisedAscent(retain_weight=0.1)):
        assert objective_from_dict(objective.to_dict()) == objective
    with pytest.raises(KeyError, match="unknown objective 'nope'"):
        objective_from_dict({"name": "nope"})
    with pytest.raises(KeyError, match="no field"):
        objective_from_dict({"name": "npo", "gamma": 1.0})


def test_an_entry_adds_an_objective_in_a_few_lines(task) -> None:
    @register_objective
    @dataclass(frozen=True)
    class Zero(Objective):
        name: ClassVar[str] = "test-zero-loss"

        def loss(self, task, model, batch):
            return task.per_example_loss(model, batch).sum() * 0

    assert OBJECTIVES.get("test-zero-loss") is Zero
    model = task.build_model()
    start = task.get_state(model)
    after = local_train(task, model, start, batch(), FederationConfig(batch_size=2), 3, 0, CostCounter(),
                        objective=objective_from_dict({"name": "test-zero-loss"}))
    assert all(torch.equal(after[k], start[k]) for k in start)
