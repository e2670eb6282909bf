r"""Run config of the Flower app, and the message format both sides share.

Both the ServerApp and every ClientApp rebuild the *same* scenario from the run config (its name
and seed, optionally restricted to the first ``num-clients`` clients and to ``rounds`` rounds), so
no data and no partition map is ever sent: a SuperNode only needs ``--node-config
"partition-id=N"``. The in-process twin of a Flower run calls
[`RunSettings.build_scenario`][fedunlearn.flower.settings.RunSettings.build_scenario] too.

| key | default | meaning |
|---|---|---|
| ``mode`` | ``"train"`` | ``"train"``: train the federation, save the history; ``"unlearn"``: serve a forget request |
| ``scenario`` | ``"digits-backdoor"`` | a name of [`build_scenario`][fedunlearn.unlearning.scenarios.build_scenario] |
| ``seed`` | ``0`` | scenario seed (partition, initialisation, sampling, data order) |
| ``num-clients`` | ``0`` | keep the scenario's first clients only (0 = all) |
| ``rounds`` | ``0`` | training rounds (0 = the scenario's) |
| ``record-every`` | ``0`` | history interval $\Delta t$ of a training run (0 = the scenario's) |
| ``history-path`` | ``""`` | absolute directory of the saved training history |
| ``out-dir`` | ``""`` | absolute directory for results (state, metrics) |
| ``method`` | ``"retrain"`` | unlearning method: any registered one ([`available_methods`][fedunlearn.unlearning.registry.available_methods]); in a training run, a method that owns its training phase trains the federation its way |
| ``method-config`` | ``""`` | JSON object of the method's config overrides, e.g. ``'{"rounds": 1}'`` |
| ``forget-clients`` | ``""`` | comma-separated client ids to forget (``""`` = the scenario's request) |
| ``node-wait-s`` | ``120.0`` | how long the ServerApp waits for the SuperNodes it needs |
| ``round-timeout-s`` | ``300.0`` | how long it waits for the replies of one exchange (a round) |

Messages (the ServerApp's [`FlowerPool`][fedunlearn.flower.pool.FlowerPool] sends, the ClientApp
answers):

| type | content | reply |
|---|---|---|
| ``query`` | optionally ``"plan"`` | ``ConfigRecord "node"``: ``partition-id``, ``num-examples`` (and ``num-selected`` under the plan) |
| ``train`` | ``"state"``, ``"plan"``, ``"config"``, ``"round"``, ``"states.<name>"`` | ``ArrayRecord "update"``, ``MetricRecord "metrics"``: ``partition-id``, ``num-examples``, ``client-steps`` |
| ``evaluate`` | ``"state"``, ``"plan"``, ``"states.<name>"`` | ``MetricRecord "metrics"``: ``partition-id``, ``loss-sum``, ``num-examples`` |

``"plan"`` is [`LocalPlan.to_config`][fedunlearn.federated.training.LocalPlan.to_config] (the
forget request travels in it; the client selects its data itself), ``"config"`` the
[`FederationConfig`][fedunlearn.federated.training.FederationConfig], and each state the plan's
objective needs (``plan.states``) travels as its own ``ArrayRecord``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and the scenarios are imported when used: a ClientApp answering a
    # discovery query from its cache needs neither (each message starts a fresh process)
    import torch

    from fedunlearn.federated.task import State
    from fedunlearn.federated.training import FederationConfig, LocalPlan
    from fedunlearn.unlearning.scenarios import Scenario

#: Message type of discovery and sample counts (Flower's ``MessageType.QUERY``).
QUERY = "query"
#: Message type of local training (Flower's ``MessageType.TRAIN``).
TRAIN = "train"
#: Message type of a loss evaluation (Flower's ``MessageType.EVALUATE``).
EVALUATE = "evaluate"
#: Prefix of the records that carry ``plan.states``.
STATE_PREFIX = "states."


@dataclass(frozen=True)
class RunSettings:
    """The Flower app's run config (``[tool.flwr.app.config]``), typed.

    Attributes:
        mode: ``"train"`` or ``"unlearn"``.
        scenario: Scenario name.
        seed: Scenario seed.
        num_clients: Keep the first this many clients (0 = all).
        rounds: Training rounds (0 = the scenario's).
        record_every: History interval of a training run (0 = the scenario's).
        history_path: Directory of the training history (absolute).
        out_dir: Directory for results (absolute).
        method: Unlearning method (``mode = "unlearn"``), any registered name; a training run
            with a method that owns its training phase trains that way.
        method_config: JSON object of overrides of the method's config (``""``: the defaults).
        forget_clients: Comma-separated client ids to forget (empty: the scenario's request).
        node_wait_s: Seconds to wait for the needed SuperNodes.
        round_timeout_s: Seconds to wait for the replies of one exchange.
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
    method_config: str = ""
    forget_clients: str = ""
    node_wait_s: float = 120.0
    round_timeout_s: float = 300.0

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], check_method: bool = True) -> RunSettings:
        """Read a Flower run config (kebab-case keys); absent keys keep their defaults.

        Args:
            run_config: The run config.
            check_method: Also check ``method`` and ``method-config`` against the registered
                methods (imports every entry; the ClientApp, which never runs a method, skips it).

        Raises:
            ValueError: On an unknown key, a mode other than train/unlearn, a ``method-config``
                that is not a JSON object, or (``check_method``) an unknown method or setting.
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
        settings.method_overrides()
        if check_method:
            settings.unlearning_method()
        return settings

    def method_overrides(self) -> dict[str, Any]:
        """``method-config`` as keyword overrides of the method's config.

        Raises:
            ValueError: If it is not a JSON object of scalars.
        """
        if not self.method_config.strip():
            return {}
        example = "e.g. method-config='{\"rounds\": 1}'"
        try:
            overrides = json.loads(self.method_config)
        except json.JSONDecodeError as exc:
            raise ValueError(f"method-config={self.method_config!r} is not valid JSON ({exc}); {example}") from exc
        if not isinstance(overrides, dict):
            raise ValueError(
                f"method-config must be a JSON object, got {self.method_config!r}; {example}")
        bad = sorted(k for k, v in overrides.items() if not isinstance(v, (str, int, float, bool, type(None))))
        if bad:
            raise ValueError(f"method-config values must be scalars; not {bad}")
        return overrides

    def unlearning_method(self):
        """The [`UnlearningMethod`][fedunlearn.unlearning.base.UnlearningMethod] named by
        ``method``, its config changed by ``method-config``.

        Raises:
            ValueError: On an unknown method (listing the registered ones), an unknown setting or
                a value of the wrong type.
        """
        from fedunlearn.unlearning.registry import get_method  # imports every entry

        return get_method(self.method, **self.method_overrides())

    def build_scenario(self) -> Scenario:
        """The scenario both sides rebuild: restricted clients, overridden rounds and request."""
        from fedunlearn.unlearning.scenarios import build_scenario

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
    import torch

    return {key: torch.from_numpy(array.numpy().copy()) for key, array in record.items()}


def plan_records(plan: LocalPlan) -> dict:
    """The records that carry ``plan``: ``"plan"`` (its config) and one ``"states.<name>"`` per
    state it carries."""
    from flwr.app import ConfigRecord

    records: dict = {"plan": ConfigRecord(plan.to_config())}
    records.update({STATE_PREFIX + name: state_to_record(state) for name, state in plan.states.items()})
    return records


def plan_from_content(content) -> LocalPlan:
    """Inverse of [`plan_records`][fedunlearn.flower.settings.plan_records] (on a message's content).

    Raises:
        KeyError: If the plan names an objective that is not registered in this process.
    """
    from fedunlearn.federated.training import LocalPlan

    states = {key[len(STATE_PREFIX):]: record_to_state(content[key])
              for key in content if key.startswith(STATE_PREFIX)}
    return LocalPlan.from_config(dict(content["plan"]), states)


def config_record(config: FederationConfig):
    """A [`FederationConfig`][fedunlearn.federated.training.FederationConfig] as a ``ConfigRecord``."""
    from flwr.app import ConfigRecord

    return ConfigRecord(config.as_dict())


def config_from_record(record) -> FederationConfig:
    """Inverse of [`config_record`][fedunlearn.flower.settings.config_record]."""
    from fedunlearn.federated.training import FederationConfig

    return FederationConfig(**dict(record))
