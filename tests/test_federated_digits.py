"""Digits clients: partitions cover the training rows, record ids stay unique, backdoors are real."""

from __future__ import annotations

import pytest
import torch

from fedunlearn.data.digits import TRIGGER_PIXELS, load_split
from fedunlearn.data.federated_digits import POISON_ID_OFFSET, digits_clients, is_poisoned


@pytest.fixture(scope="module")
def split():
    return load_split(seed=0)


@pytest.mark.parametrize("partition_name", ["iid", "dirichlet", "shards"])
def test_clients_hold_every_training_row_once(split, partition_name: str) -> None:
    clients = digits_clients(split, partition_name, 10, seed=0)
    assert sorted(clients) == list(range(10))
    ids = torch.cat([c.record_ids for c in clients.values()])
    assert sorted(ids.tolist()) == sorted(split.train_ids.tolist())
    for client in clients.values():
        # each row's tensors are the digits row its record id names
        position = {int(r): i for i, r in enumerate(split.train_ids)}
        rows = torch.tensor([position[int(r)] for r in client.record_ids])
        assert torch.equal(client.tensors["x"], split.x_train[rows])
        assert torch.equal(client.tensors["y"], split.y_train[rows])
        assert torch.equal(client.class_labels, client.tensors["y"])


def test_dirichlet_clients_are_more_skewed_than_iid(split) -> None:
    def classes_per_client(partition_name: str) -> float:
        clients = digits_clients(split, partition_name, 10, seed=0, alpha=0.3)
        return sum(len(c.class_labels.unique()) for c in clients.values()) / len(clients)

    assert classes_per_client("dirichlet") < classes_per_client("iid") == 10


def test_backdoored_clients_get_triggered_copies_with_unique_ids(split) -> None:
    clean = digits_clients(split, "iid", 5, seed=1)
    dirty = digits_clients(
        split, "iid", 5, seed=1, backdoor_clients=(1, 3), backdoor_fraction=0.25, target=7
    )
    all_ids = torch.cat([c.record_ids for c in dirty.values()])
    assert len(all_ids.unique()) == len(all_ids)
    for cid, client in dirty.items():
        n = clean[cid].num_samples
        poisoned = is_poisoned(client.record_ids)
        if cid not in (1, 3):
            assert not poisoned.any()
            assert torch.equal(client.tensors["x"], clean[cid].tensors["x"])
            continue
        assert int(poisoned.sum()) == round(0.25 * n)
        assert not poisoned[:n].any()  # clean rows keep their digits row ids
        assert torch.equal(client.record_ids[:n], clean[cid].record_ids)
        assert (client.record_ids[poisoned] >= POISON_ID_OFFSET).all()
        bad_x, bad_y = client.tensors["x"][poisoned], client.tensors["y"][poisoned]
        assert (bad_y == 7).all()
        assert (bad_x[:, list(TRIGGER_PIXELS)] == 1.0).all()
        assert torch.equal(client.class_labels, client.tensors["y"])
        # selecting the clean rows gives back the clean client
        assert torch.equal(client.select(~poisoned).tensors["x"], clean[cid].tensors["x"])


def test_backdoor_is_seeded(split) -> None:
    kwargs = {"backdoor_clients": (0,), "backdoor_fraction": 0.3}
    a = digits_clients(split, "dirichlet", 4, seed=2, **kwargs)
    b = digits_clients(split, "dirichlet", 4, seed=2, **kwargs)
    assert torch.equal(a[0].tensors["x"], b[0].tensors["x"])
    assert torch.equal(a[0].record_ids, b[0].record_ids)


def test_bad_arguments_raise(split) -> None:
    with pytest.raises(ValueError, match="unknown partition"):
        digits_clients(split, "pathological", 10, seed=0)
    with pytest.raises(ValueError, match=r"backdoor clients \[10\]"):
        digits_clients(split, "iid", 10, seed=0, backdoor_clients=(10,))
