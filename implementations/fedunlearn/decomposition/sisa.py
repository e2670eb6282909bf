r"""SISA training, federated: sharded, isolated, sliced, aggregated (Bourtoule et al., IEEE S&P 2021;
key ``bourtoule2021machine``).

SISA splits the training data into $S$ disjoint **shards**, trains one constituent model per shard in
isolation, cuts each shard into $R$ **slices** that enter training one after another with a checkpoint after
each, and serves the **aggregate** of the constituents (a label vote). Deleting a point retrains only its
shard, and only from the checkpoint taken before the point's slice entered.

**Federated mapping.** The unit of data is a client.

- *Shards* are disjoint groups of clients: client $k$ belongs to shard $k \bmod S$. Each shard is its own
  federation: FedAvg over its clients only, every client of the shard in every round
  (``clients_per_round`` is ignored), with the federation's round indices (so client $k$ sees the same
  mini-batches in round $t$ whatever else trains).
- *Slices* are groups of clients that **join** their shard one after another: client $k$ joins in slice
  $\min(\lfloor k/S \rfloor, R-1)$ (its position in the shard; the last slice takes the rest). Slice $l$
  runs rounds $[\lfloor 2Tl/(R+1) \rfloor, \lfloor 2T(l+1)/(R+1) \rfloor)$ on every client that has joined
  so far: SISA's schedule (slice $l$ gets $\lfloor (l+1)a \rfloor - \lfloor la \rfloor$ epochs, $a = 2T/(R+1)$),
  so each shard does about as much client work as $T$ rounds on all its clients. The shard's state after
  each slice is kept as a checkpoint. Slicing a client's *own* records would not help client requests (a
  client would be in every slice), so slices are made of clients. With $R = 1$ every client trains from
  round 0 for $T$ rounds (plain sharding).
- Both assignments are functions of the client **id**, not of its position among the clients present,
  so a federation trained without a client puts every other client in the same shard and slice: the
  retrained shard can be compared with a shard trained from scratch without the client, bit for bit.
- *Aggregation*: the served model is a [`VotingEnsemble`][fedunlearn.decomposition.sisa.VotingEnsemble] of
  the shard models: the plurality label of the active shards (ties broken by the mean softmax). A shard
  left without clients is dropped from the vote.

**Unlearning.** For a client (or record) request, the server asks the pool which clients hold forgotten data,
and for each affected shard reloads the checkpoint taken before the earliest affected client joined and
reruns that shard's later slices on the data the request keeps. Other shards are untouched. The result
equals the same method trained from scratch without the data (its own oracle in the comparison engine).

Implemented: shards, client slices with checkpoints, label vote, exact retraining of affected shards,
client and record requests. Not implemented: the language-model variant (averaging per-shard adapters'
output distributions); SISA's request-distribution-aware sharding; transfer learning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from fedunlearn.catalog import Entry, ReportedClaim
from fedunlearn.federated.costs import CostCounter, state_bytes
from fedunlearn.federated.history import RoundRecord, TrainingHistory
from fedunlearn.federated.loop import run_rounds
from fedunlearn.federated.pool import ClientPool
from fedunlearn.federated.requests import ForgetRequest
from fedunlearn.federated.task import State, clone_state
from fedunlearn.federated.training import FederationConfig, LocalPlan, local_step_count
from fedunlearn.unlearning.base import TrainedFederation, UnlearningMethod, register_method

#: Pass criteria (issue 12): under uniform single-client requests, SISA's expected retraining cost is at
#: most ``COST_FACTOR / S`` of monolithic retraining (client steps) ...
COST_FACTOR = 2.0
#: ... for these shard counts;
COST_SHARDS = (4, 8)
#: slicing (this many slices against one) cuts the expected cost further;
SLICED = 2
#: the vote's test accuracy is at least the monolithic θ_o's minus this (a fraction: 2 points) ...
VOTE_POINTS = 0.02
#: ... for every shard count up to this one (the sweep runs ``VOTE_SHARDS``).
VOTE_MAX_SHARDS = 5
VOTE_SHARDS = (2, 3, 4, 5, 8)

#: Name of the extra state holding every shard's checkpoint after every slice.
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class SisaConfig:
    r"""SISA's knobs.

    Attributes:
        shards: $S$, groups of clients each trained in isolation (client $k$ in shard $k \bmod S$).
        slices: $R$, groups of clients joining each shard one after another, with a checkpoint after each.
    """

    shards: int = 5
    slices: int = 1

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if self.slices < 1:
            raise ValueError(f"slices must be >= 1, got {self.slices}")


def shard_of(client: int, shards: int) -> int:
    """The shard of a client id."""
    return client % shards


def slice_of(client: int, shards: int, slices: int) -> int:
    """The slice in which a client id joins its shard (its position in the shard; the last slice takes the rest)."""
    return min(client // shards, slices - 1)


def slice_rounds(rounds: int, slices: int) -> list[range]:
    r"""Round indices of each slice: slice $l$ ends at $\lfloor 2T(l+1)/(R+1) \rfloor$ (SISA's schedule)."""
    ends = [0] + [2 * rounds * (index + 1) // (slices + 1) for index in range(slices)]
    return [range(ends[index], ends[index + 1]) for index in range(slices)]


class VotingEnsemble(nn.Module):
    r"""The served SISA model: one member per shard, a plurality vote of the active ones.

    Its output is a log-distribution over classes, $\log\big((v + \bar p)/(m + 1)\big)$, with $v$ the vote
    counts of the $m$ active members and $\bar p$ their mean softmax: its arg max is the plurality label
    (ties broken by $\bar p$, which never outweighs a whole vote), and losses on it stay finite. With no
    active member it is uniform.

    Args:
        members: One model per shard (the scenario's network).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.shards = nn.ModuleList(members)
        self.register_buffer("active", torch.ones(len(members)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the vote distribution, ``[rows, classes]``."""
        logits = torch.stack([member(x) for member in self.shards])  # [S, rows, classes]
        weight = self.active.to(logits.dtype)[:, None, None]
        count = float(self.active.sum())
        if count == 0:
            return torch.full_like(logits[0], -torch.log(torch.tensor(float(logits.shape[-1]))).item())
        votes = (F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype) * weight).sum(0)
        mean = (F.softmax(logits, -1) * weight).sum(0) / count
        return torch.log((votes + mean) / (count + 1))


def served_state(shard_states: Sequence[State], active: Sequence[bool]) -> State:
    """The ensemble's state (what ``VotingEnsemble.state_dict`` holds) from the shards' states."""
    state = {f"shards.{s}.{key}": value for s, member in enumerate(shard_states) for key, value in member.items()}
    state["active"] = torch.tensor([float(a) for a in active])
    return state


def _checkpoint_key(shard: int, slice_index: int, key: str) -> str:
    return f"{shard}.{slice_index}.{key}"


def shard_checkpoint(extras: dict[str, State], shard: int, slice_index: int, init: State) -> State:
    """The shard's state after slice ``slice_index`` (``init`` before slice 0)."""
    if slice_index < 0:
        return clone_state(init)
    prefix = f"{shard}.{slice_index}."
    return {k[len(prefix):]: v.clone() for k, v in extras[CHECKPOINTS].items() if k.startswith(prefix)}


def train_shard(pool: ClientPool, config: FederationConfig, sisa: SisaConfig, shard: int, start: State,
                first_slice: int, plan: LocalPlan, counter: CostCounter,
                rounds_log: dict[int, dict[int, int]] | None = None) -> tuple[State, list[State], bool]:
    """Run a shard's slices from ``first_slice`` on, from ``start`` (the checkpoint before it).

    Returns:
        The final state, the checkpoint after each slice run, and whether the shard has any client with
        data under ``plan`` (an inactive shard does not vote).
    """
    counts = pool.sample_counts(plan)
    members = [c for c in pool.client_ids() if shard_of(c, sisa.shards) == shard and counts.get(c, 0) > 0]
    config = replace(config, clients_per_round=0)
    state, kept = clone_state(start), []
    for index, rounds in enumerate(slice_rounds(config.rounds, sisa.slices)):
        if index < first_slice:
            continue
        joined = [c for c in members if slice_of(c, sisa.shards, sisa.slices) <= index]
        if joined and len(rounds):
            state = run_rounds(pool, state, config, rounds, plan=plan, available=joined, counter=counter)
            if rounds_log is not None:
                for r in rounds:
                    rounds_log.setdefault(r, {}).update({c: counts[c] for c in joined})
        kept.append(clone_state(state))
    return state, kept, bool(members)


@register_method
class Sisa(UnlearningMethod):
    """Shards of clients trained in isolation, slices with checkpoints, a vote; forgets by retraining one shard."""

    name = "sisa"
    workers = frozenset({"remaining"})
    granularities = frozenset({"client", "records"})
    scenario_kinds = frozenset({"classification"})
    Config = SisaConfig
    owns_training = True
    exact = True
    sequential_start = "original"  # it restarts from its stored checkpoints; a later request is cumulative

    def trained_model(self, setup: TrainedFederation) -> VotingEnsemble:
        """A vote over one scenario network per shard."""
        return VotingEnsemble([setup.task.build_model() for _ in range(self.config.shards)]).to(
            getattr(setup.task, "device", "cpu"))

    def validate(self, scenario) -> None:
        """Refuse more shards than the scenario has clients (before anything trains)."""
        if self.config.shards > len(scenario.clients):
            raise ValueError(f"sisa: shards={self.config.shards} exceeds the number of clients "
                             f"({len(scenario.clients)}) of {scenario.name!r}")

    def train_federation(self, setup: TrainedFederation, progress: bool | str = False) -> TrainedFederation:
        """Train every shard by FedAvg over its clients, slice by slice, keeping a checkpoint after each.

        Raises:
            ValueError: If there are more shards than clients with data.
        """
        plan = LocalPlan()
        clients = [c for c, n in setup.pool.sample_counts(plan).items() if n > 0]
        if self.config.shards > len(clients):
            raise ValueError(f"shards={self.config.shards} exceeds the number of clients ({len(clients)}): "
                             "every shard needs at least one client")
        cost, rounds_log, finals, active, checkpoints = CostCounter(), {}, [], [], {}
        with cost.timed():
            for s in range(self.config.shards):
                final, kept, has_clients = train_shard(setup.pool, setup.config, self.config, s, setup.init_state,
                                                       0, plan, cost, rounds_log)
                finals.append(final)
                active.append(has_clients)
                for index, state in enumerate(kept):
                    checkpoints.update({_checkpoint_key(s, index, k): v for k, v in state.items()})
        # the history's initial state is one shard's w_0 (the cache restores ``init_state`` from it)
        history = TrainingHistory(setup.init_state, 1, {"config": setup.config.as_dict(), "method": self.label})
        for r in sorted(rounds_log):  # participants only (no tensors): which clients trained when
            history.rounds.append(RoundRecord(r, sorted(rounds_log[r]), dict(sorted(rounds_log[r].items()))))
        history.final_state = served_state(finals, active)
        return TrainedFederation(setup.task, setup.pool, setup.config, setup.init_state, history.final_state, history,
                                 cost, self.trained_model(setup), setup.server_inputs, {CHECKPOINTS: checkpoints})

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """Retrain each shard holding forgotten data from the checkpoint before its earliest affected slice."""
        sisa = self.config
        first = self.restarts(run, request)
        plan = LocalPlan("retained", request)
        shards, active = [], run.final_state["active"].bool().tolist()
        for s in range(sisa.shards):
            if s not in first:
                shards.append(shard_checkpoint(run.extras, s, sisa.slices - 1, run.init_state))
                continue
            start = shard_checkpoint(run.extras, s, first[s] - 1, run.init_state)
            final, _, active[s] = train_shard(run.pool, run.config, sisa, s, start, first[s], plan, counter)
            shards.append(final)
        return served_state(shards, active)

    def restarts(self, run: TrainedFederation, request: ForgetRequest) -> dict[int, int]:
        """Shard -> the slice its retraining starts at (the earliest slice a client holding forgotten data
        joined in); the pool says which clients hold forgotten data."""
        held = run.pool.sample_counts(LocalPlan("forgotten", request))
        first: dict[int, int] = {}
        for c in (c for c, n in held.items() if n > 0):
            s = shard_of(c, self.config.shards)
            first[s] = min(first.get(s, self.config.slices), slice_of(c, self.config.shards, self.config.slices))
        return first


def storage_models(run: TrainedFederation) -> float:
    """Bytes SISA keeps (every shard's checkpoint after every slice, the last one being the served shard
    model), in units of one scenario model."""
    return state_bytes(run.extras[CHECKPOINTS]) / state_bytes(run.init_state)


def monolithic_retrain_steps(run: TrainedFederation, request: ForgetRequest) -> int:
    """Client steps of retraining the monolithic FedAvg model without ``request`` (every client every round,
    as the pool counts them): rounds times each retained client's local steps."""
    rounds = run.config.rounds
    counts = run.pool.sample_counts(LocalPlan("retained", request))
    return rounds * sum(local_step_count(n, run.config) for n in counts.values() if n > 0)


ENTRY = Entry(
    slug="sisa",
    family="decomposition",
    title="SISA: sharded, isolated, sliced and aggregated training",
    citation_keys=("bourtoule2021machine",),
    summary="Clients are split into shards trained in isolation and joining in slices with checkpoints; the "
    "served model is a vote, and forgetting a client retrains only its shard from the last checkpoint before it.",
    claims=(
        ReportedClaim(
            claim="Unlearning is faster than retraining from scratch (no prior on requests)",
            reported="4.63x (Purchase), 2.45x (SVHN); 1.36x (ImageNet, transfer learning)",
            where="Abstract",
        ),
        ReportedClaim(
            claim="Retraining a shard from its checkpoint is exact: the model equals one never trained on the data",
            reported="qualitative (by construction)",
            where="Section IV",
        ),
        ReportedClaim(
            claim="Slicing further reduces the retraining cost of a request",
            reported="not retrieved (figures)",
            where="Section V (not retrieved)",
        ),
        ReportedClaim(
            claim="The accuracy cost of sharding is small on simple tasks and grows with S on complex ones",
            reported="not retrieved (figures)",
            where="Section V (not retrieved)",
        ),
    ),
)
