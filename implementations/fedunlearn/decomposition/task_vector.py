r"""The decomposition family's language-model baseline: task-vector negation.

Ilharco, Ribeiro, Wortsman, Gururangan, Schmidt, Hajishirzi & Farhadi, "Editing Models with Task
Arithmetic" (ICLR 2023, arXiv 2212.04089; key ``ilharco2023editing``): fine-tuning on a task
moves the weights by a *task vector* $\tau = \theta_{ft} - \theta_{pre}$, and subtracting it,
$\theta_{pre} - \lambda\tau$, lowers the model on that task while leaving others mostly alone.
The unlearning form of MUSE's baseline (``shi2025muse``) takes $\theta_o$ as the starting point:
fine-tune it further on the forget data to get a "reinforced" $\theta_{ft}$, then

$$ \theta_u = \theta_o - \alpha\,(\theta_{ft} - \theta_o). $$

Federated on the LoRA adapter: every client holding forgotten data fine-tunes the global adapter
on it for ``epochs`` local epochs (ordinary descent, the federation's optimiser); the server
subtracts $\alpha$ times the sample-weighted mean of their updates. No repair rounds follow.

It belongs beside the decomposition entries as their baseline: the forgotten knowledge is
treated as one separable direction in weight space and removed by arithmetic, with no structure
paid for during training, and nothing guarantees that the direction holds all of it.

Implemented: the reinforcement step and the negation through the perturbation family's local
forgetting step ([`forget_locally`][fedunlearn.perturbation.forgetting.forget_locally] with
$s = -\alpha$); the perturbation family's negated-update control is the same step with one
epoch, $\alpha = 1$ and recovery rounds. Not implemented: choosing $\alpha$ on validation data
(the family page sweeps it and reports every value).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.requests import ForgetRequest
from fedunlearn.federated.task import State
from fedunlearn.federated.training import LocalPlan
from fedunlearn.perturbation.forgetting import forget_locally
from fedunlearn.unlearning.base import TrainedFederation, UnlearningMethod, register_method

#: The sweep of $\alpha$ the family page shows (MUSE's default is 1).
ALPHA_GRID = (0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class TaskVectorConfig:
    r"""Task-vector negation's settings (MUSE's baseline defaults).

    Attributes:
        alpha: $\alpha > 0$, the factor of the subtracted task vector (MUSE: 1.0).
        epochs: Local epochs of the reinforcement fine-tune on the forget data (MUSE: 5).
        lr: Learning rate of that fine-tune (``None``: the federation's; MUSE's $10^{-5}$ is for
            a 7B model).
    """

    alpha: float = 1.0
    epochs: float = 5.0
    lr: float | None = None

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@register_method
class TaskVectorNegation(UnlearningMethod):
    r"""$\theta_o - \alpha(\theta_{ft} - \theta_o)$, with $\theta_{ft}$ fine-tuned on the forget data."""

    name = "task-vector-negation"
    workers = frozenset({"target"})
    granularities = frozenset({"client", "records"})
    scenario_kinds = frozenset({"language"})
    Config = TaskVectorConfig

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """Reinforce on the forgotten data (the holding clients), then subtract α times the step."""
        plan = LocalPlan("forgotten", request, local_epochs=self.config.epochs, lr=self.config.lr)
        return forget_locally(run, run.final_state, request, plan, counter, round_index=run.config.rounds,
                              scale=-self.config.alpha)
