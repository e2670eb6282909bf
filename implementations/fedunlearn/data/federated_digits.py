"""Digits over federated clients: IID, label-skewed or pathological shards, optional backdoor.

Builds the [`ClientData`][fedunlearn.federated.client.ClientData] of every client from a
[`DigitsSplit`][fedunlearn.data.digits.DigitsSplit]. Record ids are the row ids of
``load_digits()`` (so a forget request can name an image); class labels are set, so class-level
requests work. Chosen clients can be *backdoored*: a fraction of their rows gets a triggered copy
relabelled to a target class ([`poison`][fedunlearn.data.digits.poison]). The copies receive record
ids from [`POISON_ID_OFFSET`][fedunlearn.data.federated_digits.POISON_ID_OFFSET] upwards, so every
record id in the federation stays unique and poisoned records are recognisable.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from fedunlearn.data.digits import DigitsSplit, poison
from fedunlearn.federated import partition
from fedunlearn.federated.client import ClientData

#: Record ids of poisoned copies start here (digits has 1,797 rows, so no clash with real rows).
POISON_ID_OFFSET = 1_000_000

#: Partition names understood by
#: [`digits_clients`][fedunlearn.data.federated_digits.digits_clients].
PARTITIONS = ("iid", "dirichlet", "shards")


def is_poisoned(record_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the record ids that name poisoned (triggered) copies."""
    return record_ids >= POISON_ID_OFFSET


def partition_indices(
    labels: np.ndarray,
    partition_name: str,
    num_clients: int,
    seed: int,
    *,
    alpha: float = 0.3,
    min_size: int = 10,
    shards_per_client: int = 2,
) -> list[np.ndarray]:
    r"""Row indices of each client for a named partition.

    Args:
        labels: Class of every training row.
        partition_name: ``"iid"``, ``"dirichlet"`` (label skew, Dirichlet($\alpha$) class shares)
            or ``"shards"`` (FedAvg's pathological non-IID split: sorted by label, dealt in shards).
        num_clients: Number of clients.
        seed: Seed of the partition.
        alpha: Dirichlet concentration (``"dirichlet"`` only).
        min_size: Smallest client under ``"dirichlet"``.
        shards_per_client: Shards per client under ``"shards"``.

    Raises:
        ValueError: On an unknown partition name (and whatever the partitioner rejects).
    """
    if partition_name == "iid":
        return partition.iid(len(labels), num_clients, seed)
    if partition_name == "dirichlet":
        return partition.dirichlet(labels, num_clients, alpha, seed, min_size=min_size)
    if partition_name == "shards":
        return partition.shards(labels, num_clients, shards_per_client, seed)
    raise ValueError(f"unknown partition {partition_name!r}; use one of {', '.join(PARTITIONS)}")


def digits_clients(
    split: DigitsSplit,
    partition_name: str,
    num_clients: int,
    seed: int,
    *,
    alpha: float = 0.3,
    min_size: int = 10,
    shards_per_client: int = 2,
    backdoor_clients: Iterable[int] = (),
    backdoor_fraction: float = 0.2,
    target: int = 0,
) -> dict[int, ClientData]:
    """The digits training rows spread over ``num_clients`` clients.

    Args:
        split: Train/test tensors ([`load_split`][fedunlearn.data.digits.load_split]).
        partition_name: ``"iid"``, ``"dirichlet"`` or ``"shards"``, see
            [`partition_indices`][fedunlearn.data.federated_digits.partition_indices].
        num_clients: Number of clients (ids ``0 .. num_clients - 1``).
        seed: Seed of the partition and of the choice of poisoned rows.
        alpha: Dirichlet concentration for ``"dirichlet"``.
        min_size: Smallest client under ``"dirichlet"``.
        shards_per_client: Shards per client under ``"shards"``.
        backdoor_clients: Clients whose data gets triggered copies labelled ``target``.
        backdoor_fraction: Share of a backdoored client's rows that get a triggered copy.
        target: The backdoor's target class.

    Returns:
        Client id -> data, with ``record_ids`` (digits row ids, or ids from
        ``POISON_ID_OFFSET`` for poisoned copies) and ``class_labels`` (the trained labels).

    Raises:
        ValueError: On an unknown partition or a backdoored client id outside the federation.
    """
    backdoored = sorted({int(c) for c in backdoor_clients})
    outside = [c for c in backdoored if not 0 <= c < num_clients]
    if outside:
        raise ValueError(f"backdoor clients {outside} are not in 0..{num_clients - 1}")
    parts = partition_indices(
        split.y_train.numpy(),
        partition_name,
        num_clients,
        seed,
        alpha=alpha,
        min_size=min_size,
        shards_per_client=shards_per_client,
    )
    next_poison_id = POISON_ID_OFFSET
    clients: dict[int, ClientData] = {}
    for cid, rows in enumerate(parts):
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        x, y, ids = split.x_train[index], split.y_train[index], split.train_ids[index]
        if cid in backdoored:
            clean = len(x)
            x, y = poison(x, y, backdoor_fraction, target, seed=seed * 1_000 + cid)
            added = len(x) - clean
            ids = torch.cat([ids, torch.arange(next_poison_id, next_poison_id + added)])
            next_poison_id += added
        clients[cid] = ClientData(
            client_id=cid, tensors={"x": x, "y": y}, record_ids=ids, class_labels=y.clone()
        )
    return clients
