r"""The ClientApp: one SuperNode serves one client of the federation through the client seam.

A SuperNode started with ``--node-config "partition-id=N"`` serves client ``N`` of the scenario
named in the run config, which the ClientApp rebuilds from its seed (no data travels). It uses one
torch thread unless the node config says otherwise (``"partition-id=N torch-threads=4"``): the
embedded models are tiny, and SuperNodes sharing a machine that each take every core slow each
other down. It answers the three messages of
[`FlowerPool`][fedunlearn.flower.pool.FlowerPool] (formats in
[`settings`][fedunlearn.flower.settings]):

- ``query``: its partition id and example count and, when the message carries a plan, how many
  examples the plan selects (the forget request is in the plan);
- ``train``: [`client_update`][fedunlearn.federated.training.client_update] from the received
  state under the received [`LocalPlan`][fedunlearn.federated.training.LocalPlan] and
  [`FederationConfig`][fedunlearn.federated.training.FederationConfig]; it replies with the
  update $\Delta^k_t$, the number of examples trained on and the local steps taken;
- ``evaluate``: a registered [measure][fedunlearn.federated.measures] of the received state on
  the plan's data, e.g. the loss for a stopping rule (sums and a count, never the examples).

The data order of client ``N`` in round ``t`` is derived from ``(seed, t, N)`` inside
``client_update``, so a Flower client takes exactly the mini-batches of its in-process twin.
Forgotten examples never leave the client: the plan's data selection happens here.

Every message starts a fresh ClientApp process, so imports are paid per message. The module
imports torch and the scenarios only in the handlers that need them; a discovery query is
answered from a small file the SuperNode's first query wrote (its example count, under
``$FEDUNLEARN_CACHE/flower/``, keyed by scenario, seed, client and a digest of the code that
builds the data; ``FEDUNLEARN_NO_CACHE=1`` turns it off). A plan may name an objective or local
optimiser (or a request a measure) that an entry registers when it is imported (e.g.
``"diag-fisher"``); only then does
the ClientApp import the catalog's entries ([`discover`][fedunlearn.catalog.discover]).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedunlearn.flower.settings import (
    RunSettings,
    config_from_record,
    partition_id,
    plan_from_content,
    record_to_state,
    state_to_record,
    torch_threads,
)
from fedunlearn.paths import cache_dir, source_digest

if TYPE_CHECKING:
    from torch import nn

    from fedunlearn.federated.client import ClientData
    from fedunlearn.federated.task import Task

app = ClientApp()

#: Package paths whose source decides a client's data (the key of the cached example count).
DATA_SOURCES = ("data", "federated", "unlearning/scenarios.py")


@lru_cache(maxsize=4)
def _client(scenario: str, seed: int, num_clients: int, cid: int) -> tuple[Task, nn.Module, ClientData, list[int]]:
    """The task, a model, client ``cid``'s data and every client id of the scenario (cached for
    the life of the process)."""
    from fedunlearn.unlearning.scenarios import build_scenario

    built = build_scenario(scenario, seed=seed)
    _check_client(scenario, num_clients, cid, sorted(built.clients))
    return built.task, built.task.build_model(), built.clients[cid], sorted(built.clients)


def _check_client(scenario: str, num_clients: int, cid: int, clients: list[int]) -> None:
    kept = clients[:num_clients] if num_clients > 0 else clients
    if cid not in kept:
        raise ValueError(f"partition-id={cid} is not a client of {scenario!r} with num-clients={num_clients} "
                         f"(clients {kept})")


def _setup(context: Context) -> tuple[int, Task, nn.Module, ClientData]:
    import torch

    torch.set_num_threads(torch_threads(context.node_config))
    settings = RunSettings.from_run_config(context.run_config, check_method=False)
    cid = partition_id(context.node_config)
    return (cid, *_client(settings.scenario, settings.seed, settings.num_clients, cid)[:3])


def num_examples(context: Context) -> int:
    """This node's example count: from the node's cache file, else from the data (then cached)."""
    settings = RunSettings.from_run_config(context.run_config, check_method=False)
    cid = partition_id(context.node_config)
    use_cache = os.environ.get("FEDUNLEARN_NO_CACHE", "0") in ("", "0")
    file = cache_dir() / "flower" / f"{settings.scenario}-seed{settings.seed}-client{cid}-{source_digest(*DATA_SOURCES)[:20]}.json"
    if use_cache and file.is_file():
        facts = json.loads(file.read_text())
        _check_client(settings.scenario, settings.num_clients, cid, facts["clients"])
        return int(facts["num-examples"])
    _setup(context)
    _, _, data, clients = _client(settings.scenario, settings.seed, settings.num_clients, cid)
    if use_cache:
        facts = {"num-examples": data.num_samples, "clients": clients}
        file.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(facts))
        os.replace(staging, file)
    return data.num_samples


def ensure_registered(plan: Mapping, config: Mapping | None = None, measure: str | None = None) -> None:
    """Import the catalog's entries if the plan (or config) names an objective or optimiser, or
    the request names a measure, that is not registered in this process yet."""
    from fedunlearn.federated.measures import MEASURES
    from fedunlearn.federated.objectives import OBJECTIVES
    from fedunlearn.federated.training import OPTIMIZERS

    objective = plan.get("objective.name")
    optimizers = {name for name in (plan.get("optimizer"), (config or {}).get("optimizer")) if name}
    if ((objective is not None and objective not in OBJECTIVES.names())
            or not optimizers <= set(OPTIMIZERS.names())
            or (measure is not None and measure not in MEASURES.names())):
        from fedunlearn import catalog

        catalog.discover(strict=False)


def selected(values: Mapping, data: ClientData) -> int:
    """How many of ``data``'s examples the plan config ``values`` selects."""
    from fedunlearn.federated.training import LocalPlan

    plan = LocalPlan.from_config({k: v for k, v in values.items() if k == "data" or k.startswith("request.")})
    return plan.select(data).num_samples


