"""Forget requests at three granularities, validated against the federation.

- ``client``: remove every contribution of one or more clients (the right to be forgotten of a
  participant, or the removal of malicious clients).
- ``class``: remove one class label from every client.
- ``records``: remove specific records (e.g. all records of one person, or one canary).

[`split_clients`][fedunlearn.federated.requests.split_clients] turns a request into the data the
federation keeps and the data it must forget; the retrain oracle trains on the first only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from fedunlearn.federated.client import ClientData

GRANULARITIES = ("client", "class", "records")


class ForgetRequestError(ValueError):
    """A forget request that cannot be served as given."""


@dataclass(frozen=True)
class ForgetRequest:
    """What to forget.

    Attributes:
        kind: ``"client"``, ``"class"`` or ``"records"``.
        clients: Client ids (``kind == "client"``).
        label: Class label (``kind == "class"``).
        record_ids: Record ids (``kind == "records"``).
    """

    kind: str
    clients: tuple[int, ...] = ()
    label: int | None = None
    record_ids: tuple[int, ...] = ()

    @classmethod
    def forget_clients(cls, *client_ids: int) -> ForgetRequest:
        """Forget whole clients."""
        return cls("client", clients=tuple(sorted(int(c) for c in client_ids)))

    @classmethod
    def forget_class(cls, label: int) -> ForgetRequest:
        """Forget one class everywhere."""
        return cls("class", label=int(label))

    @classmethod
    def forget_records(cls, record_ids: Iterable[int]) -> ForgetRequest:
        """Forget specific records wherever they are."""
        return cls("records", record_ids=tuple(sorted(int(r) for r in record_ids)))

    def describe(self) -> str:
        """One line for tables and logs."""
        if self.kind == "client":
            return f"client {', '.join(map(str, self.clients))}"
        if self.kind == "class":
            return f"class {self.label}"
        return f"{len(self.record_ids)} records"


def validate(request: ForgetRequest, clients: Mapping[int, ClientData], history_clients: set[int] | None = None) -> None:
    """Check a request against the federation (and, for client requests, its history).

    Raises:
        ForgetRequestError: Naming the unknown client, absent class or records not held by any
            client, a client that never took part in training, or an empty request.
    """
    if request.kind not in GRANULARITIES:
        raise ForgetRequestError(f"unknown request kind {request.kind!r}; use one of {GRANULARITIES}")
    if request.kind == "client":
        if not request.clients:
            raise ForgetRequestError("client request names no client")
        unknown = [c for c in request.clients if c not in clients]
        if unknown:
            raise ForgetRequestError(f"unknown client(s) {unknown}; the federation has clients {sorted(clients)}")
        if history_clients is not None:
            absent = [c for c in request.clients if c not in history_clients]
            if absent:
                raise ForgetRequestError(f"client(s) {absent} never took part in training; nothing to forget")
        if len(request.clients) >= len(clients):
            raise ForgetRequestError("a request cannot forget every client")
    elif request.kind == "class":
        labels = [c.class_labels for c in clients.values() if c.class_labels is not None]
        if not labels:
            raise ForgetRequestError("this federation's data has no class labels; class requests do not apply")
        present = sorted(set(torch.cat(labels).tolist()))
        if request.label not in present:
            raise ForgetRequestError(f"class {request.label} is not present; classes held: {present}")
    else:
        if not request.record_ids:
            raise ForgetRequestError("records request names no record")
        held = set(torch.cat([c.record_ids for c in clients.values()]).tolist())
        missing = [r for r in request.record_ids if r not in held]
        if missing:
            raise ForgetRequestError(
                f"record(s) {missing[:10]}{' ...' if len(missing) > 10 else ''} are not held by any client"
            )


def forget_mask(data: ClientData, request: ForgetRequest) -> torch.Tensor:
    """Boolean mask of the examples of ``data`` that the request removes."""
    n = data.num_samples
    if request.kind == "client":
        return torch.full((n,), data.client_id in request.clients, dtype=torch.bool)
    if request.kind == "class":
        if data.class_labels is None:  # text without class labels: a class request removes nothing
            return torch.zeros(n, dtype=torch.bool)
        return data.class_labels == request.label
    return torch.isin(data.record_ids, torch.tensor(request.record_ids, dtype=data.record_ids.dtype))


def split_clients(clients: Mapping[int, ClientData], request: ForgetRequest) -> tuple[dict[int, ClientData], dict[int, ClientData]]:
    """Split every client's data into what is kept and what is forgotten.

    Returns:
        ``(retained, forgotten)``: client id -> data. A client left with no example is absent from
        ``retained``; a client with nothing to forget is absent from ``forgotten``.
    """
    retained, forgotten = {}, {}
    for cid, data in clients.items():
        mask = forget_mask(data, request)
        if bool((~mask).any()):
            retained[cid] = data.select(~mask) if bool(mask.any()) else data
        if bool(mask.any()):
            forgotten[cid] = data.select(mask)
    return retained, forgotten


def affected_clients(clients: Mapping[int, ClientData], request: ForgetRequest) -> list[int]:
    """Clients holding at least one example the request removes."""
    return sorted(split_clients(clients, request)[1])


def request_to_dict(request: ForgetRequest) -> dict:
    """Plain data (JSON, a Flower ``ConfigRecord``) describing ``request``."""
    return {"kind": request.kind, "clients": list(request.clients),
            "label": -1 if request.label is None else request.label, "record_ids": list(request.record_ids)}


def request_from_dict(values: Mapping) -> ForgetRequest:
    """Inverse of [`request_to_dict`][fedunlearn.federated.requests.request_to_dict].

    Raises:
        ForgetRequestError: On an unknown kind.
    """
    kind = str(values["kind"])
    if kind not in GRANULARITIES:
        raise ForgetRequestError(f"unknown request kind {kind!r}; use one of {GRANULARITIES}")
    label = int(values.get("label", -1))
    return ForgetRequest(kind, clients=tuple(int(c) for c in values.get("clients", ())),
                         label=None if label < 0 else label,
                         record_ids=tuple(int(r) for r in values.get("record_ids", ())))
