r"""Federated unlearning with knowledge distillation (Wu, Zhu & Mitra, arXiv 2022; ``wu2022federated``).

The server keeps every client's update of every round. To forget client $k$ it subtracts the
target's contributions, weighted as they entered the global model (the paper's "lazy" variant:
client $k$ is treated as having sent a zero update, so the other clients' weights stay as they
were):

$$ \theta_s = \theta_o - \sum_{t:\,k \in S_t} \frac{n_k}{n_{S_t}} \, \Delta^k_t,
\qquad n_{S_t} = \sum_{j \in S_t} n_j. $$

$\theta_s$ lacks the target's updates but also carries a *skew* $\sum_t \epsilon_t$: every later
round was computed from a model that contained them. The server repairs the skew by knowledge
distillation, with the original model $\theta_o$ as teacher and $\theta_s$ as the student's
starting point, on **unlabeled** inputs $x \in U$ it holds itself:

$$ \min_\theta \; \frac{1}{|U|} \sum_{x \in U} T^2 \,
\mathrm{KL}\big(\mathrm{softmax}(z_{\theta_o}(x)/T) \,\big\|\, \mathrm{softmax}(z_\theta(x)/T)\big). $$

No client takes part: the subtraction and every distillation step run on the server and are
counted as ``server_steps`` (``client_steps`` stays 0). Distillation is the package's one local
training loop ([`local_train`][fedunlearn.federated.training.local_train]) run on the server with
the ``distillation`` objective ([`Distillation`][fedunlearn.federated.objectives.Distillation]).

Implemented: the weighted subtraction over the full history (``record_every = 1`` required),
distillation with a temperature-softened KL loss from a $\theta_s$ start, for a classifier
(logits of each input) and for a LoRA language model (next-token distributions at every
attended position of unlabeled text; teacher and student are the adapters on one frozen base
model). Deviations: the paper's temperature, distillation epochs and learning rate are not
sourced here (we use $T = 2$, Hinton et al.'s order of magnitude, and a short SGD schedule chosen
on $\theta_o$/$\theta_s$ only, never on the retrained model); the paper's optional mix with hard
labels when the server holds labeled data is not implemented; the server-side unlabeled data is
ours (see [`Scenario.server_inputs`][fedunlearn.unlearning.scenarios.Scenario] and
the case study), since the paper's outsourced data is not reproducible here; the paper writes the
subtraction with the weight $1/N$ of a plain mean over $N$ clients, we use the FedAvg weight
$n_k/n_{S_t}$ the update entered the model with (equal when clients hold equal data); the
paper's backdoors are source-to-target (e.g. MNIST "1" to "9"), the scenario's is one patch that
sends every class to the target (see the entry page).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fedunlearn.catalog import Entry, ReportedClaim
from fedunlearn.federated.aggregation import apply_update
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import HistoryError, TrainingHistory
from fedunlearn.federated.objectives import Distillation
from fedunlearn.federated.requests import ForgetRequest
from fedunlearn.federated.task import State
from fedunlearn.federated.training import FederationConfig, derived_seed, local_train
from fedunlearn.unlearning.base import TrainedFederation, UnlearningMethod, register_method

Inputs = dict[str, torch.Tensor]

#: Pass criterion of the claim "distillation restores the accuracy lost by the subtraction" (ours:
#: the paper shows figures only): the test accuracy of ``kd`` exceeds that of ``kd-subtract-only``
#: by at least this much (0.05 = 5 accuracy points). Used by the notebook and the tests.
REPAIR_MIN_GAIN = 0.05


@dataclass(frozen=True)
class KDConfig:
    """Hyperparameters of the distillation repair (not sourced from the paper, see module docstring).

    Attributes:
        temperature: Softmax temperature $T$ of teacher and student during distillation.
        epochs: Passes over the server's unlabeled inputs.
        batch_size: Unlabeled inputs per server step.
        lr: Learning rate of the student's optimiser.
        momentum: SGD momentum (``optimizer == "sgd"``).
        optimizer: ``"sgd"`` or ``"adam"`` (Adam suits LoRA adapters).
        seed: Seed of the order of unlabeled inputs.
    """

    temperature: float = 2.0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.5
    optimizer: str = "sgd"
    seed: int = 0


def target_contribution(history: TrainingHistory, clients: tuple[int, ...]) -> State:
    r"""$\sum_t \sum_{k} \frac{n_k}{n_{S_t}} \Delta^k_t$ over the rounds each client $k$ took part in.

    Raises:
        HistoryError: If the history is not recorded every round, or a round lacks an update of a
            participant being forgotten.
    """
    history.require(record_every=1)
    total: State | None = None
    for record in history.rounds:
        n_round = sum(record.sample_counts.values())
        for cid in clients:
            if cid not in record.participants:
                continue
            if cid not in record.client_updates:
                raise HistoryError(f"round {record.round_index}: no stored update of client {cid}")
            update = record.client_updates[cid]
            weight = record.sample_counts[cid] / n_round  # FedAvg weight n_k / n_{S_t}
            total = (apply_update(total, update, weight) if total is not None
                     else {k: weight * v for k, v in update.items()})
    if total is None:
        raise HistoryError(f"clients {list(clients)} never appear in the history")
    return total


def subtract_contribution(final_state: Mapping[str, torch.Tensor], history: TrainingHistory,
                          clients: tuple[int, ...]) -> State:
    r"""$\theta_s = \theta_o - \sum_t \frac{n_k}{n_{S_t}} \Delta^k_t$ (the skewed model)."""
    return apply_update(final_state, target_contribution(history, clients), scale=-1.0)


def distill(run: TrainedFederation, student_start: Mapping[str, torch.Tensor], unlabeled: Inputs,
            config: KDConfig, counter: CostCounter) -> State:
    r"""Train the student from ``student_start`` to match $\theta_o$ on ``unlabeled`` (server only).

    Every optimiser step adds one ``server_steps``.

    Args:
        run: The trained federation ($\theta_o$ = ``run.final_state`` is the teacher).
        student_start: The student's initial state ($\theta_s$).
        unlabeled: The server's unlabeled inputs.
        config: Distillation hyperparameters.
        counter: Receives the server steps.
    """
    n = len(next(iter(unlabeled.values())))
    schedule = FederationConfig(batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
                                optimizer=config.optimizer)
    steps = config.epochs * -(-n // config.batch_size)
    return local_train(run.task, run.model, student_start, unlabeled, schedule, steps,
                       derived_seed(config.seed, 0x4B44), counter, objective=Distillation(config.temperature),
                       states={"teacher": run.final_state}, step_kind="server_steps")


@register_method
class KnowledgeDistillationUnlearning(UnlearningMethod):
    r"""Subtract the target's historical updates, then distill $\theta_o$ into the result on the
    server's unlabeled inputs ([`Scenario.server_inputs`][fedunlearn.unlearning.scenarios.Scenario])."""

    name = "kd"
    workers = frozenset({"server"})
    granularities = frozenset({"client"})
    Config = KDConfig
    sequential_start = "original"  # subtracts from, and distils, θ_o: a later request is cumulative

    def history_interval(self) -> int:
        """Every round's client updates are subtracted."""
        return 1

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """Subtraction (one server step) followed by distillation on the server's data.

        Raises:
            ValueError: If the federation has no server-side unlabeled inputs.
        """
        if not run.server_inputs:
            raise ValueError("kd needs server-side unlabeled inputs: the federation has none "
                             "(scenarios provide them as Scenario.server_inputs)")
        unlabeled = {k: v for k, v in run.server_inputs.items() if k in ("x", "input_ids", "attention_mask")}
        skewed = subtract_contribution(run.final_state, run.history, request.clients)
        counter.server_steps += 1
        return distill(run, skewed, unlabeled, self.config, counter)