@app.query()
def query(message: Message, context: Context) -> Message:
    """Reply with this node's client id and example count (and the plan's selection, if asked)."""
    answer = {"partition-id": partition_id(context.node_config)}
    if "plan" in message.content:
        _, _, _, data = _setup(context)
        answer.update({"num-examples": data.num_samples,
                       "num-selected": selected(dict(message.content["plan"]), data)})
    else:
        answer["num-examples"] = num_examples(context)
    return Message(RecordDict({"node": ConfigRecord(answer)}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Run ``client_update`` from the received state under the received plan and config."""
    from fedunlearn.federated.costs import CostCounter
    from fedunlearn.federated.training import client_update

    cid, task, model, data = _setup(context)
    content = message.content
    ensure_registered(dict(content["plan"]), dict(content["config"]))
    plan = plan_from_content(content)
    config = config_from_record(content["config"])
    steps = CostCounter()
    update, n = client_update(task, model, record_to_state(content["state"]), data, config,
                              int(content["round"]["index"]), plan, steps)
    metrics = MetricRecord({"partition-id": cid, "num-examples": n, "client-steps": steps.client_steps})
    return Message(RecordDict({"update": state_to_record(update), "metrics": metrics}), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Reply with the named measure's sums of the received state over the plan's data."""
    from fedunlearn.federated.measures import client_measure

    cid, task, model, data = _setup(context)
    content = message.content
    name = str(content["measure"]["name"])
    ensure_registered(dict(content["plan"]), measure=name)
    plan = plan_from_content(content)
    sums, n = client_measure(task, model, record_to_state(content["state"]), plan.select(data), name)
    metrics = MetricRecord({"partition-id": cid, "num-examples": int(n)})
    return Message(RecordDict({"sums": state_to_record(sums), "metrics": metrics}), reply_to=message)
