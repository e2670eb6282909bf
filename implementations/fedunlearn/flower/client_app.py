"""The ClientApp: one SuperNode trains one partition with the package's
[`client_update`][fedunlearn.federated.loop.client_update].

A SuperNode started with ``--node-config "partition-id=N"`` serves client ``N`` of the scenario
named in the run config, which the ClientApp rebuilds from its seed. It uses one torch thread
unless the node config says otherwise (``"partition-id=N torch-threads=4"``): the embedded models
are tiny, and SuperNodes sharing a machine that each take every core slow each other down. It
answers two messages:

- ``query``: its partition id and how many examples it holds, in all and after the forget request
  (``num-retained``), so the ServerApp can address clients by id and leave out the forgotten ones;
- ``train``: the global state (``ArrayRecord`` ``"state"``) and a ``ConfigRecord`` ``"config"``
  with ``round``, ``retained`` (train on the data kept after the forget request only),
  ``local-epochs`` and ``local-steps`` (overrides, negative = the scenario's). It replies with the
  update $\\Delta^k_t$ (``ArrayRecord`` ``"update"``) and a ``MetricRecord`` ``"metrics"`` with
  ``partition-id``, ``num-examples`` (the FedAvg weight) and ``client-steps``.

The data order of client ``N`` in round ``t`` is derived from ``(seed, t, N)`` inside
``client_update``, so a Flower client takes exactly the mini-batches of its in-process twin.
Forgotten examples never leave the client: under ``retained`` it drops them itself.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedunlearn.federated.client import ClientData
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.loop import client_update
from fedunlearn.flower.settings import (
    RunSettings,
    partition_id,
    record_to_state,
    state_to_record,
    torch_threads,
)
from fedunlearn.unlearning.requests import split_clients
from fedunlearn.unlearning.scenarios import Scenario

app = ClientApp()


def _partition(context: Context) -> tuple[Scenario, int, ClientData]:
    torch.set_num_threads(torch_threads(context.node_config))
    scenario = RunSettings.from_run_config(context.run_config).build_scenario()
    cid = partition_id(context.node_config)
    if cid not in scenario.clients:
        raise ValueError(f"partition-id={cid} is not a client of {scenario.name!r} "
                         f"(clients {sorted(scenario.clients)})")
    return scenario, cid, scenario.clients[cid]


def retained_part(scenario: Scenario, data: ClientData) -> ClientData | None:
    """What client ``data`` keeps after the scenario's forget request (``None`` if nothing)."""
    retained, _ = split_clients({data.client_id: data}, scenario.request)
    return retained.get(data.client_id)


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Reply with this node's partition id and example counts."""
    scenario, cid, data = _partition(context)
    kept = retained_part(scenario, data)
    reply = ConfigRecord({"partition-id": cid, "num-examples": data.num_samples,
                          "num-retained": 0 if kept is None else kept.num_samples})
    return Message(RecordDict({"node": reply}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Run ``client_update`` from the received state and reply with the update."""
    scenario, cid, data = _partition(context)
    instruction = message.content["config"]
    if bool(instruction["retained"]):
        data = retained_part(scenario, data)
        if data is None:
            raise ValueError(f"client {cid} keeps no example after the forget request; "
                             "the ServerApp should not have sampled it")
    config = scenario.config
    if int(instruction["local-steps"]) >= 0:
        config = replace(config, local_steps=int(instruction["local-steps"]))
    epochs = float(instruction["local-epochs"])
    counter = CostCounter()
    task = scenario.task
    update = client_update(task, task.build_model(), record_to_state(message.content["state"]), data,
                           config, int(instruction["round"]), counter,
                           local_epochs=epochs if epochs >= 0 else None)
    metrics = MetricRecord({"partition-id": cid, "num-examples": data.num_samples,
                            "client-steps": counter.client_steps})
    return Message(RecordDict({"update": state_to_record(update), "metrics": metrics}), reply_to=message)
