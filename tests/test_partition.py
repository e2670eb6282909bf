"""Partitioners: disjoint, covering, seeded, and skewed the way their names say."""

from __future__ import annotations

import numpy as np
import pytest

from fedunlearn.federated import partition


def assert_disjoint_cover(parts: list[np.ndarray], num_examples: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == num_examples, "some example is missing or duplicated"
    assert np.array_equal(np.sort(joined), np.arange(num_examples))


def labels_of(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over clients of the entropy (nats) of the client's label distribution."""
    entropies = []
    for part in parts:
        counts = np.bincount(labels[part], minlength=labels.max() + 1)
        p = counts[counts > 0] / counts.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


# ------------------------------------------------------------------------------- iid


@pytest.mark.parametrize(("n", "k"), [(10, 3), (100, 10), (7, 7), (1001, 4)])
def test_iid_is_a_disjoint_cover_with_near_equal_sizes(n: int, k: int) -> None:
    parts = partition.iid(n, k, seed=3)
    assert len(parts) == k
    assert_disjoint_cover(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_seeded() -> None:
    first, again = partition.iid(50, 5, seed=1), partition.iid(50, 5, seed=1)
    other = partition.iid(50, 5, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize(("n", "k"), [(5, 0), (5, 6), (0, 1)])
def test_iid_rejects_impossible_splits(n: int, k: int) -> None:
    with pytest.raises(ValueError):
        partition.iid(n, k, seed=0)


# ------------------------------------------------------------------------------- dirichlet


def test_dirichlet_is_a_disjoint_cover_respecting_min_size() -> None:
    labels = labels_of(10, 60)
    parts = partition.dirichlet(labels, num_clients=8, alpha=0.2, seed=5, min_size=20)
    assert len(parts) == 8
    assert_disjoint_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= 20


def test_dirichlet_is_seeded() -> None:
    labels = labels_of(5, 40)
    first = partition.dirichlet(labels, 4, alpha=0.5, seed=9)
    again = partition.dirichlet(labels, 4, alpha=0.5, seed=9)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_smaller_alpha_gives_more_label_skew() -> None:
    labels = labels_of(10, 100)
    entropy = {
        alpha: np.mean(
            [
                mean_label_entropy(labels, partition.dirichlet(labels, 10, alpha, seed=s))
                for s in range(3)
            ]
        )
        for alpha in (0.1, 1.0, 100.0)
    }
    assert entropy[0.1] < entropy[1.0] < entropy[100.0]
    # alpha -> infinity approaches IID: nearly uniform over 10 classes (ln 10 = 2.30)
    assert entropy[100.0] > 0.95 * np.log(10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, "alpha must be positive"),
        ({"alpha": -1.0}, "alpha must be positive"),
        ({"alpha": 0.5, "min_size": 11}, "cannot give"),
    ],
)
def test_dirichlet_rejects_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        partition.dirichlet(labels_of(2, 50), num_clients=10, seed=0, **kwargs)


# ------------------------------------------------------------------------------- shards


def test_shards_is_a_disjoint_cover_with_few_classes_per_client() -> None:
    labels = labels_of(10, 100)
    parts = partition.shards(labels, num_clients=10, shards_per_client=2, seed=0)
    assert_disjoint_cover(parts, len(labels))
    assert {len(p) for p in parts} == {100}
    # two shards of 50 label-sorted examples: at most two classes per client here
    assert max(len(np.unique(labels[p])) for p in parts) <= 2
    assert mean_label_entropy(labels, parts) < mean_label_entropy(
        labels, partition.iid(len(labels), 10, seed=0)
    )


def test_shards_rejects_too_many_shards() -> None:
    with pytest.raises(ValueError, match="shards"):
        partition.shards(labels_of(2, 3), num_clients=4, shards_per_client=2, seed=0)


# ------------------------------------------------------------------------------- by_owner


def test_by_owner_puts_every_owner_on_exactly_one_client() -> None:
    owners = np.random.default_rng(0).integers(0, 23, size=200)
    parts = partition.by_owner(owners, num_clients=5, seed=4)
    assert_disjoint_cover(parts, len(owners))
    holders: dict[int, set[int]] = {}
    for client, part in enumerate(parts):
        for owner in np.unique(owners[part]):
            holders.setdefault(int(owner), set()).add(client)
    assert set(holders) == set(np.unique(owners).tolist())
    assert all(len(clients) == 1 for clients in holders.values())
    assert all(len(p) > 0 for p in parts)


def test_by_owner_rejects_fewer_owners_than_clients() -> None:
    with pytest.raises(ValueError, match="owners"):
        partition.by_owner(np.array([1, 1, 2, 2]), num_clients=3, seed=0)
