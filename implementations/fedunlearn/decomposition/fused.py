r"""Per-client adapters (exact) and FUSED (reversible, approximate) (Zhong, Bao, Wang, Zhang, Zhou,
Lyu, Lim, CVPR 2025; key ``zhong2025unlearning``; LoRA: key ``hu2022lora``).

Two ways of keeping what a client contributed in a separable part of the model.

**Per-client adapters** (``per-client-adapters``; no single paper: the exact baseline of the
decomposition family on the federated LoRA model). Every client $k$ trains its own adapter
$a_k$ alone, from the common initialisation $a^{(0)}$, for the federation's $T$ rounds (through
the client seam, one participant at a time: the same local steps FedAvg asks of it); the server
never averages during training. The served adapter is the parameter mean
$\bar a = \frac{1}{|K|}\sum_{k \in K} a_k$ (each LoRA factor averaged, as FedAvg averages them).
Forgetting client $j$ deletes $a_j$ and re-averages over $K \setminus \{j\}$: no client work, and
exact, since $a_k$ never depended on $j$ (client $k$'s mini-batches are seeded by its id and the
round index). The price is paid up front, in utility against the jointly FedAvg'd adapter, and in
storage ($|K|$ adapters).

**FUSED** (``fused``). During ordinary FedAvg the server sees how far each client's upload moves
each layer $l$; FUSED ranks layers by that movement,

$$ s_l = \sum_{t} \sum_{k \in S_t} \big\lVert \Delta^{k}_{t}[l] \big\rVert_2 , $$

(optionally divided by the layer's parameter count), takes the top ``layers`` layers whose
parameters fit in ``max_fraction`` of the model (the *critical layers*), freezes everything else
and FedAvg-trains only the critical layers, from $\theta_o$, on the **retained** data for
$R = \max(1, \lfloor \text{round\_fraction} \cdot T \rfloor)$ rounds ("knowledge overwriting").
The trained change $\delta = \theta_u - \theta_o$ (non-zero on the critical layers only) is the
adapter; deleting it gives $\theta_o$ back bit for bit (:func:`adapter_of`, :func:`remove_adapter`).

Layers: on the LoRA language model, the LoRA-adapted modules (each module's $A$ and $B$); on the
digits MLP, its ``Linear`` layers (weight and bias).

Implemented: per-client training and exact deletion (client requests); the critical-layer score
from the recorded client updates; sparse retraining through ``LocalPlan(trainable=...)``; reversal.
Not implemented, deviations: FUSED adds *new* LoRA adapters (r = 16, alpha = 32) on the critical
layers of a frozen model; here the critical layers' own parameters train (on the LM these are
already LoRA factors; on digits the Linear weights themselves), and the adapter is their change.
The released code scores a layer by the norm of row-wise L1 distances of the last client of the
last round (``algs/fl_base.py``, overwritten per client); here the Frobenius norm summed over every
round and client. Its critical modules are hard-coded per dataset; here they come from the score.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from fedunlearn.catalog import Entry, ReportedClaim
from fedunlearn.federated.aggregation import weighted_average
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import RoundRecord, TrainingHistory
from fedunlearn.federated.loop import run_rounds
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.task import State
from fedunlearn.federated.training import LocalPlan, trained_parameters
from fedunlearn.unlearning.base import TrainedFederation, UnlearningMethod, register_method

#: Pass criteria (issue 12): FUSED trains at most this share of the model's parameters ...
MAX_TRAINABLE = 0.10
#: ... with at most this share of retraining's client steps (ρ_steps).
MAX_RHO_STEPS = 0.3

#: The entry's comparisons (notebook and slow tests ask exactly these, so the cache serves both): on the
#: language model (``profiles-client`` seed 0 at ``LM_SMOKE``) both methods; ...
LM_METHODS = ("per-client-adapters", "fused")
#: ... on ``digits-backdoor`` FUSED, and the ablation with every layer trainable (the same rounds).
DIGITS_METHODS = ("fused", ("fused", {"layers": 3, "max_fraction": 1.0}))
DIGITS_SEEDS = (0, 1, 2)

#: Name of the extra state holding every client's adapter (keys ``"<client>.<state key>"``).
ADAPTERS = "adapters"


# ---------------------------------------------------------------- per-client adapters


def mean_adapter(adapters: Mapping[int, State]) -> State:
    r"""The served adapter: the parameter mean of the given clients' adapters (in client-id order)."""
    if not adapters:
        raise ValueError("no adapter left to serve")
    ids = sorted(adapters)
    return weighted_average([adapters[c] for c in ids], [1.0] * len(ids))


