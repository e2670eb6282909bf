r"""Objectives of local training: what a client (or the server) minimises.

Local training ([`local_train`][fedunlearn.federated.training.local_train]) takes its loss from
an [`Objective`][fedunlearn.federated.objectives.Objective]: a frozen dataclass with a registered
``name`` and scalar fields only, so that it can travel to a Flower client as plain config and be
rebuilt there. Tensors an objective needs (a reference model, a teacher) travel beside it as named
*states*. Three hooks:

- ``prepare``: computed once before training, per example, with the states loaded (e.g. the
  reference model's loss for NPO, the teacher's logits for distillation); the columns it returns
  ride along with the mini-batches;
- ``loss``: the scalar to minimise on a mini-batch;
- ``after_step``: a correction after every optimiser step (e.g. a projection).

Built in: ``mean-loss`` (the default: $\frac1B \sum_i \ell_i$), ``ascent``
($-\frac1B\sum_i \ell_i$, gradient ascent on the data), ``projected-ascent`` (ascent, then
projection onto $\{w : \lVert w - w_{\text{ref}} \rVert_2 \le \delta\}$), ``retain-regularised``
(ascent on forgotten rows plus $\lambda$ times descent on retained rows of the same client),
``npo`` (Negative Preference Optimization,
$-\frac{2}{\beta}\,\mathbb E \log \sigma\!\big(-\beta (\ell_{\text{ref}} - \ell_\theta)\big)$ with
$\ell = -\log \pi(y \mid x)$ the example's whole-target negative log-likelihood
([`sequence_nll`][fedunlearn.federated.task.Task.sequence_nll]: summed over an answer's tokens),
i.e. $\log \pi_\theta / \pi_{\text{ref}} = \ell_{\text{ref}} - \ell_\theta$)
and ``distillation`` ($T^2\,\mathrm{KL}(p_T^{\text{teacher}} \Vert p_T^{\theta})$ on the task's
output distributions). An entry adds its own with
[`register_objective`][fedunlearn.federated.objectives.register_objective].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from fedunlearn.federated.registry import Registry
from fedunlearn.federated.task import State, Task

Batch = dict[str, torch.Tensor]
PREPARE_BATCH = 256

#: Objectives by name (entries register theirs with ``register_objective``).
OBJECTIVES: Registry[type[Objective]] = Registry("objective")


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an objective buildable by its ``name`` (also on Flower clients)."""
    OBJECTIVES.add(cls.name, cls)
    return cls


