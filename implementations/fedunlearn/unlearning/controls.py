r"""The referee and the controls of every comparison (see the Evaluating page).

- [`Retrain`][fedunlearn.unlearning.controls.Retrain] — exact unlearning (Cao & Yang, IEEE S&P
  2015, key ``cao2015towards``): the same rounds from the **same initialisation** $w_0$, same
  config and seed, with every client training on what it keeps. Its model $\theta_r$ is the
  referee of every metric.
- [`DoNothing`][fedunlearn.unlearning.controls.DoNothing] — $\theta_o$ unchanged.
- [`ContinueFedAvg`][fedunlearn.unlearning.controls.ContinueFedAvg] — keep training from
  $\theta_o$ for $k$ rounds without the forgotten data: the natural "it will wash out" belief, and
  a negative control (a backdoor typically survives it).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.loop import run_rounds
from fedunlearn.federated.requests import ForgetRequest
from fedunlearn.federated.task import State, clone_state
from fedunlearn.federated.training import LocalPlan
from fedunlearn.unlearning.base import TrainedFederation, UnlearningMethod, register_method

ALL_GRANULARITIES = frozenset({"client", "class", "records"})


@register_method
class Retrain(UnlearningMethod):
    """Retrain from scratch without the forgotten data (the oracle)."""

    name = "retrain"
    workers = frozenset({"remaining"})
    granularities = ALL_GRANULARITIES
    exact = True

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        r"""The original run's rounds from $w_0$, every client training on its retained data."""
        return run_rounds(run.pool, run.init_state, run.config, range(run.config.rounds),
                          plan=LocalPlan("retained", request), counter=counter)


@register_method
class DoNothing(UnlearningMethod):
    r"""Return $\theta_o$ (zero cost)."""

    name = "do-nothing"
    granularities = ALL_GRANULARITIES

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """The trained model, unchanged."""
        return clone_state(run.final_state)


@dataclass(frozen=True)
class ContinueFedAvgConfig:
    """Hyperparameters of the continue-FedAvg control.

    Attributes:
        rounds: Extra rounds $k$ without the forgotten data.
    """

    rounds: int = 5


@register_method
class ContinueFedAvg(UnlearningMethod):
    r"""Continue training from $\theta_o$ for $k$ rounds on the retained data."""

    name = "continue-fedavg"
    workers = frozenset({"remaining"})
    granularities = ALL_GRANULARITIES
    Config = ContinueFedAvgConfig

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """$k$ more rounds (numbered after the original ones) on the retained data."""
        start = run.config.rounds
        return run_rounds(run.pool, run.final_state, run.config, range(start, start + self.config.rounds),
                          plan=LocalPlan("retained", request), counter=counter)
