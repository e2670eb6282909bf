r"""Local training: the one mini-batch loop that clients (and a server that trains) run.

[`local_train`][fedunlearn.federated.training.local_train] takes a start state, tensors, a step
count, an optimiser and an [`Objective`][fedunlearn.federated.objectives.Objective], and returns
the trained state, adding one step per mini-batch to a cost counter. Every training in the package
goes through it: FedAvg rounds, retraining, calibration, gradient ascent, distillation on the
server. [`client_update`][fedunlearn.federated.training.client_update] is the client side of one
round: it selects the client's data named by a [`LocalPlan`][fedunlearn.federated.training.LocalPlan]
(all of it, what a forget request keeps, or what it removes), trains and returns the update
$\Delta^k_t = w^k_{t+1} - w_t$. The in-process pool and the Flower ClientApp both call it.

Randomness is derived, never global: the data order of client $k$ in round $t$ comes from
``(seed, t, k)``, so the same seed gives the same result on CPU and a method that replays round
$t$ of client $k$ sees the same mini-batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from fedunlearn.federated.aggregation import state_difference
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.objectives import Objective, objective_from_dict
from fedunlearn.federated.registry import Registry
from fedunlearn.federated.requests import (
    ForgetRequest,
    forget_mask,
    request_from_dict,
    request_to_dict,
)
from fedunlearn.federated.task import State, Task

OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass(frozen=True)
class FederationConfig:
    r"""Hyperparameters of federated training.

    Attributes:
        rounds: Communication rounds $T$.
        clients_per_round: Clients sampled per round $K$ (0 = every available client).
        local_epochs: Local epochs $E$ per round.
        local_steps: If positive, exactly this many local mini-batch steps instead of epochs.
        batch_size: Local mini-batch size $B$.
        lr: Local learning rate $\eta$.
        momentum: Local SGD momentum (0 = plain SGD as in FedAvg).
        optimizer: A registered local optimiser: ``"sgd"``, ``"adam"`` (state reset every round,
            as FedIT's clients use for LoRA), or one an entry adds.
        seed: Seed of client sampling and data order.
        record_every: The history keeps global states and client updates every this many rounds
            ($\Delta t$; 1 = every round).
        aggregation: Server rule, a name of
            [`AGGREGATORS`][fedunlearn.federated.aggregation.AGGREGATORS].
        trim_fraction: $\beta$ of the ``trimmed-mean`` rule.
    """

    rounds: int = 20
    clients_per_round: int = 0
    local_epochs: float = 1
    local_steps: int = 0
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    optimizer: str = "sgd"
    seed: int = 0
    record_every: int = 1
    aggregation: str = "fedavg"
    trim_fraction: float = 0.1

    def as_dict(self) -> dict:
        """Plain-data view (stored in history manifests, cache keys and results)."""
        return asdict(self)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def minibatch_order(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Index batches covering ``n`` examples, reshuffled each pass, ``steps`` batches in all."""
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        perm = torch.randperm(n, generator=generator)
        batches.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return batches[:steps]


def local_step_count(num_samples: int, config: FederationConfig, local_epochs: float | None = None) -> int:
    """Mini-batch steps of one local training: ``local_steps``, or epochs times batches per epoch."""
    if config.local_steps > 0 and local_epochs is None:
        return config.local_steps
    epochs = config.local_epochs if local_epochs is None else local_epochs
    per_epoch = -(-num_samples // config.batch_size)
    return max(1, int(round(epochs * per_epoch)))


#: Local optimisers by name: ``factory(params, lr=..., momentum=..., **extra)``.
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
OPTIMIZERS.add("sgd", lambda params, lr, momentum=0.0: torch.optim.SGD(params, lr=lr, momentum=momentum))
OPTIMIZERS.add("adam", lambda params, lr, momentum=0.0: torch.optim.Adam(params, lr=lr))


@dataclass(frozen=True)
class LocalPlan:
    """What participants of one round train: which data, with which objective and schedule.

    Everything here is plain data (plus tensors in ``states``), so a plan travels to a Flower
    client ([`to_config`][fedunlearn.federated.training.LocalPlan.to_config]) and means the same there.

    Attributes:
        data: ``"all"`` the client's examples, ``"retained"`` what ``request`` keeps,
            ``"forgotten"`` what it removes.
        request: The forget request that ``data`` refers to (with ``"all"`` it adds a boolean
            ``forget`` column to the examples).
        objective: The loss (default: mean per-example loss).
        local_epochs: Overrides ``FederationConfig.local_epochs`` (and its ``local_steps``).
        local_steps: Overrides ``FederationConfig.local_steps``.
        optimizer: Overrides ``FederationConfig.optimizer``.
        lr: Overrides ``FederationConfig.lr``.
        optimizer_options: Extra keyword arguments of the optimiser factory.
        states: Named states the objective needs (sent with the plan, counted as bytes down).
        trainable: Parameter-name prefixes (``model.named_parameters()`` names) that train; the
            rest of the trainable state stays as sent (an update of exactly zero there). Empty:
            every trainable parameter (FUSED trains adapters on its critical layers only).
    """

    data: str = "all"
    request: ForgetRequest | None = None
    objective: Objective = field(default_factory=Objective)
    local_epochs: float | None = None
    local_steps: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    optimizer_options: tuple[tuple[str, float], ...] = ()
    states: Mapping[str, State] = field(default_factory=dict, compare=False, repr=False)
    trainable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "trainable", tuple(self.trainable))  # a list after a Flower round trip
        if self.data not in ("all", "retained", "forgotten"):
            raise ValueError(f"plan data must be 'all', 'retained' or 'forgotten', got {self.data!r}")
        if self.data != "all" and self.request is None:
            raise ValueError(f"plan data {self.data!r} needs a forget request")
        missing = [name for name in self.objective.needs if name not in self.states]
        if missing:
            raise ValueError(f"objective {self.objective.name!r} needs state(s) {missing} in the plan")

    def select(self, data: ClientData) -> ClientData:
        """The part of ``data`` this plan trains on (may be empty)."""
        if self.request is None:
            return data
        mask = forget_mask(data, self.request)
        if self.data == "retained":
            return data.select(~mask)
        if self.data == "forgotten":
            return data.select(mask)
        return ClientData(data.client_id, {**data.tensors, "forget": mask}, data.record_ids,
                          data.owner_ids, data.class_labels)

    def schedule(self, config: FederationConfig) -> FederationConfig:
        """``config`` with this plan's overrides applied."""
        changes: dict[str, Any] = {}
        if self.local_epochs is not None:
            changes.update(local_epochs=self.local_epochs, local_steps=0)
        if self.local_steps is not None:
            changes["local_steps"] = self.local_steps
        if self.optimizer is not None:
            changes["optimizer"] = self.optimizer
        if self.lr is not None:
            changes["lr"] = self.lr
        return replace(config, **changes)

    def to_config(self) -> dict:
        """Scalars and lists describing the plan (``states`` travel separately)."""
        out: dict[str, Any] = {"data": self.data}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("data", "states", "request", "objective", "optimizer_options") or value is None:
                continue
            if f.name == "trainable":
                if value:
                    out[f.name] = list(value)
                continue
            out[f.name] = value
        if self.request is not None:
            out.update({f"request.{k}": v for k, v in request_to_dict(self.request).items()})
        out.update({f"objective.{k}": v for k, v in self.objective.to_dict().items()})
        out.update({f"optimizer_options.{k}": v for k, v in self.optimizer_options})
        return out

    @classmethod
    def from_config(cls, values: Mapping[str, Any], states: Mapping[str, State] | None = None) -> LocalPlan:
        """Inverse of [`to_config`][fedunlearn.federated.training.LocalPlan.to_config]."""
        groups: dict[str, dict] = {"request": {}, "objective": {}, "optimizer_options": {}}
        plain = {}
        for key, value in values.items():
            head, _, rest = key.partition(".")
            if rest and head in groups:
                groups[head][rest] = value
            else:
                plain[key] = value
        return cls(**plain, request=request_from_dict(groups["request"]) if groups["request"] else None,
                   objective=objective_from_dict(groups["objective"]) if groups["objective"] else Objective(),
                   optimizer_options=tuple(sorted(groups["optimizer_options"].items())),
                   states=dict(states or {}))


def trained_parameters(model: nn.Module, trainable: tuple[str, ...] = ()) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs a local plan trains: every parameter that requires grad, or only
    those named by a prefix of ``trainable`` (the name itself or a dotted sub-name of it)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad
            and (not trainable or any(name == t or name.startswith(t + ".") for t in trainable))]