@register_method
class SubtractOnly(UnlearningMethod):
    """Ablation: subtract the target's weighted historical updates, no repair."""

    name = "kd-subtract-only"
    workers = frozenset({"server"})
    granularities = frozenset({"client"})
    sequential_start = "original"

    def history_interval(self) -> int:
        """Every round's client updates are subtracted."""
        return 1

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        r"""$\theta_s$ (one server step: the subtraction)."""
        counter.server_steps += 1
        return subtract_contribution(run.final_state, run.history, request.clients)


ENTRY = Entry(
    slug="kd-unlearning",
    family="incremental",
    title="Federated unlearning with knowledge distillation",
    citation_keys=("wu2022federated",),
    summary="Subtract the client's stored updates from the model, then repair it by distilling the "
    "original model on server-side unlabeled data; no client takes part.",
    claims=(
        ReportedClaim(
            claim="Removes a client's contribution on the server alone: no client data, no client "
            "participation",
            reported="qualitative (\"does not rely on clients' participation\")",
            where="Abstract",
        ),
        ReportedClaim(
            claim="A backdoor planted by the forgotten client is removed, and distillation restores "
            "the accuracy lost by the subtraction",
            reported="figures only (\"Experiments on three canonical datasets demonstrate the "
            "effectiveness and efficiency of our method\")",
            where="Abstract; experiments on MNIST, CIFAR-10, GTSRB",
        ),
    ),
)
