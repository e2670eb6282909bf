"""Run config of the Flower app, and what both sides derive from it.

Both the ServerApp and every ClientApp rebuild the *same* scenario from the run config (its name
and seed, optionally restricted to the first ``num-clients`` clients and to ``rounds`` rounds), so
no data and no partition map is ever sent: a SuperNode only needs ``--node-config
"partition-id=N"``. The in-process reference of a Flower run calls
[`RunSettings.build_scenario`][fedunlearn.flower.settings.RunSettings.build_scenario] too.

| key | default | meaning |
|---|---|---|
| ``mode`` | ``"train"`` | ``"train"``: FedAvg, save the history; ``"unlearn"``: serve a forget request |
| ``scenario`` | ``"digits-backdoor"`` | a name of [`build_scenario`][fedunlearn.unlearning.scenarios.build_scenario] |
| ``seed`` | ``0`` | scenario seed (partition, initialisation, sampling, data order) |
| ``num-clients`` | ``0`` | keep the scenario's first clients only (0 = all) |
| ``rounds`` | ``0`` | training rounds (0 = the scenario's) |
| ``record-every`` | ``0`` | history interval $\\Delta t$ (0 = the scenario's; FedEraser needs its own) |
| ``history-path`` | ``""`` | absolute directory of the saved training history |
| ``out-dir`` | ``""`` | absolute directory for results (state, metrics) |
| ``method`` | ``"retrain"`` | unlearning method: ``retrain``, ``continue-fedavg``, ``federaser`` |
| ``continue-rounds`` | ``5`` | rounds of ``continue-fedavg`` |
| ``forget-clients`` | ``""`` | comma-separated client ids to forget (``""`` = the scenario's request) |
| ``node-wait-s`` | ``120.0`` | how long the ServerApp waits for the SuperNodes it needs |
| ``round-timeout-s`` | ``300.0`` | how long it waits for the replies of one round |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from fedunlearn.federated.task import State
from fedunlearn.unlearning.scenarios import Scenario, build_scenario

#: Message type of the discovery request (Flower's ``MessageType.QUERY``).
QUERY = "query"
#: Message type of local training (Flower's ``MessageType.TRAIN``).
TRAIN = "train"
#: Unlearning methods the ServerApp can serve over Flower.
FLOWER_METHODS = ("retrain", "continue-fedavg", "federaser")


@dataclass(frozen=True)
class RunSettings:
    """The Flower app's run config (``[tool.flwr.app.config]``), typed.

    Attributes:
        mode: ``"train"`` or ``"unlearn"``.
        scenario: Scenario name.
        seed: Scenario seed.
        num_clients: Keep the first this many clients (0 = all).
        rounds: Training rounds (0 = the scenario's).
        record_every: History interval (0 = the scenario's).
        history_path: Directory of the training history (absolute).
        out_dir: Directory for results (absolute).
        method: Unlearning method (``mode = "unlearn"``).
        continue_rounds: Extra rounds of ``continue-fedavg``.
        forget_clients: Comma-separated client ids to forget (empty: the scenario's request).
        node_wait_s: Seconds to wait for the needed SuperNodes.
        round_timeout_s: Seconds to wait for the replies of one round.
    """

    mode: str = "train"
    scenario: str = "digits-backdoor"
    seed: int = 0
    num_clients: int = 0
    rounds: int = 0
    record_every: int = 0
    history_path: str = ""
    out_dir: str = ""
    method: str = "retrain"
    continue_rounds: int = 5
    forget_clients: str = ""
    node_wait_s: float = 120.0
    round_timeout_s: float = 300.0

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Read a Flower run config (kebab-case keys); absent keys keep their defaults.

        Raises:
            ValueError: On an unknown key, mode or method.
        """
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise ValueError(f"unknown run config key(s) {unknown}; known keys: {sorted(known)}")
        values = {}
        for key, value in run_config.items():
            kind = {"int": int, "float": float, "str": str}[str(known[key].type)]
            values[known[key].name] = kind(value)
        settings = cls(**values)
        if settings.mode not in ("train", "unlearn"):
            raise ValueError(f"mode must be 'train' or 'unlearn', got {settings.mode!r}")
        if settings.method not in FLOWER_METHODS:
            raise ValueError(f"method {settings.method!r} does not run on Flower; use one of {FLOWER_METHODS}")
        return settings

    def build_scenario(self) -> Scenario:
        """The scenario both sides rebuild: restricted clients, overridden rounds and request."""
        forget = tuple(int(c) for c in self.forget_clients.replace(" ", "").split(",") if c)
        return build_scenario(self.scenario, seed=self.seed).restricted(
            self.num_clients, self.rounds, self.record_every, forget)

    def path(self, name: str) -> Path:
        """``history-path`` or ``out-dir`` as an absolute path.

        Raises:
            ValueError: If it is empty or relative (the ServerApp's working directory is Flower's).
        """
        value = getattr(self, name.replace("-", "_"))
        if not value:
            raise ValueError(f"run config {name!r} is empty; pass an absolute directory, e.g. "
                             f"flwr run ... --run-config '{name}=\"/tmp/fedunlearn/{name}\"'")
        path = Path(os.path.expanduser(value))
        if not path.is_absolute():
            raise ValueError(f"run config {name}={value!r} must be absolute: the ServerApp runs in a "
                             "working directory chosen by Flower")
        return path


def partition_id(node_config: Mapping[str, Any]) -> int:
    """The client id a SuperNode serves, from ``--node-config "partition-id=N"``.

    Raises:
        ValueError: If the node config has no ``partition-id``.
    """
    if "partition-id" not in node_config:
        raise ValueError("this SuperNode was started without --node-config 'partition-id=N'; "
                         f"its node config is {dict(node_config)}")
    return int(node_config["partition-id"])


def torch_threads(node_config: Mapping[str, Any]) -> int:
    """Torch threads of a ClientApp: node config ``torch-threads`` (default 1).

    Raises:
        ValueError: If it is not a positive integer.
    """
    threads = int(node_config.get("torch-threads", 1))
    if threads < 1:
        raise ValueError(f"node config torch-threads={threads}; it must be at least 1")
    return threads


def state_to_record(state: Mapping[str, torch.Tensor]):
    """A state dict as a Flower ``ArrayRecord`` (CPU tensors; dtypes numpy supports)."""
    from flwr.app import ArrayRecord

    return ArrayRecord.from_torch_state_dict({k: v.detach().cpu() for k, v in state.items()})


def record_to_state(record) -> State:
    """A Flower ``ArrayRecord`` as a state dict of writable tensors."""
    return {key: torch.from_numpy(array.numpy().copy()) for key, array in record.items()}
