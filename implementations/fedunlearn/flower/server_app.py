"""The ServerApp: FedAvg over SuperNodes with the package's loop functions, and forget requests.

``mode = "train"`` runs the rounds of
[`run_federation`][fedunlearn.federated.loop.run_federation] with the SuperNodes doing the client
side: per round it samples clients with [`sample_clients`][fedunlearn.federated.loop.sample_clients]
(from ``(seed, round)``), sends each the global state, receives the updates, records the round in
a [`TrainingHistory`][fedunlearn.federated.history.TrainingHistory] and aggregates with
[`server_aggregate`][fedunlearn.federated.loop.server_aggregate]. The history is saved (atomically)
to ``history-path``; the final state and its metrics
([`evaluate`][fedunlearn.unlearning.evaluate.evaluate]) go to ``out-dir/train/``.

``mode = "unlearn"`` loads that history, checks it was trained with the same config, and serves
the forget request with ``method``; only SuperNodes of retained clients are needed (a forgotten
client may have left). Results go to ``out-dir/unlearn-<method>/``:

- ``retrain`` — the oracle: FedAvg from the recorded $w_0$, same rounds, seed and sampling, on the
  retained data of the remaining SuperNodes (its history is saved next to the results);
- ``continue-fedavg`` — ``continue-rounds`` more rounds from $\\theta_o$ on the retained data;
- ``federaser`` — [`FedEraser`][fedunlearn.incremental.federaser.FedEraser] with its calibration
  training sent to the remaining SuperNodes (needs ``record-every`` equal to its interval, 2).

Each method is a small [`UnlearningMethod`][fedunlearn.unlearning.base.UnlearningMethod] run by
[`run_method`][fedunlearn.unlearning.base.run_method] (validation, cost, history left untouched),
exactly like the in-process ones; the only difference is *who* trains: the seam is
[`FlowerClients.train`][fedunlearn.flower.server_app.FlowerClients.train], the Flower twin of
calling ``client_update`` for each participant.

Every wait is bounded. A SuperNode that does not answer a round within ``round-timeout-s`` (or
whose ClientApp fails) fails the run with a message naming the client and the round;
``result.json`` then says ``"status": "failed"``. A history saved earlier stays as it was (saves
are atomic, and an unlearning run never writes it); a failed training run saves the rounds it
did record to ``out-dir/train/partial-history`` instead.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from logging import ERROR, INFO
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import save_file

from fedunlearn.federated.costs import CostCounter, state_bytes
from fedunlearn.federated.history import HistoryError, TrainingHistory
from fedunlearn.federated.loop import FederationConfig, sample_clients, server_aggregate
from fedunlearn.federated.task import State, clone_state
from fedunlearn.flower.settings import QUERY, TRAIN, RunSettings, record_to_state, state_to_record
from fedunlearn.unlearning.base import TrainedFederation, UnlearningMethod, run_method
from fedunlearn.unlearning.controls import ContinueFedAvgConfig
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.requests import ForgetRequest, split_clients
from fedunlearn.unlearning.scenarios import Scenario

app = ServerApp()

#: Where a failed training run keeps the rounds it recorded (under ``out-dir/train/``).
PARTIAL_HISTORY = "partial-history"


class TrainingFailed(RuntimeError):
    """A training round failed; the rounds recorded before it were saved to ``partial_history``."""

    def __init__(self, message: str, partial_history: Path) -> None:
        super().__init__(message)
        self.partial_history = partial_history


class FlowerClients:
    """The SuperNodes of a run, addressed by client (partition) id.

    Args:
        grid: The run's Flower ``Grid``.
        round_timeout_s: Seconds to wait for the replies of one round.
    """

    def __init__(self, grid: Grid, round_timeout_s: float) -> None:
        self.grid = grid
        self.round_timeout_s = round_timeout_s
        self.node_of: dict[int, int] = {}
        self.num_examples: dict[int, int] = {}
        self.num_retained: dict[int, int] = {}
        #: What went wrong with SuperNodes that were not needed (discovery).
        self.problems: list[str] = []
        #: One entry per ``train`` call: round, participants and whether on retained data.
        self.log: list[dict] = []

    def discover(self, needed: Iterable[int], wait_s: float) -> None:
        """Ask every connected SuperNode for its partition id until ``needed`` are all known.

        Raises:
            RuntimeError: If some needed client has no SuperNode after ``wait_s`` seconds, or two
                SuperNodes serve the same partition.
        """
        needed = set(needed)
        asked: set[int] = set()
        deadline = time.monotonic() + wait_s
        while not needed <= set(self.node_of):
            fresh = sorted(set(self.grid.get_node_ids()) - asked)
            if fresh:
                asked.update(fresh)
                queries = [Message(RecordDict(), dst_node_id=node, message_type=QUERY) for node in fresh]
                for reply in self._exchange(queries, "discovery", tolerate=True):
                    node = reply.metadata.src_node_id
                    answer = reply.content["node"]
                    cid = int(answer["partition-id"])
                    if cid in self.node_of and self.node_of[cid] != node:
                        raise RuntimeError(f"SuperNodes {self.node_of[cid]} and {node} both serve partition {cid}")
                    self.node_of[cid] = node
                    self.num_examples[cid] = int(answer["num-examples"])
                    self.num_retained[cid] = int(answer["num-retained"])
            elif time.monotonic() > deadline:
                missing = sorted(needed - set(self.node_of))
                raise RuntimeError(f"no SuperNode serves client(s) {missing} after {wait_s:.0f} s; "
                                   f"connected partitions: {sorted(self.node_of)}"
                                   + "".join(f"; {problem}" for problem in self.problems))
            else:
                time.sleep(1.0)
        log(INFO, "fedunlearn: SuperNodes serve clients %s", sorted(self.node_of))

    def _exchange(self, messages: Sequence[Message], what: str, tolerate: bool = False) -> list[Message]:
        """Send, wait at most ``round_timeout_s``, return the good replies.

        A missing or failed reply raises, or with ``tolerate`` is noted in ``problems``.
        """
        replies = list(self.grid.send_and_receive(messages, timeout=self.round_timeout_s))
        by_node = {reply.metadata.src_node_id: reply for reply in replies}
        client_of = {node: cid for cid, node in self.node_of.items()}
        good = []
        for message in messages:
            node = message.metadata.dst_node_id
            name = f"client {client_of[node]} (SuperNode {node})" if node in client_of else f"SuperNode {node}"
            if node not in by_node:
                problem = (f"{what}: no reply from {name} within {self.round_timeout_s:.0f} s "
                           "(SuperNode stopped or too slow; see round-timeout-s)")
            elif by_node[node].has_error():
                problem = f"{what}: {name} failed: {by_node[node].error.reason}"
            else:
                good.append(by_node[node])
                continue
            if not tolerate:
                raise RuntimeError(problem)
            self.problems.append(problem)
        return good

    def train(self, state: Mapping[str, torch.Tensor], participants: Sequence[int], round_index: int,
              counter: CostCounter, *, retained: bool, local_epochs: float | None = None,
              local_steps: int | None = None) -> tuple[dict[int, State], dict[int, int]]:
        """Each participant runs ``client_update`` from ``state`` on its SuperNode.

        Args:
            state: Global state sent to every participant.
            participants: Client ids (sorted, as ``sample_clients`` returns them).
            round_index: Round number (seeds each client's data order).
            counter: Receives bytes, client rounds and the clients' reported steps.
            retained: Train on the data kept after the forget request only.
            local_epochs: Overrides the local epochs (e.g. FedEraser's calibration).
            local_steps: Overrides ``local_steps`` of the federation config.

        Returns:
            ``(updates, sample_counts)`` keyed by client id, in ``participants`` order.

        Raises:
            RuntimeError: Naming a client that has no SuperNode, failed or did not reply in time.
        """
        absent = [c for c in participants if c not in self.node_of]
        if absent:
            raise RuntimeError(f"round {round_index}: client(s) {absent} have no SuperNode")
        payload = state_to_record(state)
        instruction = ConfigRecord({"round": int(round_index), "retained": bool(retained),
                                    "local-epochs": -1.0 if local_epochs is None else float(local_epochs),
                                    "local-steps": -1 if local_steps is None else int(local_steps)})
        messages = [Message(RecordDict({"state": payload, "config": instruction}),
                            dst_node_id=self.node_of[c], message_type=TRAIN, group_id=str(round_index))
                    for c in participants]
        replies = {int(r.content["metrics"]["partition-id"]): r
                   for r in self._exchange(messages, f"round {round_index}")}
        updates: dict[int, State] = {}
        counts: dict[int, int] = {}
        steps = 0
        for cid in participants:
            counter.bytes_down += state_bytes(state)
            update = record_to_state(replies[cid].content["update"])
            updates[cid] = {key: update[key] for key in state}  # the key order of the sent state
            counts[cid] = int(replies[cid].content["metrics"]["num-examples"])
            steps += int(replies[cid].content["metrics"]["client-steps"])
            counter.bytes_up += state_bytes(updates[cid])
            counter.client_rounds += 1
        counter.client_steps += steps
        self.log.append({"round": int(round_index), "participants": list(participants), "retained": retained})
        log(INFO, "fedunlearn: round %d: updates from clients %s (%d local steps%s)", round_index,
            list(participants), steps, ", retained data only" if retained else "")
        return updates, counts


def flower_federation(clients: FlowerClients, start_state: Mapping[str, torch.Tensor],
                      config: FederationConfig, pool: Iterable[int], rounds: Iterable[int],
                      counter: CostCounter, *, retained: bool,
                      history: TrainingHistory | None = None) -> State:
    """The rounds of [`run_federation`][fedunlearn.federated.loop.run_federation], clients on Flower.

    Args:
        clients: The run's SuperNodes.
        start_state: State of the first round.
        config: Federation hyperparameters (sampling uses ``clients_per_round`` and ``seed``).
        pool: Client ids that may be sampled.
        rounds: Round numbers.
        counter: Cost counter.
        retained: Clients train on retained data only.
        history: If given, every round is recorded into it.
    """
    pool = sorted(pool)
    state = clone_state(start_state)
    with counter.timed():
        for r in rounds:
            participants = sample_clients(pool, config.clients_per_round, config.seed, r)
            updates, counts = clients.train(state, participants, r, counter, retained=retained)
            if history is not None:
                counter.history_bytes += history.record_round(r, state, updates, counts)
            state = server_aggregate(state, updates, counts)
        if history is not None:
            history.final_state = clone_state(state)
    return state


class FlowerRetrain(UnlearningMethod):
    """[`Retrain`][fedunlearn.unlearning.controls.Retrain] with the remaining SuperNodes training."""

    name = "retrain"
    granularities = frozenset({"client", "class", "records"})

    def __init__(self, clients: FlowerClients) -> None:
        self.clients = clients
        self.history: TrainingHistory | None = None

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """FedAvg from $w_0$ on the retained data, all rounds of the original run."""
        retained, _ = split_clients(run.clients, request)
        self.history = TrainingHistory(run.init_state, run.config.record_every,
                                       {"config": run.config.as_dict(), "retrain_of": request.describe()})
        return flower_federation(self.clients, run.init_state, run.config, retained,
                                 range(run.config.rounds), counter, retained=True, history=self.history)


class FlowerContinueFedAvg(UnlearningMethod):
    """[`ContinueFedAvg`][fedunlearn.unlearning.controls.ContinueFedAvg] on the remaining SuperNodes."""

    name = "continue-fedavg"
    granularities = frozenset({"client", "class", "records"})

    def __init__(self, clients: FlowerClients, config: ContinueFedAvgConfig | None = None) -> None:
        self.clients = clients
        self.config = config if config is not None else ContinueFedAvgConfig()

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """$k$ more rounds (numbered after the original ones) from $\\theta_o$ on the retained data."""
        retained, _ = split_clients(run.clients, request)
        start = run.config.rounds
        return flower_federation(self.clients, run.final_state, run.config, retained,
                                 range(start, start + self.config.rounds), counter, retained=True)


def flower_federaser(clients: FlowerClients) -> UnlearningMethod:
    """[`FedEraser`][fedunlearn.incremental.federaser.FedEraser] whose calibration training runs on
    the remaining SuperNodes (the paper-default config)."""
    from fedunlearn.incremental.federaser import FedEraser, calibration_schedule

    class FlowerFedEraser(FedEraser):
        def _calibration_training(self, run, retained, ids, state, round_index, counter):
            config, epochs = calibration_schedule(run.config, self.config.calibration_ratio)
            updates, _ = clients.train(state, ids, round_index, counter, retained=True,
                                       local_epochs=epochs, local_steps=config.local_steps)
            return updates

    return FlowerFedEraser()


def _write_results(directory: Path, result: dict, state: State | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if state is not None:
        staging = directory / ".state.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in state.items()}, str(staging))
        os.replace(staging, directory / "state.safetensors")
    staging = directory / ".result.json.tmp"
    staging.write_text(json.dumps(result, indent=1, sort_keys=True))
    os.replace(staging, directory / "result.json")


def _trained_federation(scenario: Scenario, history: TrainingHistory) -> TrainedFederation:
    recorded = history.metadata.get("config")
    if recorded != scenario.config.as_dict():
        raise HistoryError(f"the history was trained with config {recorded}, this run config gives "
                           f"{scenario.config.as_dict()}; pass the same scenario, seed, num-clients, "
                           "rounds and record-every as the training run")
    if history.final_state is None:
        raise HistoryError("the history has no final state (training did not finish)")
    model = scenario.task.build_model()
    return TrainedFederation(scenario.task, scenario.clients, scenario.config, history.init_state,
                             history.final_state, history, CostCounter(), model)


def train(clients: FlowerClients, settings: RunSettings, scenario: Scenario, out: Path) -> tuple[State, dict]:
    """``mode = "train"``: FedAvg over every client's SuperNode; save the history.

    If a round fails, the rounds recorded so far are saved to ``out/partial-history`` (no final
    state, so no unlearning run accepts it) and ``history-path`` is left as it was.
    """
    clients.discover(scenario.clients, settings.node_wait_s)
    init_state = scenario.task.get_state(scenario.task.build_model())
    history = TrainingHistory(init_state, scenario.config.record_every,
                              {"config": scenario.config.as_dict(), "scenario": scenario.name,
                               "seed": scenario.seed, "clients": sorted(scenario.clients), "engine": "flower"})
    counter = CostCounter()
    try:
        state = flower_federation(clients, init_state, scenario.config, scenario.clients,
                                  range(scenario.config.rounds), counter, retained=False, history=history)
    except Exception as exc:
        saved = history.save(out / PARTIAL_HISTORY, overwrite=True)
        raise TrainingFailed(f"{exc}; the {len(history.rounds)} round(s) recorded before are saved "
                             f"in {saved} (history-path is unchanged)", saved) from exc
    history.save(settings.path("history-path"), overwrite=True)
    return state, {"cost": counter.as_dict(), "history_path": str(settings.path("history-path"))}


def unlearn(clients: FlowerClients, settings: RunSettings, scenario: Scenario, out: Path) -> tuple[State, dict]:
    """``mode = "unlearn"``: load the history, serve the request with ``settings.method``."""
    run = _trained_federation(scenario, TrainingHistory.load(settings.path("history-path")))
    retained, _ = split_clients(scenario.clients, scenario.request)
    clients.discover(retained, settings.node_wait_s)
    if settings.method == "retrain":
        method: UnlearningMethod = FlowerRetrain(clients)
    elif settings.method == "continue-fedavg":
        method = FlowerContinueFedAvg(clients, ContinueFedAvgConfig(rounds=settings.continue_rounds))
    else:
        method = flower_federaser(clients)
    result = run_method(method, run, scenario.request)
    if isinstance(method, FlowerRetrain) and method.history is not None:
        method.history.save(out / "history", overwrite=True)
    return result.state, {"cost": result.cost.as_dict(), "request": scenario.request.describe(),
                          "forgotten_clients": list(scenario.request.clients)}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of the ServerApp (``flwr run``)."""
    settings = RunSettings.from_run_config(context.run_config)
    out = settings.path("out-dir") / ("train" if settings.mode == "train" else f"unlearn-{settings.method}")
    scenario = settings.build_scenario()
    clients = FlowerClients(grid, settings.round_timeout_s)
    result: dict = {"status": "running", "mode": settings.mode, "settings": settings.__dict__,
                    "scenario": scenario.name, "config": scenario.config.as_dict()}
    try:
        if settings.mode == "train":
            state, facts = train(clients, settings, scenario, out)
        else:
            state, facts = unlearn(clients, settings, scenario, out)
    except Exception as exc:
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}", rounds=clients.log)
        if isinstance(exc, TrainingFailed):
            result["partial_history"] = str(exc.partial_history)
        _write_results(out, result)
        log(ERROR, "fedunlearn: %s run failed: %s (written to %s)", settings.mode, result["error"], out)
        raise
    result.update(facts, status="finished", rounds=clients.log,
                  partitions={str(c): n for c, n in sorted(clients.num_examples.items())},
                  metrics=evaluate(scenario, state))
    _write_results(out, result, state)
    log(INFO, "fedunlearn: %s run finished; metrics %s; results in %s", settings.mode,
        {k: round(v, 4) for k, v in result["metrics"].items()}, out)
