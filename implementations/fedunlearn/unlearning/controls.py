"""The referee and the controls of every comparison (see MEASURING.md).

- [`Retrain`][fedunlearn.unlearning.controls.Retrain] — exact unlearning (Cao & Yang, IEEE S&P
  2015, key ``cao2015towards``): FedAvg from the **same initialisation** $w_0$, same config and
  seed, on the retained data only. Its model $\\theta_r$ is the referee of every metric.
- [`DoNothing`][fedunlearn.unlearning.controls.DoNothing] — $\\theta_o$ unchanged.
- [`ContinueFedAvg`][fedunlearn.unlearning.controls.ContinueFedAvg] — keep training from
  $\\theta_o$ for $k$ rounds without the forgotten data: the natural "it will wash out" belief, and
  a negative control (a backdoor typically survives it).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.loop import run_federation
from fedunlearn.federated.task import State, clone_state
from fedunlearn.unlearning.base import TrainedFederation, UnlearningMethod
from fedunlearn.unlearning.requests import ForgetRequest, split_clients

ALL_GRANULARITIES = frozenset({"client", "class", "records"})


class Retrain(UnlearningMethod):
    """Retrain from scratch without the forgotten data (the oracle)."""

    name = "retrain"
    granularities = ALL_GRANULARITIES

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """FedAvg from $w_0$ on the retained data, all rounds of the original run."""
        retained, _ = split_clients(run.clients, request)
        return run_federation(run.task, retained, run.init_state, run.config, model=run.model,
                              counter=counter)


class DoNothing(UnlearningMethod):
    """Return $\\theta_o$ (zero cost)."""

    name = "do-nothing"
    granularities = ALL_GRANULARITIES

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """The trained model, unchanged."""
        return clone_state(run.final_state)


@dataclass(frozen=True)
class ContinueFedAvgConfig:
    """Attributes:
    rounds: Extra FedAvg rounds $k$ without the forgotten data.
    """

    rounds: int = 5


class ContinueFedAvg(UnlearningMethod):
    """Continue FedAvg from $\\theta_o$ for $k$ rounds on the retained data."""

    name = "continue-fedavg"
    granularities = ALL_GRANULARITIES

    def __init__(self, config: ContinueFedAvgConfig = ContinueFedAvgConfig()) -> None:
        self.config = config

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """$k$ more rounds (numbered after the original ones) on the retained data."""
        retained, _ = split_clients(run.clients, request)
        start = run.config.rounds
        return run_federation(run.task, retained, run.init_state, run.config,
                              rounds=range(start, start + self.config.rounds),
                              start_state=run.final_state, model=run.model, counter=counter)
