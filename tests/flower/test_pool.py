"""The Flower pool and both apps in one process (no deployment; fast).

A ``LocalGrid`` stands in for Flower's ``Grid``: it hands every pushed message to the real
ClientApp (``client_app.app``) with the context of the SuperNode it is addressed to, and returns
the reply when pulled. So the pool's messages, the ClientApp's handlers and the ServerApp's
``main`` run exactly as on a deployment, minus the processes and the network; the deployment
tests (``test_deployment.py``) check the same against real SuperNodes.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr", reason="Flower is not installed; pip install -e '.[flower]'")

from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import HistoryError, TrainingHistory
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.training import LocalPlan
from fedunlearn.flower import client_app, server_app
from fedunlearn.flower.pool import FlowerPool
from fedunlearn.flower.settings import RunSettings
from fedunlearn.unlearning.base import (
    TrainedFederation,
    history_fingerprint,
    run_method,
    train_federation,
)
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.registry import get_method

NUM_CLIENTS, ROUNDS = 3, 2
RUN_CONFIG = {"scenario": "digits-backdoor", "seed": 0, "num-clients": NUM_CLIENTS, "rounds": ROUNDS}
NODE = {0: 101, 1: 102, 2: 103}  # client id -> SuperNode id


class LocalGrid:
    """Flower's ``Grid`` interface, with the SuperNodes' ClientApps called in this process.

    Args:
        run_config: The run config every ClientApp sees.
        nodes: SuperNode id -> the partition id it serves.
        silent_after: SuperNode id -> number of messages it answers before going silent.
    """

    def __init__(self, run_config: dict, nodes: dict[int, int], silent_after: dict[int, int] | None = None) -> None:
        self.run_config = run_config
        self.nodes = dict(nodes)
        self.silent_after = dict(silent_after or {})
        self.replies: dict[str, Message] = {}
        self.received: dict[int, list[str]] = {node: [] for node in nodes}

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages) -> list[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id  # as Flower's Grid does
            node = message.metadata.dst_node_id
            self.received[node].append(message.metadata.message_type)
            ids.append(message.metadata.message_id)
            if len(self.received[node]) > self.silent_after.get(node, 10**9):
                continue
            context = Context(run_id=1, node_id=node, node_config={"partition-id": self.nodes[node]},
                              state=RecordDict(), run_config=self.run_config)
            try:
                reply = client_app.app(message, context)
            except Exception as exc:  # noqa: BLE001 - what Flower turns into an error reply
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
            self.replies[message.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """The identity a ServerApp process has (Flower's ``Message`` reads it)."""
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture(scope="module")
def scenario():
    torch.set_num_threads(1)
    return RunSettings(num_clients=NUM_CLIENTS, rounds=ROUNDS).build_scenario()


@pytest.fixture(scope="module")
def reference(scenario):
    """The in-process federation (history kept every round)."""
    return train_federation(scenario.task, scenario.pool(), scenario.config, server_inputs=scenario.server_inputs)


def flower_pool(nodes=None, **kwargs) -> FlowerPool:
    nodes = {NODE[c]: c for c in range(NUM_CLIENTS)} if nodes is None else nodes
    kwargs.setdefault("node_wait_s", 0.2)
    kwargs.setdefault("round_timeout_s", 5.0)
    return FlowerPool(LocalGrid(RUN_CONFIG, nodes), range(NUM_CLIENTS), poll_s=0.0, **kwargs)


def assert_same_state(got: dict, expected: dict, atol: float = 1e-6) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=atol, rtol=0, msg=key)


def test_training_through_the_flower_pool_equals_in_process(scenario, reference):
    flower = train_federation(scenario.task, flower_pool(), scenario.config, reference.init_state)
    assert_same_state(flower.final_state, reference.final_state, atol=0)
    assert flower.cost.as_dict() | {"wall_time_s": 0} == reference.cost.as_dict() | {"wall_time_s": 0}
    assert history_fingerprint(flower.history) == history_fingerprint(reference.history)