@dataclass(frozen=True)
class Objective:
    """Base objective: the mean per-example loss (subclass and override the hooks)."""

    name: ClassVar[str] = "mean-loss"
    #: Names of the states this objective needs (e.g. ``("reference",)``).
    needs: ClassVar[tuple[str, ...]] = ()

    def prepare(self, task: Task, model: nn.Module, tensors: Batch, states: Mapping[str, State]) -> Batch:
        """Extra per-example columns, computed once before training (default: none)."""
        return {}

    def loss(self, task: Task, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The scalar to minimise on ``batch``."""
        return task.per_example_loss(model, batch).mean()

    def after_step(self, task: Task, model: nn.Module, states: Mapping[str, State]) -> None:
        """Called after every optimiser step (default: nothing)."""

    def to_dict(self) -> dict:
        """``{"name": ..., field: value, ...}`` (scalars only)."""
        return {"name": self.name, **asdict(self)}


register_objective(Objective)
MeanLoss = Objective


def objective_from_dict(values: Mapping) -> Objective:
    """Rebuild an objective from [`Objective.to_dict`][fedunlearn.federated.objectives.Objective.to_dict].

    Raises:
        KeyError: On an unknown objective name or field.
    """
    values = dict(values)
    cls = OBJECTIVES.get(str(values.pop("name")))
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise KeyError(f"objective {cls.name!r} has no field(s) {unknown}; fields: {sorted(known)}")
    return cls(**values)


@torch.no_grad()
def per_example(fn: Callable[[Batch], torch.Tensor], tensors: Batch, device: str = "cpu") -> torch.Tensor:
    """``fn`` over ``tensors`` in chunks moved to ``device``, concatenated on the CPU (no gradients)."""
    n = len(next(iter(tensors.values())))
    return torch.cat([fn({k: v[i : i + PREPARE_BATCH].to(device) for k, v in tensors.items()}).cpu()
                      for i in range(0, n, PREPARE_BATCH)])


def _with_state(task: Task, model: nn.Module, state: State, fn: Callable[[], Batch]) -> Batch:
    task.set_state(model, state)
    model.eval()
    return fn()


@register_objective
@dataclass(frozen=True)
class GradientAscent(Objective):
    """Gradient ascent: maximise the loss on the client's (forgotten) data."""

    name: ClassVar[str] = "ascent"

    def loss(self, task: Task, model: nn.Module, batch: Batch) -> torch.Tensor:
        r"""$-\frac1B \sum_i \ell_i$."""
        return -task.per_example_loss(model, batch).mean()


@register_objective
@dataclass(frozen=True)
class ProjectedAscent(GradientAscent):
    r"""Gradient ascent kept within an L2 ball of radius $\delta$ around state ``reference``.

    Attributes:
        radius: $\delta$.
    """

    name: ClassVar[str] = "projected-ascent"
    needs: ClassVar[tuple[str, ...]] = ("reference",)
    radius: float = 1.0

    def after_step(self, task: Task, model: nn.Module, states: Mapping[str, State]) -> None:
        """Project the trainable state onto the ball (no-op inside it)."""
        reference = states["reference"]
        current = task.get_state(model)
        distance = sum(float((current[k].float() - reference[k].float()).pow(2).sum()) for k in reference) ** 0.5
        if distance > self.radius:
            scale = self.radius / distance
            task.set_state(model, {k: (reference[k] + scale * (current[k] - reference[k])).to(current[k].dtype)
                                   for k in current})


@register_objective
@dataclass(frozen=True)
class RetainRegularisedAscent(Objective):
    r"""Ascent on the client's forgotten rows plus $\lambda$ times descent on its retained rows.

    Needs the ``forget`` column that local training adds when a plan carries a request.

    Attributes:
        retain_weight: $\lambda$.
    """

    name: ClassVar[str] = "retain-regularised"
    retain_weight: float = 1.0

    def loss(self, task: Task, model: nn.Module, batch: Batch) -> torch.Tensor:
        r"""$-\overline{\ell}_{\text{forget}} + \lambda\, \overline{\ell}_{\text{retain}}$."""
        losses, forget = task.per_example_loss(model, batch), batch["forget"]
        zero = losses.sum() * 0
        ascent = -losses[forget].mean() if bool(forget.any()) else zero
        descent = losses[~forget].mean() if bool((~forget).any()) else zero
        return ascent + self.retain_weight * descent


@register_objective
@dataclass(frozen=True)
class NegativePreference(Objective):
    r"""NPO (Zhang et al. 2024) against the frozen state ``reference``.

    Attributes:
        beta: $\beta > 0$; as $\beta \to 0$ the gradient tends to gradient ascent's.
    """

    name: ClassVar[str] = "npo"
    needs: ClassVar[tuple[str, ...]] = ("reference",)
    beta: float = 0.1

    def __post_init__(self) -> None:
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"npo: beta must be positive and finite, got beta={self.beta!r}")

    def prepare(self, task: Task, model: nn.Module, tensors: Batch, states: Mapping[str, State]) -> Batch:
        r"""The reference model's $\ell_{\text{ref}} = -\log \pi_{\text{ref}}(y \mid x)$ of every example."""
        return _with_state(task, model, states["reference"], lambda: {
            "reference_loss": per_example(lambda b: task.sequence_nll(model, b), tensors, task.device)})

    def loss(self, task: Task, model: nn.Module, batch: Batch) -> torch.Tensor:
        r"""$-\frac{2}{\beta}\,\overline{\log\sigma(-\beta(\ell_{\text{ref}} - \ell_\theta))}$."""
        log_ratio = batch["reference_loss"] - task.sequence_nll(model, batch)
        return -(2.0 / self.beta) * F.logsigmoid(-self.beta * log_ratio).mean()


@register_objective
@dataclass(frozen=True)
class Distillation(Objective):
    r"""Match the output distribution of the state ``teacher`` at temperature $T$.

    Attributes:
        temperature: $T > 0$.
    """

    name: ClassVar[str] = "distillation"
    needs: ClassVar[tuple[str, ...]] = ("teacher",)
    temperature: float = 2.0

    def prepare(self, task: Task, model: nn.Module, tensors: Batch, states: Mapping[str, State]) -> Batch:
        """The teacher's logits for every row."""
        return _with_state(task, model, states["teacher"], lambda: {
            "teacher_logits": per_example(lambda b: _logits_per_example(task, model, b), tensors, task.device)})

    def loss(self, task: Task, model: nn.Module, batch: Batch) -> torch.Tensor:
        r"""$T^2\, \mathrm{KL}(\mathrm{softmax}(z_t/T) \Vert \mathrm{softmax}(z_s/T))$, weighted rows."""
        student, weights = task.logits(model, batch)
        teacher = batch["teacher_logits"].reshape(student.shape)
        return distillation_loss(student, teacher, self.temperature, weights)


def _logits_per_example(task: Task, model: nn.Module, batch: Batch) -> torch.Tensor:
    logits, _ = task.logits(model, batch)
    rows = len(next(iter(batch.values())))
    return logits.reshape(rows, -1, logits.shape[-1])


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    r"""$T^2\, \mathrm{KL}(\mathrm{softmax}(z_t/T) \Vert \mathrm{softmax}(z_s/T))$ averaged over rows.

    Args:
        student_logits: ``[rows, classes]``.
        teacher_logits: ``[rows, classes]``.
        temperature: $T > 0$.
        weights: Optional per-row weights (e.g. an attention mask); rows with weight 0 do not count.

    Raises:
        ValueError: If the temperature is not positive.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    per_row = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    if weights is None:
        return temperature**2 * per_row.mean()
    return temperature**2 * (per_row * weights).sum() / weights.sum().clamp_min(1.0)