def client_adapters(extras: Mapping[str, State]) -> dict[int, State]:
    """Client id -> its adapter, from the extra state of the training phase."""
    out: dict[int, State] = {}
    for key, value in extras[ADAPTERS].items():
        client, name = key.split(".", 1)
        out.setdefault(int(client), {})[name] = value
    return out


def delete_adapters(adapters: Mapping[int, State], clients: Iterable[int]) -> dict[int, State]:
    """The adapters without those of ``clients`` (a new mapping; the input is not changed).

    Raises:
        ForgetRequestError: Naming every client without an adapter.
    """
    clients = sorted(set(clients))
    missing = [c for c in clients if c not in adapters]
    if missing:
        raise ForgetRequestError(f"no adapter for client(s) {missing} (adapters of clients {sorted(adapters)})")
    return {c: a for c, a in adapters.items() if c not in clients}


@dataclass(frozen=True)
class PerClientConfig:
    """Per-client adapters have no knob: the federation's rounds and local schedule apply."""


@register_method
class PerClientAdapters(UnlearningMethod):
    """Each client trains its own adapter alone; the served adapter is their mean; forgetting deletes one."""

    name = "per-client-adapters"
    workers = frozenset({"server"})
    granularities = frozenset({"client"})
    scenario_kinds = frozenset({"language"})
    Config = PerClientConfig
    owns_training = True
    exact = True
    sequential_start = "original"  # it re-averages its stored adapters; a later request is cumulative

    def train_federation(self, setup: TrainedFederation, progress: bool | str = False) -> TrainedFederation:
        """Every client with data runs the federation's rounds alone from $w_0$ (through the pool)."""
        plan = LocalPlan()
        counts = {c: n for c, n in setup.pool.sample_counts(plan).items() if n > 0}
        config = replace(setup.config, clients_per_round=0)
        cost, adapters = CostCounter(), {}
        with cost.timed():
            for c in sorted(counts):
                adapters[c] = run_rounds(setup.pool, setup.init_state, config, range(config.rounds), plan=plan,
                                         available=[c], counter=cost)
        history = TrainingHistory(setup.init_state, 1, {"config": setup.config.as_dict(), "method": self.label})
        for r in range(config.rounds):  # participants only (no tensors): every client trains every round
            history.rounds.append(RoundRecord(r, sorted(counts), dict(sorted(counts.items()))))
        history.final_state = mean_adapter(adapters)
        extras = {ADAPTERS: {f"{c}.{k}": v for c, a in adapters.items() for k, v in a.items()}}
        return TrainedFederation(setup.task, setup.pool, setup.config, setup.init_state, history.final_state,
                                 history, cost, setup.model, setup.server_inputs, extras)

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """Delete the forgotten clients' adapters and average the rest (no client work)."""
        kept = delete_adapters(client_adapters(run.extras), request.clients)
        counter.server_steps += 1
        return mean_adapter(kept)


# ---------------------------------------------------------------- FUSED


@dataclass(frozen=True)
class FusedConfig:
    r"""FUSED's knobs.

    Attributes:
        layers: How many critical layers (the released code hard-codes two on its LeNet).
        max_fraction: The critical layers' parameters stay within this share of the model's.
        round_fraction: Sparse retraining runs $\max(1, \lfloor \text{round\_fraction} \cdot T \rfloor)$
            rounds ($T$ the federation's rounds; the federation's local schedule).
        per_parameter: Divide each layer's score by its parameter count.
    """

    layers: int = 2
    max_fraction: float = MAX_TRAINABLE
    round_fraction: float = 0.25
    per_parameter: bool = False

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if not 0 < self.max_fraction <= 1:
            raise ValueError(f"max_fraction must be in (0, 1], got {self.max_fraction}")
        if not 0 < self.round_fraction <= 1:
            raise ValueError(f"round_fraction must be in (0, 1], got {self.round_fraction}")


