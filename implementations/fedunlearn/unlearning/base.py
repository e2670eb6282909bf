r"""The common interface of unlearning methods, and the trained federation they start from.

A method is a small class, declared **once** with the
[`register_method`][fedunlearn.unlearning.base.register_method] decorator: its ``name``, the
request ``granularities`` it serves, its frozen ``Config`` dataclass (the paper's defaults) and,
through [`history_interval`][fedunlearn.unlearning.base.UnlearningMethod.history_interval], the
training history it needs. The catalog derives an entry's method list from the registrations in
its module; [`get_method`][fedunlearn.unlearning.registry.get_method] builds any of them with
config overrides.

[`unlearn`][fedunlearn.unlearning.base.UnlearningMethod.unlearn] receives the
[`TrainedFederation`][fedunlearn.unlearning.base.TrainedFederation] (its client pool, config,
initial and final state, history), the request and a
[`CostCounter`][fedunlearn.federated.costs.CostCounter]. It trains only through the pool and the
round loop, and reads no client data itself, so its cost is measured, not estimated, and it runs
unchanged on any engine. [`run_method`][fedunlearn.unlearning.base.run_method] validates the
request, runs the method, times it and checks that the stored history was not modified.

A method may also own how the federation is trained (decomposition methods shard, cluster or add
per-client parts): it overrides
[`train_federation`][fedunlearn.unlearning.base.UnlearningMethod.train_federation], and the
comparison engine trains, caches and evaluates that phase like the standard one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import TrainingHistory
from fedunlearn.federated.loop import run_rounds
from fedunlearn.federated.pool import ClientPool
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.task import State, Task
from fedunlearn.federated.training import FederationConfig


@dataclass
class TrainedFederation:
    r"""A federation after training: everything an unlearning method may use.

    Attributes:
        task: The task (model family, trainable state, loss).
        pool: The clients, reached only through the client seam.
        config: Federated hyperparameters of training.
        init_state: $w_0$.
        final_state: $\theta_o$, the trained model.
        history: What the round loop recorded.
        cost: Cost of training.
        model: A reusable model instance (server side).
        server_inputs: Unlabeled inputs the server holds (see
            [`Scenario`][fedunlearn.unlearning.scenarios.Scenario]), if any.
        extras: Further states a method's own training phase keeps (e.g. per-shard models).
    """

    task: Task
    pool: ClientPool
    config: FederationConfig
    init_state: State
    final_state: State
    history: TrainingHistory
    cost: CostCounter
    model: nn.Module = field(repr=False)
    server_inputs: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    extras: dict[str, State] = field(default_factory=dict, repr=False)


def train_federation(task: Task, pool: ClientPool, config: FederationConfig, init_state: State | None = None,
                     progress: bool | str = False, server_inputs: dict[str, torch.Tensor] | None = None,
                     model: nn.Module | None = None, history: TrainingHistory | None = None) -> TrainedFederation:
    r"""Train $\theta_o$ with the configured aggregation and record its history (every
    ``config.record_every`` rounds) into ``history`` (a new one by default; pass one to keep the
    rounds recorded before a failure)."""
    model = model if model is not None else task.build_model()
    init_state = init_state if init_state is not None else task.get_state(model)
    if history is None:
        history = TrainingHistory(init_state, config.record_every, {"config": config.as_dict()})
    cost = CostCounter()
    final = run_rounds(pool, init_state, config, range(config.rounds), counter=cost, history=history,
                       progress=progress)
    return TrainedFederation(task, pool, config, init_state, final, history, cost, model, server_inputs)


@dataclass(frozen=True)
class NoConfig:
    """A method without hyperparameters."""


#: Registered methods by name (filled by ``register_method`` when their module is imported).
METHODS: dict[str, type[UnlearningMethod]] = {}
#: Values of the ``guarantee`` facet.
GUARANTEES = ("none", "certified", "differential privacy")
#: Values of the ``workers`` facet.
WORKERS = ("server", "target", "remaining")


def register_method(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    """Class decorator declaring an unlearning method (name, granularities, Config, history).

    Raises:
        ValueError: If the name is empty or taken by another class.
    """
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.guarantee not in GUARANTEES:
        raise ValueError(f"{cls.name}: guarantee must be one of {GUARANTEES}, got {cls.guarantee!r}")
    if not cls.workers <= set(WORKERS):
        raise ValueError(f"{cls.name}: workers must be a subset of {WORKERS}, got {sorted(cls.workers)}")
    if cls.name in METHODS and METHODS[cls.name].__qualname__ != cls.__qualname__:
        raise ValueError(f"method name {cls.name!r} is registered twice "
                         f"({METHODS[cls.name].__module__} and {cls.__module__})")
    METHODS[cls.name] = cls
    return cls


#: How each ``workers`` value reads in the taxonomy explorer.
WORKER_LABELS = {"server": "server", "target": "target client", "remaining": "remaining clients"}
#: How each scenario kind reads there.
MODEL_LABELS = {"classification": "digits network", "language": "LoRA language model"}


def facets(method: type[UnlearningMethod]) -> dict[str, tuple[str, ...]]:
    """The taxonomy explorer's facets of a method class: facet -> its values (a row matches a filter
    when one of its values is chosen)."""
    workers = tuple(WORKER_LABELS[w] for w in WORKERS if w in method.workers)
    return {
        "granularity": tuple(sorted(method.granularities)),
        "exactness": ("exact" if method.exact else "approximate",),
        "guarantee": (method.guarantee,),
        "history": ("needs stored history" if method().history_interval() is not None else "no stored history",),
        "workers": ("server only",) if method.workers == {"server"} else workers,
        "models": tuple(MODEL_LABELS[k] for k in MODEL_LABELS if k in method.scenario_kinds),
        "flower": ("runs on Flower" if method.runs_on_flower else "in process only",),
    }


class UnlearningMethod:
    """Base class of unlearning methods (subclass, set the class attributes, implement ``unlearn``).

    Args:
        config: The method's hyperparameters (default: ``Config()``, the paper's defaults).
    """

    name: ClassVar[str] = ""
    granularities: ClassVar[frozenset[str]] = frozenset({"client"})
    #: Kinds of scenario (``Scenario.kind``) the method runs on: a method that measures text
    #: memorisation needs a language model, one that trains its own linear head needs features.
    scenario_kinds: ClassVar[frozenset[str]] = frozenset({"classification", "language"})
    #: Names of the only scenarios the method runs on (empty: any of its kinds), e.g. a method that
    #: prunes channels needs the scenario whose model has prunable channels.
    scenarios: ClassVar[frozenset[str]] = frozenset()
    Config: ClassVar[type] = NoConfig
    #: Whether the method trains the federation its own way (see ``train_federation``).
    owns_training: ClassVar[bool] = False
    #: Whether its result equals its referee's retraining without the forgotten data, bit for bit
    #: (a claim its tests assert): SISA's retrained shard, a deleted per-client adapter.
    exact: ClassVar[bool] = False
    #: What it guarantees about the unlearned model, one of ``GUARANTEES`` (exactness aside).
    guarantee: ClassVar[str] = "none"
    #: Who does the unlearning work, a subset of ``WORKERS``: ``"server"`` (on states it holds),
    #: ``"target"`` (clients, on the data being forgotten), ``"remaining"`` (clients, on retained data).
    workers: ClassVar[frozenset[str]] = frozenset()
    #: Whether it runs unchanged on a Flower deployment (it reaches clients only through the pool).
    runs_on_flower: ClassVar[bool] = True
    #: Whether that training depends on a request declared in advance (FedAU's auxiliary head
    #: learns what it will unlearn): ``train_federation`` then receives ``request=`` and the
    #: cached federation is keyed by the request.
    trains_for_request: ClassVar[bool] = False
    #: In a sequence of requests, what ``run.final_state`` is when request $k > 1$ arrives:
    #: ``"deployed"`` (the model the method served after request $k-1$) or ``"original"``
    #: ($\theta_o$, for methods that subtract from or measure against it; they receive the
    #: cumulative request). Methods that rebuild from the history ignore it.
    sequential_start: ClassVar[str] = "deployed"

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{self.name}: config must be a {self.Config.__name__}, got {type(self.config).__name__}")

    @property
    def label(self) -> str:
        """The name, plus every config field that differs from the default (``federaser[interval=1]``)."""
        default = type(self)().config
        changed = [f"{f.name}={getattr(self.config, f.name)}" for f in fields(self.config)
                   if getattr(self.config, f.name) != getattr(default, f.name)]
        return f"{self.name}[{','.join(changed)}]" if changed else self.name

    def history_interval(self) -> int | None:
        r"""The $\Delta t$ the training history must be recorded with (``None``: any)."""
        return None

    def train_federation(self, setup: TrainedFederation, progress: bool | str = False) -> TrainedFederation:
        """Train the federation this method's way from ``setup`` (its pool, config, $w_0$); only
        methods with ``owns_training`` override it."""
        raise NotImplementedError(f"method {self.name!r} does not own its training phase")

    def trained_model(self, setup: TrainedFederation) -> nn.Module:
        """The model instance the states of this method's training phase load into (default: the
        scenario's; a method that owns its training may train another kind of model)."""
        return setup.model

    def validate(self, scenario) -> None:
        """Raise ``ValueError`` naming the setting and value if this configuration cannot run on
        ``scenario`` (e.g. more shards than clients); called before anything trains."""

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """Return the unlearned state; count all work in ``counter``."""
        raise NotImplementedError


