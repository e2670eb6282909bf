"""The one federated loop: client sampling, local training, FedAvg aggregation, history, costs.

Client-side training ([`client_update`][fedunlearn.federated.loop.client_update]) and server-side
aggregation ([`server_aggregate`][fedunlearn.federated.loop.server_aggregate]) are separate
functions over plain state dicts, so an external engine can call them; the in-process loop
[`run_federation`][fedunlearn.federated.loop.run_federation] is the embedded default. Every
unlearning method that trains (retraining, calibration, repair) goes through these functions so
that the same counters measure it.

Randomness is derived, never global: client sampling from ``(seed, round)``, the data order of a
client from ``(seed, round, client)``. The same seed therefore gives the same result on CPU, and a
method that replays round ``t`` of client ``k`` sees the same mini-batch order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fedunlearn.federated.client import ClientData
from fedunlearn.federated.costs import CostCounter, state_bytes
from fedunlearn.federated.history import TrainingHistory
from fedunlearn.federated.task import State, Task, clone_state
from fedunlearn.foundations.fedavg import fedavg_aggregate, state_difference

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class FederationConfig:
    """Hyperparameters of federated training (FedAvg defaults of the embedded scenarios).

    Attributes:
        rounds: Communication rounds $T$.
        clients_per_round: Clients sampled per round $K$ (0 = every available client).
        local_epochs: Local epochs $E$ per round.
        local_steps: If positive, exactly this many local mini-batch steps instead of epochs.
        batch_size: Local mini-batch size $B$.
        lr: Local SGD learning rate $\\eta$.
        momentum: Local SGD momentum (0 = plain SGD as in FedAvg).
        optimizer: ``"sgd"`` or ``"adam"`` (local Adam, state reset every round, as FedIT's
            clients use for LoRA).
        seed: Seed of client sampling and data order.
        record_every: History keeps global states and client updates every this many rounds
            ($\\Delta t$ of FedEraser; 1 = every round).
    """

    rounds: int = 20
    clients_per_round: int = 0
    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    optimizer: str = "sgd"
    seed: int = 0
    record_every: int = 1

    def as_dict(self) -> dict:
        """Plain-data view (stored in history manifests and benchmark JSON)."""
        return asdict(self)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def sample_clients(available: Iterable[int], k: int, seed: int, round_index: int) -> list[int]:
    """The clients taking part in round ``round_index`` (sorted).

    Args:
        available: Client ids that may be sampled.
        k: How many to sample; 0 or at least ``len(available)`` means all.
        seed: Federation seed.
        round_index: Round number.
    """
    ids = sorted(available)
    if k <= 0 or k >= len(ids):
        return ids
    generator = torch.Generator().manual_seed(derived_seed(seed, round_index, 0x5A3))
    chosen = torch.randperm(len(ids), generator=generator)[:k]
    return sorted(ids[i] for i in chosen.tolist())


def minibatch_order(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Index batches covering ``n`` examples, reshuffled each pass, ``steps`` batches in all."""
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        perm = torch.randperm(n, generator=generator)
        batches.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return batches[:steps]