@pytest.mark.parametrize("name, overrides", [
    ("continue-fedavg", {"rounds": 1}),   # a control: rounds on the remaining clients
    ("federaser", {"interval": 1}),       # incremental: calibration on the remaining clients
    ("kd", {"epochs": 1}),                # server only: no client is asked anything
    ("rapid-retraining", {}),             # a registered optimiser, and losses asked of clients
    ("fedrecovery", {}),                  # perturbation, server only: residual subtraction and noise
])
def test_methods_through_the_flower_pool_equal_in_process(scenario, reference, name, overrides):
    method = get_method(name, **overrides)
    expected = run_method(method, reference, scenario.request)
    # the forgotten client 0 has no SuperNode: no method may need it
    pool = flower_pool({NODE[1]: 1, NODE[2]: 2})
    flower_run = server_app.federation_from_history(scenario, reference.history, pool, method)
    got = run_method(method, flower_run, scenario.request)
    assert_same_state(got.state, expected.state)
    assert got.cost.as_dict() | {"wall_time_s": 0} == expected.cost.as_dict() | {"wall_time_s": 0}
    if name in ("kd", "fedrecovery"):
        assert pool.grid.received == {NODE[1]: [], NODE[2]: []} and got.cost.client_steps == 0
    else:
        assert got.cost.client_steps > 0


#: Perturbation methods in which the forgetting client itself works (its SuperNode must serve it).
FORGETTING_CLIENT_METHODS = [
    ("negated-update", {"recovery_rounds": 1}),  # the family's control: a negated ordinary update
    ("pga-erasure", {"epochs": 1.0}),  # projected ascent, validation accuracy measured by a retained client
]


@pytest.mark.parametrize("name, overrides", FORGETTING_CLIENT_METHODS)
def test_methods_where_the_forgetting_client_works_equal_in_process(scenario, reference, name, overrides):
    method = get_method(name, **overrides)
    expected = run_method(method, reference, scenario.request)
    pool = flower_pool()
    flower_run = server_app.federation_from_history(scenario, reference.history, pool, method)
    got = run_method(method, flower_run, scenario.request)
    assert_same_state(got.state, expected.state)
    assert got.cost.as_dict() | {"wall_time_s": 0} == expected.cost.as_dict() | {"wall_time_s": 0}
    forgetting = [r for r in pool.log if r["kind"] == "train" and r["data"] == "forgotten"]
    assert forgetting and all(r["participants"] == [0] for r in forgetting)


def test_sample_counts_and_checks_ask_the_clients(scenario):
    pool, local = flower_pool(), InProcessPool(scenario.task, scenario.clients)
    for request in (ForgetRequest.forget_class(3), ForgetRequest.forget_clients(0)):
        for data in ("all", "retained", "forgotten"):
            plan = LocalPlan(data, request)
            assert pool.sample_counts(plan) == local.sample_counts(plan), (request, data)
    assert pool.grid.received[NODE[0]] == ["query"] * 3  # discovery, then class 3 retained and forgotten
    pool.sample_counts(LocalPlan("retained", ForgetRequest.forget_class(3)))  # cached
    assert len(pool.grid.received[NODE[0]]) == 3
    pool.check(ForgetRequest.forget_class(3))
    with pytest.raises(ForgetRequestError, match=r"unknown client\(s\) \[7\]; the federation has clients \[0, 1, 2\]"):
        pool.check(ForgetRequest.forget_clients(0, 7))
    with pytest.raises(ForgetRequestError, match="no client holds class 42"):
        pool.check(ForgetRequest.forget_class(42))
    with pytest.raises(ForgetRequestError, match="every client"):
        pool.check(ForgetRequest.forget_clients(0, 1, 2))


