"""Cost counters shared by training, retraining and every unlearning method.

Costs are counted where work happens (the federated loop and local training), never estimated by
a method. Unlearning cost ratios (``rho_steps``, ``rho_time``, ``rho_comm``) divide two counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch


def state_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Bytes needed to send or store a state dict (tensor payload only)."""
    return sum(t.numel() * t.element_size() for t in state.values())


@dataclass
class CostCounter:
    """Mutable tally of the work one procedure performed.

    Attributes:
        client_steps: Optimiser steps taken on clients (one mini-batch each).
        server_steps: Optimiser steps or update estimations taken on the server.
        client_rounds: Client participations (one client in one round).
        bytes_down: Bytes sent from the server to clients.
        bytes_up: Bytes sent from clients to the server.
        history_bytes: Bytes of training history stored.
        wall_time_s: Wall-clock seconds spent inside [`timed`][fedunlearn.federated.costs.CostCounter.timed].
    """

    client_steps: int = 0
    server_steps: int = 0
    client_rounds: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    history_bytes: int = 0
    wall_time_s: float = 0.0

    @property
    def bytes_communicated(self) -> int:
        """Bytes in both directions."""
        return self.bytes_down + self.bytes_up

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Add the wall time of the enclosed block (nested blocks are not double counted)."""
        if getattr(self, "_timing", False):
            yield
            return
        self._timing = True
        start = time.perf_counter()
        try:
            yield
        finally:
            self.wall_time_s += time.perf_counter() - start
            self._timing = False

    def add(self, other: CostCounter) -> None:
        """Add another counter into this one."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict:
        """Plain-data view including ``bytes_communicated``."""
        return {**asdict(self), "bytes_communicated": self.bytes_communicated}