def local_train(task: Task, model: nn.Module, start_state: Mapping[str, torch.Tensor],
                tensors: Mapping[str, torch.Tensor], config: FederationConfig, steps: int, seed: int,
                counter: CostCounter, *, objective: Objective | None = None,
                states: Mapping[str, State] | None = None, optimizer_options: Mapping[str, float] | None = None,
                step_kind: str = "client_steps", trainable: tuple[str, ...] = ()) -> State:
    """Train ``model`` from ``start_state`` for ``steps`` mini-batches of ``tensors``.

    Args:
        task: The task (trainable state, loss, device).
        model: A model instance, trained in place.
        start_state: Trainable state to start from.
        tensors: Examples (every tensor has the same first dimension).
        config: Batch size, learning rate, momentum and the optimiser's name.
        steps: Mini-batch steps.
        seed: Seed of the mini-batch order.
        counter: Receives one ``step_kind`` per step (``client_steps`` or ``server_steps``).
        objective: The loss (default: mean per-example loss).
        states: Named states the objective needs.
        optimizer_options: Extra keyword arguments of the optimiser factory.
        step_kind: Which counter field a step adds to.
        trainable: Parameter-name prefixes that train (empty: all; see ``LocalPlan.trainable``).

    Returns:
        The trained state.
    """
    objective = objective if objective is not None else Objective()
    states = dict(states or {})
    n = len(next(iter(tensors.values())))
    columns = {**tensors, **objective.prepare(task, model, dict(tensors), states)}
    task.set_state(model, start_state)
    model.train()
    params = [p for _, p in trained_parameters(model, trainable)]
    if not params:
        raise ValueError(f"no trainable parameter matches {list(trainable)}")
    optimizer = OPTIMIZERS.get(config.optimizer)(params, lr=config.lr, momentum=config.momentum,
                                                 **dict(optimizer_options or {}))
    generator = torch.Generator().manual_seed(seed)
    device = getattr(task, "device", "cpu")
    for index in minibatch_order(n, config.batch_size, steps, generator):
        batch = {k: v[index].to(device) for k, v in columns.items()}
        optimizer.zero_grad(set_to_none=True)
        objective.loss(task, model, batch).backward()
        optimizer.step()
        objective.after_step(task, model, states)
        setattr(counter, step_kind, getattr(counter, step_kind) + 1)
    return task.get_state(model)


def client_update(task: Task, model: nn.Module, global_state: Mapping[str, torch.Tensor], data: ClientData,
                  config: FederationConfig, round_index: int, plan: LocalPlan, counter: CostCounter
                  ) -> tuple[State, int]:
    r"""Client side of one round: train the plan's part of ``data`` from ``global_state``.

    Returns:
        The update $\Delta^k_t = w^k_{t+1} - w_t$ and the number of examples trained on (the
        client's aggregation weight).

    Raises:
        ValueError: If the plan leaves the client no example.
    """
    selected = plan.select(data)
    if selected.num_samples == 0:
        raise ValueError(f"client {data.client_id} has no example to train on in round {round_index} "
                         f"(plan data {plan.data!r})")
    schedule = plan.schedule(config)
    steps = local_step_count(selected.num_samples, schedule)
    seed = derived_seed(config.seed, round_index, data.client_id)
    trained = local_train(task, model, global_state, selected.tensors, schedule, steps, seed, counter,
                          objective=plan.objective, states=plan.states,
                          optimizer_options=dict(plan.optimizer_options), trainable=plan.trainable)
    return state_difference(trained, global_state), selected.num_samples