def test_pool_names_the_client_whose_supernode_is_missing_failed_or_silent(scenario, reference):
    missing = flower_pool({NODE[1]: 1, NODE[2]: 2})
    with pytest.raises(RuntimeError, match=r"no SuperNode serves client\(s\) \[0\] after 0 s; connected clients: \[1, 2\]"):
        missing.train(reference.init_state, [0, 1], 0, scenario.config, LocalPlan(), CostCounter())
    # a SuperNode that is listed but never answers (died without unregistering) delays only the
    # requests that need its client
    dead = flower_pool(node_wait_s=0.3)
    dead.grid.silent_after[NODE[0]] = 0
    dead.discover([1, 2])
    with pytest.raises(RuntimeError, match=r"client\(s\) \[0\] .*no answer yet from SuperNode\(s\) \[101\]"):
        dead.discover([0])
    silent = flower_pool(round_timeout_s=0.2)
    silent.grid.silent_after[NODE[1]] = 1  # answers discovery, then nothing
    with pytest.raises(RuntimeError, match=r"round 4: no reply from client 1 \(SuperNode 102\) within 0 s"):
        silent.train(reference.init_state, [0, 1, 2], 4, scenario.config, LocalPlan(), CostCounter())
    failing = flower_pool()
    unknown = LocalPlan(optimizer="no-such-optimiser")
    with pytest.raises(RuntimeError, match=r"round 0: client 0 \(SuperNode 101\) failed: KeyError: .*no-such-optimiser"):
        failing.train(reference.init_state, [0], 0, scenario.config, unknown, CostCounter())


def server_context(**config) -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={**RUN_CONFIG, **config})


def test_server_app_trains_then_unlearns_with_any_method(tmp_path, scenario, reference):
    paths = {"history-path": str(tmp_path / "history"), "out-dir": str(tmp_path / "out")}
    all_nodes = {NODE[c]: c for c in range(NUM_CLIENTS)}
    server_app.main(LocalGrid(RUN_CONFIG, all_nodes), server_context(**paths))
    trained = json.loads((tmp_path / "out" / "train" / "result.json").read_text())
    assert trained["status"] == "finished"
    assert trained["partitions"] == {str(c): d.num_samples for c, d in scenario.clients.items()}
    history = TrainingHistory.load(tmp_path / "history")
    assert_same_state(history.final_state, reference.final_state, atol=0)
    assert history.metadata["engine"] == "flower" and history.metadata["clients"] == [0, 1, 2]
    assert trained["metrics"] == pytest.approx(evaluate(scenario, reference.final_state), abs=1e-6)
    assert [r["participants"] for r in trained["rounds"]] == [[0, 1, 2]] * ROUNDS

    # federaser at its default interval (2): the history kept every round is thinned for it
    remaining = {NODE[1]: 1, NODE[2]: 2}
    server_app.main(LocalGrid(RUN_CONFIG, remaining), server_context(**paths, mode="unlearn", method="federaser"))
    unlearned = json.loads((tmp_path / "out" / "unlearn-federaser" / "result.json").read_text())
    expected = run_method(get_method("federaser"), _thinned(reference, 2), scenario.request)
    assert unlearned["status"] == "finished" and unlearned["method"] == "federaser"
    assert unlearned["cost"]["client_steps"] == expected.cost.client_steps
    assert unlearned["metrics"] == pytest.approx(evaluate(scenario, expected.state), abs=1e-6)

    # a failed unlearning run is written as such and leaves the history alone
    fingerprint = history_fingerprint(TrainingHistory.load(tmp_path / "history"))
    with pytest.raises(RuntimeError, match=r"client\(s\) \[1\]"):
        server_app.main(LocalGrid(RUN_CONFIG, {NODE[2]: 2}),
                        server_context(**paths, mode="unlearn", method="retrain", **{"node-wait-s": 0.2}))
    failed = json.loads((tmp_path / "out" / "unlearn-retrain" / "result.json").read_text())
    assert failed["status"] == "failed" and "no SuperNode serves client(s) [1]" in failed["error"]
    assert history_fingerprint(TrainingHistory.load(tmp_path / "history")) == fingerprint


