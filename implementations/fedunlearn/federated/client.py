"""Client data: the examples one federated client holds, with the ids a forget request names."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ClientData:
    """Examples held by one client.

    Attributes:
        client_id: Identifier of the client in the federation.
        tensors: Model inputs and targets, every tensor with the same first dimension
            (``{"x", "y"}`` for classification, ``{"input_ids", "labels", "attention_mask"}`` for
            language modelling).
        record_ids: One id per example; a record-level forget request names these.
        owner_ids: One id per example naming its data owner (a person); defaults to ``record_ids``.
        class_labels: One class per example for class-level requests (``None`` for text).
    """

    client_id: int
    tensors: dict[str, torch.Tensor]
    record_ids: torch.Tensor
    owner_ids: torch.Tensor = field(default=None)  # type: ignore[assignment]
    class_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.record_ids)
        for name, tensor in self.tensors.items():
            if len(tensor) != n:
                raise ValueError(
                    f"client {self.client_id}: tensor {name!r} has {len(tensor)} rows, expected {n}"
                )
        if self.owner_ids is None:
            object.__setattr__(self, "owner_ids", self.record_ids.clone())
        if len(self.owner_ids) != n:
            raise ValueError(f"client {self.client_id}: owner_ids has {len(self.owner_ids)} rows")

    @property
    def num_samples(self) -> int:
        """Number of examples (the FedAvg weight)."""
        return len(self.record_ids)

    def select(self, keep: torch.Tensor) -> ClientData:
        """A copy holding only the examples where the boolean mask ``keep`` is true."""
        return ClientData(
            client_id=self.client_id,
            tensors={k: v[keep] for k, v in self.tensors.items()},
            record_ids=self.record_ids[keep],
            owner_ids=self.owner_ids[keep],
            class_labels=None if self.class_labels is None else self.class_labels[keep],
        )

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mini-batch of rows ``index``."""
        return {k: v[index] for k, v in self.tensors.items()}