def local_step_count(num_samples: int, config: FederationConfig, local_epochs: float | None = None) -> int:
    """Mini-batch steps one client takes in one round."""
    if config.local_steps > 0 and local_epochs is None:
        return config.local_steps
    epochs = config.local_epochs if local_epochs is None else local_epochs
    per_epoch = -(-num_samples // config.batch_size)
    return max(1, int(round(epochs * per_epoch)))


def default_optimizer(params: list[nn.Parameter], config: FederationConfig) -> torch.optim.Optimizer:
    """The local optimiser named by ``config.optimizer``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; use 'sgd' or 'adam'")


def client_update(
    task: Task,
    model: nn.Module,
    global_state: Mapping[str, torch.Tensor],
    data: ClientData,
    config: FederationConfig,
    round_index: int,
    counter: CostCounter,
    *,
    local_epochs: float | None = None,
    make_optimizer: OptimizerFactory | None = None,
) -> State:
    """Client side of one round: train from ``global_state`` and return the update.

    Args:
        task: The task (model family and trainable state).
        model: A model instance to train in place (its trainable state is overwritten).
        global_state: The state received from the server, $w_t$.
        data: The client's examples.
        config: Federation hyperparameters.
        round_index: Round number (seeds the data order).
        counter: Receives one ``client_steps`` per mini-batch.
        local_epochs: Overrides ``config.local_epochs`` (e.g. FedEraser's shortened calibration).
        make_optimizer: Builds the local optimiser over trainable parameters (default: SGD with
            ``config.lr`` and ``config.momentum``).

    Returns:
        The update $\\Delta^k_t = w^k_{t+1} - w_t$.
    """
    if data.num_samples == 0:
        raise ValueError(f"client {data.client_id} holds no examples in round {round_index}")
    task.set_state(model, global_state)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params) if make_optimizer is not None else default_optimizer(params, config)
    generator = torch.Generator().manual_seed(derived_seed(config.seed, round_index, data.client_id))
    steps = local_step_count(data.num_samples, config, local_epochs)
    for index in minibatch_order(data.num_samples, config.batch_size, steps, generator):
        optimizer.zero_grad(set_to_none=True)
        loss = task.per_example_loss(model, data.batch(index)).mean()
        loss.backward()
        optimizer.step()
        counter.client_steps += 1
    return state_difference(task.get_state(model), global_state)


def server_aggregate(
    global_state: Mapping[str, torch.Tensor],
    client_updates: Mapping[int, Mapping[str, torch.Tensor]],
    sample_counts: Mapping[int, int],
) -> State:
    """Server side of one round: FedAvg over the received updates."""
    return fedavg_aggregate(global_state, client_updates, sample_counts)


def run_federation(
    task: Task,
    clients: Mapping[int, ClientData],
    init_state: Mapping[str, torch.Tensor],
    config: FederationConfig,
    *,
    rounds: Sequence[int] | None = None,
    start_state: Mapping[str, torch.Tensor] | None = None,
    model: nn.Module | None = None,
    counter: CostCounter | None = None,
    history: TrainingHistory | None = None,
    local_epochs: float | None = None,
    make_optimizer: OptimizerFactory | None = None,
    on_round: Callable[[int, State], None] | None = None,
    progress: bool | str = False,
) -> State:
    """Federated averaging over ``clients`` from ``start_state`` (default ``init_state``).

    Args:
        task: The task.
        clients: Client id -> data. Only these clients can be sampled.
        init_state: Initial trainable state $w_0$.
        config: Hyperparameters; ``config.rounds`` rounds unless ``rounds`` is given.
        rounds: Round numbers to run (they seed sampling and data order).
        start_state: State to start from (continuing a run); defaults to ``init_state``.
        model: Model instance to reuse (built from ``task`` when omitted).
        counter: Cost counter to add to (steps, client-rounds, bytes, wall time).
        history: If given, every round is recorded into it.
        local_epochs: Overrides the local epochs of every client.
        make_optimizer: Local optimiser factory (see [`client_update`][fedunlearn.federated.loop.client_update]).
        on_round: Called as ``on_round(round_index, new_state)`` after each aggregation.
        progress: Show a progress bar (a string is used as its label).

    Returns:
        The final global state.
    """
    counter = counter if counter is not None else CostCounter()
    model = model if model is not None else task.build_model()
    state = clone_state(start_state if start_state is not None else init_state)
    round_indices = list(rounds) if rounds is not None else list(range(config.rounds))
    label = progress if isinstance(progress, str) else "federated rounds"
    with counter.timed():
        for r in tqdm(round_indices, desc=label, disable=not progress, leave=False):
            participants = sample_clients(clients, config.clients_per_round, config.seed, r)
            updates: dict[int, State] = {}
            for cid in participants:
                counter.bytes_down += state_bytes(state)
                updates[cid] = client_update(
                    task, model, state, clients[cid], config, r, counter,
                    local_epochs=local_epochs, make_optimizer=make_optimizer,
                )
                counter.bytes_up += state_bytes(updates[cid])
                counter.client_rounds += 1
            counts = {cid: clients[cid].num_samples for cid in participants}
            if history is not None:
                counter.history_bytes += history.record_round(r, state, updates, counts)
            state = server_aggregate(state, updates, counts)
            if on_round is not None:
                on_round(r, state)
        if history is not None:
            history.final_state = clone_state(state)
    return state