def test_a_failed_training_run_keeps_its_partial_history(tmp_path):
    paths = {"history-path": str(tmp_path / "history"), "out-dir": str(tmp_path / "out"), "round-timeout-s": 0.2}
    grid = LocalGrid(RUN_CONFIG, {NODE[c]: c for c in range(NUM_CLIENTS)}, silent_after={NODE[1]: 2})
    with pytest.raises(server_app.TrainingFailed, match="round 1: no reply from client 1"):
        server_app.main(grid, server_context(**paths))
    failed = json.loads((tmp_path / "out" / "train" / "result.json").read_text())
    assert failed["status"] == "failed" and [r["round"] for r in failed["rounds"]] == [0]
    partial = TrainingHistory.load(failed["partial_history"])
    assert [r.round_index for r in partial.rounds] == [0] and partial.final_state is None
    assert not (tmp_path / "history").exists()


def _thinned(run, every):
    return replace(run, history=run.history.thinned(every), config=replace(run.config, record_every=every))


def test_discovery_answers_from_the_nodes_count_file(tmp_path, monkeypatch):
    """A SuperNode's first discovery query builds its data and keeps the example count; later
    queries (each a fresh ClientApp process on a deployment) read it back without the data."""
    monkeypatch.setenv("FEDUNLEARN_CACHE", str(tmp_path))
    first = flower_pool()
    first.discover([0, 1, 2])
    files = sorted((tmp_path / "flower").glob("digits-backdoor-seed0-client*.json"))
    assert len(files) == NUM_CLIENTS
    facts = json.loads(files[0].read_text())
    assert facts == {"num-examples": first.num_examples[0], "clients": list(range(10))}
    files[0].write_text(json.dumps({**facts, "num-examples": 5}))  # proves the file is what is read
    second = flower_pool()
    second.discover([0])
    assert second.num_examples[0] == 5
    monkeypatch.setenv("FEDUNLEARN_NO_CACHE", "1")
    third = flower_pool()
    third.discover([0])
    assert third.num_examples[0] == first.num_examples[0]


def test_client_imports_the_entries_only_for_a_name_it_does_not_know(monkeypatch):
    from fedunlearn import catalog

    calls = []
    monkeypatch.setattr(catalog, "discover", lambda strict=True: calls.append(strict))
    client_app.ensure_registered({"data": "all", "objective.name": "mean-loss"}, {"optimizer": "sgd"})
    client_app.ensure_registered({"objective.name": "distillation", "optimizer": "adam"})
    assert calls == []
    client_app.ensure_registered({"objective.name": "mean-loss"}, {"optimizer": "no-such-optimiser"})
    client_app.ensure_registered({"objective.name": "no-such-objective"})
    client_app.ensure_registered({"objective.name": "mean-loss"}, measure="loss")
    assert calls == [False, False]
    client_app.ensure_registered({"objective.name": "mean-loss"}, measure="no-such-measure")
    assert calls == [False, False, False]


