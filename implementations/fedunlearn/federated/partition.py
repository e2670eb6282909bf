r"""Partitioners: how examples are spread over clients.

Each returns one index array per client; the arrays are disjoint and together cover every example.

- [`iid`][fedunlearn.federated.partition.iid]: a seeded shuffle cut into near-equal parts.
- [`dirichlet`][fedunlearn.federated.partition.dirichlet]: label skew; client shares of each class
  drawn from Dirichlet($\alpha$) (small $\alpha$ = more skew), as in Hsu et al. 2019.
- [`shards`][fedunlearn.federated.partition.shards]: FedAvg's pathological non-IID split (sort by
  label, cut into shards, deal a few shards to each client).
- [`by_owner`][fedunlearn.federated.partition.by_owner]: all records of one data owner land on one
  client, so "forget this client" and "forget this person" are both expressible.
"""

from __future__ import annotations

import numpy as np


def iid(num_examples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle and split into ``num_clients`` parts whose sizes differ by at most one."""
    if num_clients < 1 or num_clients > num_examples:
        raise ValueError(f"cannot split {num_examples} examples over {num_clients} clients")
    order = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 1) -> list[np.ndarray]:
    r"""Label-skewed split: for each class, client shares ~ Dirichlet($\alpha$).

    Draws are repeated (same generator, so still deterministic) until every client holds at
    least ``min_size`` examples.

    Raises:
        ValueError: If ``alpha`` is not positive or the size constraint cannot be met.
    """
    labels = np.asarray(labels)
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if num_clients * min_size > len(labels):
        raise ValueError(f"{len(labels)} examples cannot give {num_clients} clients {min_size} each")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for cls in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=int)) for p in parts]
    raise ValueError(f"no Dirichlet({alpha}) draw gave every client {min_size} examples")


def shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, seed: int
) -> list[np.ndarray]:
    """Sort by label, cut into ``num_clients * shards_per_client`` shards, deal them at random.

    With two shards per client most clients see only two classes (McMahan et al. 2017, Sec. 3).

    Raises:
        ValueError: If there are fewer examples than shards.
    """
    labels = np.asarray(labels)
    count = num_clients * shards_per_client
    if num_clients < 1 or shards_per_client < 1 or count > len(labels):
        raise ValueError(f"cannot cut {len(labels)} examples into {count} shards")
    by_label = np.argsort(labels, kind="stable")
    pieces = np.array_split(by_label, count)
    order = np.random.default_rng(seed).permutation(count)
    return [
        np.sort(np.concatenate([pieces[s] for s in order[c::num_clients]]))
        for c in range(num_clients)
    ]


def by_owner(owner_ids: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Assign whole owners to clients (owners shuffled, dealt round-robin).

    Raises:
        ValueError: If there are fewer owners than clients.
    """
    owner_ids = np.asarray(owner_ids)
    owners = np.unique(owner_ids)
    if len(owners) < num_clients:
        raise ValueError(f"{len(owners)} owners cannot fill {num_clients} clients")
    shuffled = np.random.default_rng(seed).permutation(owners)
    return [np.flatnonzero(np.isin(owner_ids, shuffled[c::num_clients])) for c in range(num_clients)]