@dataclass
class UnlearningResult:
    """What a method returned, with the cost the shared counters measured."""

    method: str
    state: State
    cost: CostCounter


def history_fingerprint(history: TrainingHistory) -> str:
    """SHA-256 over every stored tensor and round record (detects in-place modification)."""
    digest = hashlib.sha256()

    def feed(state: Mapping[str, torch.Tensor] | None) -> None:
        for key in sorted(state or {}):
            digest.update(key.encode())
            digest.update(state[key].detach().contiguous().cpu().numpy().tobytes())

    feed(history.init_state)
    feed(history.final_state)
    for r in history.rounds:
        digest.update(repr((r.round_index, r.participants, sorted(r.sample_counts.items()))).encode())
        feed(r.global_state)
        for cid in sorted(r.client_updates):
            feed(r.client_updates[cid])
    return digest.hexdigest()


def check_granularity(method: UnlearningMethod, request: ForgetRequest) -> None:
    """Raise ``ForgetRequestError`` if ``method`` cannot serve a request of this kind."""
    if request.kind not in method.granularities:
        raise ForgetRequestError(f"method {method.name!r} serves {sorted(method.granularities)} requests, "
                                 f"not {request.kind!r}")


def check_scenario(method: UnlearningMethod, scenario) -> None:
    """Raise ``ForgetRequestError`` if ``method`` does not run on ``scenario`` (its kind, or its name
    when the method names the scenarios it runs on), ``ValueError`` if its configuration does not
    fit the scenario ([`validate`][fedunlearn.unlearning.base.UnlearningMethod.validate])."""
    if scenario.kind not in method.scenario_kinds:
        raise ForgetRequestError(f"method {method.name!r} runs on {sorted(method.scenario_kinds)} scenarios, "
                                 f"not {scenario.kind!r}")
    if method.scenarios and scenario.name not in method.scenarios:
        raise ForgetRequestError(f"method {method.name!r} runs only on scenario(s) {sorted(method.scenarios)}, "
                                 f"not {scenario.name!r}")
    method.validate(scenario)


def run_method(method: UnlearningMethod, run: TrainedFederation, request: ForgetRequest) -> UnlearningResult:
    """Validate, run and measure one unlearning method.

    Raises:
        ForgetRequestError: If the request is invalid, names a client that never trained, or is of
            a granularity the method cannot serve.
        RuntimeError: If the method modified the stored history.
    """
    check_granularity(method, request)
    run.pool.check(request)
    if request.kind == "client":
        absent = [c for c in request.clients if c not in run.history.clients]
        if absent:
            raise ForgetRequestError(f"client(s) {absent} never took part in training; nothing to forget")
    before = history_fingerprint(run.history)
    counter = CostCounter()
    with counter.timed():
        state = method.unlearn(run, request, counter)
    if history_fingerprint(run.history) != before:
        raise RuntimeError(f"method {method.name!r} modified the stored training history")
    return UnlearningResult(method.label, state, counter)