@pytest.mark.slow
def test_lora_adapters_travel_through_the_flower_pool():
    """The federated LoRA language model through the Flower pool: only adapter tensors travel, and
    one round equals the in-process round (messages through the real ClientApp)."""
    config = {"scenario": "profiles-client", "seed": 0, "num-clients": 3, "rounds": 1}
    lm = RunSettings(scenario="profiles-client", num_clients=3, rounds=1).build_scenario()
    reference = train_federation(lm.task, lm.pool(), lm.config)
    pool = FlowerPool(LocalGrid(config, {NODE[c]: c for c in range(3)}), range(3), node_wait_s=0.2,
                      round_timeout_s=30.0, poll_s=0.0)
    flower = train_federation(lm.task, pool, lm.config, reference.init_state)
    assert all("lora_" in key for key in flower.final_state)
    assert_same_state(flower.final_state, reference.final_state)
    assert flower.cost.bytes_down == reference.cost.bytes_down

    # the language-model perturbation methods: the forgetting client ascends on its SuperNode and
    # answers the stopping rule's measure there; then a repair round without it
    for name, overrides in LM_FORGETTING_METHODS:
        method = get_method(name, **overrides)
        expected = run_method(method, reference, lm.request)
        pool = FlowerPool(LocalGrid(config, {NODE[c]: c for c in range(3)}), range(3), node_wait_s=0.2,
                          round_timeout_s=30.0, poll_s=0.0)
        got = run_method(method, server_app.federation_from_history(lm, reference.history, pool, method), lm.request)
        assert_same_state(got.state, expected.state, atol=1e-5)
        assert got.cost.client_steps == expected.cost.client_steps and got.cost.bytes_up == expected.cost.bytes_up
        assert any(r["kind"] == "train" and r["data"] == "forgotten" and r["participants"] == [0] for r in pool.log)
        if name == "knowledge-ga":  # the stopping rule's EL/MA are measured by the forgetting client
            assert any(r["kind"] == "evaluate" and r["measure"] == "knowledge-el-ma" and r["participants"] == [0]
                       for r in pool.log)


#: Language-model perturbation methods checked through the Flower pool (small budgets).
LM_FORGETTING_METHODS = [
    ("knowledge-ga", {"max_epochs": 2, "repair_rounds": 1}),
    ("npo", {"epochs": 1, "repair_rounds": 1}),  # the frozen reference travels with the plan
]


def test_a_method_that_owns_its_training_trains_and_unlearns_on_flower(tmp_path):
    """``certified-removal`` trains its own model (a linear head, by federated Newton steps from
    the clients' gradient and Hessian sums) and serves record requests: on the Flower pool both
    phases equal the in-process engine; a FedAvg history is refused for it, and its history for
    FedAvg methods."""
    config = {"scenario": "digits-records", "seed": 0, "num-clients": 0, "rounds": 2}
    overrides = {"epsilon": 100.0}
    method = get_method("certified-removal", **overrides)
    scenario = RunSettings.from_run_config(config).build_scenario()
    setup = cache_free_setup(scenario, method)
    reference = method.train_federation(setup)
    expected = run_method(method, reference, scenario.request)

    nodes = {200 + c: c for c in scenario.clients}
    paths = {"history-path": str(tmp_path / "history"), "out-dir": str(tmp_path / "out")}
    own = {"method": "certified-removal", "method-config": json.dumps(overrides)}
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={**config, **paths, **own})
    server_app.main(LocalGrid(config, nodes), context)
    history = TrainingHistory.load(tmp_path / "history")
    assert history.metadata["method"] == method.label and set(history.extras) == set(reference.extras)
    assert_same_state(history.final_state, reference.final_state)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                      run_config={**config, **paths, **own, "mode": "unlearn"})
    server_app.main(LocalGrid(config, nodes), context)
    unlearned = json.loads((tmp_path / "out" / "unlearn-certified-removal" / "result.json").read_text())
    assert unlearned["status"] == "finished"
    assert_same_state(load_file(tmp_path / "out" / "unlearn-certified-removal" / "state.safetensors"), expected.state)
    assert unlearned["cost"]["bytes_up"] == expected.cost.bytes_up
    assert unlearned["metrics"] == pytest.approx(evaluate(scenario, expected.state, reference.model), abs=1e-6)
    with pytest.raises(HistoryError, match="trained by certified-removal"):
        server_app.federation_from_history(scenario, history, flower_pool(), get_method("continue-fedavg"))


def cache_free_setup(scenario, method):
    """The empty federation a method's own training phase starts from (as the engine builds it)."""
    model = scenario.task.build_model()
    return TrainedFederation(scenario.task, scenario.pool(model), scenario.config, scenario.task.get_state(model), {},
                             TrainingHistory({}), CostCounter(), model, scenario.server_inputs)
