r"""The perturbation family's control: the target's negated update, then recovery rounds.

After Mora, Mazzocca, Montanari & Bellavista, "Federated Unlearning Made Practical: Seamless
Integration via Negated Pseudo-Gradients" (arXiv 2504.05822, 2025; key ``mora2025federated``).
In an unlearning round each client holding forgotten data trains from the global model
$\theta_o$ on that data as in any round, giving its pseudo-gradient $\Delta_k$; the server
applies it **negated** and scaled,

$$ \theta' = \theta_o - \alpha \sum_{k \in F} \frac{n^f_k}{\sum_{j\in F} n^f_j}\,\Delta_k, $$

then runs ordinary FedAvg rounds on the retained data to recover utility. It needs no stored
history, no proxy data and no new client code: a one-round, history-free baseline that every
perturbation entry is compared with (a method that cannot beat it on forgetting or on cost has
no case).

Implemented: the negated, scaled pseudo-gradient of the forgetting clients (local forgetting of
[`forgetting`][fedunlearn.perturbation.forgetting] with $s = -\alpha$) and the recovery rounds.
Not retrieved: the paper's scale $\alpha$ and number of recovery rounds (we use $\alpha = 1$ and
the continue-FedAvg control's 5 rounds, so the two controls differ only in the negated step), and
whether the negated update is aggregated with the other clients' ordinary updates of that round
(here it is applied alone, before recovery).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.requests import ForgetRequest
from fedunlearn.federated.task import State
from fedunlearn.federated.training import LocalPlan
from fedunlearn.perturbation.forgetting import forget_locally, repair_rounds
from fedunlearn.unlearning.base import TrainedFederation, UnlearningMethod, register_method


@dataclass(frozen=True)
class NegatedUpdateConfig:
    r"""Hyperparameters of the negated-update control (not retrieved from the paper).

    Attributes:
        scale: $\alpha > 0$, the factor of the negated pseudo-gradient.
        recovery_rounds: FedAvg rounds on the retained data after the negated step.
    """

    scale: float = 1.0
    recovery_rounds: int = 5

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"negated-update: scale must be positive, got {self.scale}")
        if self.recovery_rounds < 0:
            raise ValueError(f"negated-update: recovery_rounds must be >= 0, got {self.recovery_rounds}")


@register_method
class NegatedUpdate(UnlearningMethod):
    r"""$\theta_o - \alpha\,\overline{\Delta}_F$, then recovery rounds (the family's control)."""

    name = "negated-update"
    workers = frozenset({"target", "remaining"})
    granularities = frozenset({"client", "class", "records"})
    Config = NegatedUpdateConfig

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """One negated local round of the forgetting clients, then ``recovery_rounds`` rounds."""
        negated = forget_locally(run, run.final_state, request, LocalPlan("forgotten", request), counter,
                                 round_index=run.config.rounds, scale=-self.config.scale)
        return repair_rounds(run, negated, request, self.config.recovery_rounds, counter)