def layer_of(key: str) -> str:
    """The layer (module name) a state key belongs to: ``'0.weight'`` -> ``'0'``,
    ``'...q_proj.lora_A.weight'`` -> ``'...q_proj'``."""
    name = key.rsplit(".", 1)[0] if key.endswith((".weight", ".bias")) else key
    for marker in (".lora_A", ".lora_B", ".lora_embedding_A", ".lora_embedding_B"):
        if marker in name:
            return name.split(marker, 1)[0]
    return name


def layer_sizes(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Parameter count of each layer of a state."""
    sizes: dict[str, int] = {}
    for key, value in state.items():
        if torch.is_floating_point(value):
            sizes[layer_of(key)] = sizes.get(layer_of(key), 0) + value.numel()
    return sizes


def layer_scores(history: TrainingHistory, per_parameter: bool = False) -> dict[str, float]:
    r"""$s_l = \sum_t \sum_k \lVert \Delta^k_t[l] \rVert_2$ over the kept rounds (divided by the
    layer's size with ``per_parameter``).

    Raises:
        ValueError: If the history kept no client update.
    """
    totals: dict[str, float] = {}
    for record in history.rounds:
        for update in record.client_updates.values():
            squares: dict[str, float] = {}
            for key, value in update.items():
                if torch.is_floating_point(value):
                    squares[layer_of(key)] = squares.get(layer_of(key), 0.0) + float(value.double().pow(2).sum())
            for layer, square in squares.items():
                totals[layer] = totals.get(layer, 0.0) + square ** 0.5
    if not totals:
        raise ValueError("the training history kept no client update: FUSED scores layers from them")
    if per_parameter:
        sizes = layer_sizes(history.init_state)
        totals = {layer: score / sizes[layer] for layer, score in totals.items()}
    return totals


def critical_layers(scores: Mapping[str, float], sizes: Mapping[str, int], model_parameters: int,
                    layers: int, max_fraction: float) -> tuple[str, ...]:
    """The top-scored layers (ties by name), at most ``layers`` of them, skipping any that would take
    the selection beyond ``max_fraction`` of ``model_parameters``.

    Raises:
        ValueError: If no layer fits the budget.
    """
    budget, chosen, used = max_fraction * model_parameters, [], 0
    for layer in sorted(scores, key=lambda name: (-scores[name], name)):
        if len(chosen) == layers:
            break
        if used + sizes[layer] <= budget:
            chosen.append(layer)
            used += sizes[layer]
    if not chosen:
        raise ValueError(f"no layer fits max_fraction={max_fraction} of {model_parameters} parameters "
                         f"(smallest layer: {min(sizes.values())})")
    return tuple(chosen)


def model_parameters(model: nn.Module) -> int:
    """Every parameter of the model, frozen ones included (the base of a LoRA model)."""
    return sum(p.numel() for p in model.parameters())


def trainable_fraction(layers: Sequence[str], sizes: Mapping[str, int], model: nn.Module) -> float:
    """Share of the model's parameters (frozen ones included) in ``layers``."""
    return sum(sizes[layer] for layer in layers) / model_parameters(model)


def adapter_of(unlearned: Mapping[str, torch.Tensor], original: Mapping[str, torch.Tensor]) -> State:
    r"""The adapter $\delta = \theta_u - \theta_o$ on the tensors FUSED changed (float64, so that
    [`remove_adapter`][fedunlearn.decomposition.fused.remove_adapter] gives $\theta_o$ back exactly).

    Raises:
        RuntimeError: If some tensor could not be restored exactly (never seen; checked here).
    """
    delta = {k: v.double() - original[k].double() for k, v in unlearned.items()
             if torch.is_floating_point(v) and not torch.equal(v, original[k])}
    restored = remove_adapter(unlearned, delta)
    if any(not torch.equal(restored[k], original[k]) for k in delta):
        raise RuntimeError("the adapter does not restore θ_o bit for bit")
    return delta


def remove_adapter(unlearned: Mapping[str, torch.Tensor], adapter: Mapping[str, torch.Tensor]) -> State:
    r"""$\theta_u - \delta$: the model without the adapter."""
    return {k: (v.double() - adapter[k]).to(v.dtype) if k in adapter else v.clone() for k, v in unlearned.items()}


def fused_selection(run: TrainedFederation, config: FusedConfig) -> tuple[tuple[str, ...], float]:
    """The critical layers of a trained federation and the share of the model's parameters they hold."""
    sizes = layer_sizes(run.final_state)
    scores = layer_scores(run.history, config.per_parameter)
    chosen = critical_layers(scores, sizes, model_parameters(run.model), config.layers, config.max_fraction)
    return chosen, trainable_fraction(chosen, sizes, run.model)


def sparse_rounds(config: FusedConfig, rounds: int) -> int:
    r"""$R = \max(1, \lfloor \text{round\_fraction} \cdot T \rfloor)$."""
    return max(1, int(config.round_fraction * rounds))


@register_method
class Fused(UnlearningMethod):
    """Score layers by client movement, retrain only the critical ones on the retained data; the change is
    a removable adapter."""

    name = "fused"
    workers = frozenset({"remaining"})
    granularities = frozenset({"client", "records", "class"})
    Config = FusedConfig
    sequential_start = "original"  # one adapter on θ_o for the cumulative request (deleting it restores θ_o)

    def history_interval(self) -> int | None:
        """Every round's client updates (the scores sum over them)."""
        return 1

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """Pick the critical layers, then FedAvg-train only them from θ_o on the retained data."""
        chosen, _ = fused_selection(run, self.config)
        counter.server_steps += 1
        plan = LocalPlan("retained", request, trainable=chosen)
        start, rounds = run.config.rounds, sparse_rounds(self.config, run.config.rounds)
        return run_rounds(run.pool, run.final_state, run.config, range(start, start + rounds), plan=plan,
                          counter=counter)


def trainable_names(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """The parameters ``LocalPlan(trainable=layers)`` trains (for reports and tests)."""
    return [name for name, _ in trained_parameters(model, tuple(layers))] if layers else []


def storage_parameters(run: TrainedFederation) -> int:
    """Parameters per-client adapters keep beyond the served adapter (every client's adapter)."""
    return sum(v.numel() for v in run.extras[ADAPTERS].values())


ENTRY = Entry(
    slug="fused",
    family="decomposition",
    title="Per-client adapters and FUSED: forgetting by deleting an adapter",
    citation_keys=("zhong2025unlearning", "hu2022lora"),
    summary="Exact: every client trains its own LoRA adapter, the served one is their mean and forgetting "
    "deletes one. FUSED: retrain only the layers client updates moved most, on the remaining clients; the "
    "change is an adapter whose deletion restores the original model.",
    claims=(
        ReportedClaim(
            claim="Unlearning by knowledge overwriting is as effective as retraining at a far lower cost",
            reported="effectiveness comparable to retraining, \"greatly\" lower cost (five data sets, three "
            "scenarios); tables not retrieved",
            where="Abstract (CVF open access)",
        ),
        ReportedClaim(
            claim="Only a sparse set of critical layers is trained (adapters on them)",
            reported="LoRA r = 16, alpha = 32 on hard-coded critical modules (code); the share of trainable "
            "parameters was not retrieved",
            where="Section 3; released code",
        ),
        ReportedClaim(
            claim="Unlearning is reversible: removing the adapter restores the original model",
            reported="qualitative (by construction)",
            where="Abstract, Section 3",
        ),
        ReportedClaim(
            claim="Per-client adapters forget a client exactly by deleting its adapter (family baseline)",
            reported="no paper: exact by construction; the price is the utility against one jointly "
            "averaged adapter",
            where="Issue 12 (design), research dossier D2",
        ),
    ),
)
