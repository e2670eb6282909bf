"""The ServerApp: the package's training and any registered unlearning method, clients on Flower.

The ServerApp keeps no copy of the round loop or of any method. It builds a
[`FlowerPool`][fedunlearn.flower.pool.FlowerPool] (the client seam answered by SuperNodes) and
hands it to the same functions the in-process engine uses:

- ``mode = "train"``: [`train_federation`][fedunlearn.unlearning.base.train_federation] — the one
  round loop samples clients from ``(seed, round)``, the SuperNodes train, the server aggregates
  and records a [`TrainingHistory`][fedunlearn.federated.history.TrainingHistory]. The history is
  saved (atomically) to ``history-path``; the final state and its metrics
  ([`evaluate`][fedunlearn.unlearning.evaluate.evaluate]) go to ``out-dir/train/``.
  If ``method`` names a method that trains the federation its own way (``owns_training``, e.g.
  ``certified-removal``), the server trains that way instead, over the same pool, and the history
  keeps the method's name and its extra states.
- ``mode = "unlearn"``: loads that history, checks it was trained with the same configuration,
  builds the [`TrainedFederation`][fedunlearn.unlearning.base.TrainedFederation] (its pool is the
  Flower pool, its server inputs the scenario's) and serves the forget request with ``method``
  built by [`get_method`][fedunlearn.unlearning.registry.get_method] from ``method-config``, run by
  [`run_method`][fedunlearn.unlearning.base.run_method]. Any registered method works: a control,
  an incremental method whose remaining clients train on their SuperNodes, a method that works on
  the server alone (then no SuperNode is needed). A history recorded every round stands for any
  interval a method asks for
  ([`thinned`][fedunlearn.federated.history.TrainingHistory.thinned]). Results go to
  ``out-dir/unlearn-<method>/``.

Every wait is bounded. A SuperNode that does not answer within ``round-timeout-s`` (or whose
ClientApp fails) fails the run with a message naming the client; ``result.json`` then says
``"status": "failed"``. A history saved earlier stays as it was (saves are atomic, and an
unlearning run never writes it); a failed training run saves the rounds it did record to
``out-dir/train/partial-history`` instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import save_file

from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import HistoryError, TrainingHistory
from fedunlearn.federated.task import State
from fedunlearn.flower.pool import FlowerPool
from fedunlearn.flower.settings import RunSettings
from fedunlearn.unlearning.base import (
    TrainedFederation,
    UnlearningMethod,
    run_method,
    train_federation,
)
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.scenarios import Scenario

app = ServerApp()

#: Where a failed training run keeps the rounds it recorded (under ``out-dir/train/``).
PARTIAL_HISTORY = "partial-history"


class TrainingFailed(RuntimeError):
    """A training round failed; the rounds recorded before it were saved to ``partial_history``."""

    def __init__(self, message: str, partial_history: Path) -> None:
        super().__init__(message)
        self.partial_history = partial_history


def _write_results(directory: Path, result: dict, state: State | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if state is not None:
        staging = directory / ".state.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in state.items()}, str(staging))
        os.replace(staging, directory / "state.safetensors")
    staging = directory / ".result.json.tmp"
    staging.write_text(json.dumps(result, indent=1, sort_keys=True))
    os.replace(staging, directory / "result.json")


def make_pool(grid: Grid, settings: RunSettings, scenario: Scenario) -> FlowerPool:
    """The run's Flower pool over the scenario's client ids (no client data is read)."""
    return FlowerPool(grid, sorted(scenario.clients), node_wait_s=settings.node_wait_s,
                      round_timeout_s=settings.round_timeout_s)


def history_for(method: UnlearningMethod, history: TrainingHistory) -> TrainingHistory:
    """``history`` at the interval ``method`` needs (thinned if it was recorded more often).

    Raises:
        HistoryError: If the history cannot stand for that interval (re-train with ``record-every``
            set to a divisor of it).
    """
    every = method.history_interval()
    if every is None or every == history.record_every:
        return history
    try:
        return history.thinned(every)
    except HistoryError as exc:
        raise HistoryError(f"{method.label} needs a history kept every {every} round(s): {exc}; "
                           f"train with record-every=1 (or a divisor of {every})") from exc


def federation_from_history(scenario: Scenario, history: TrainingHistory, pool: FlowerPool,
                            method: UnlearningMethod) -> TrainedFederation:
    """The federation a method starts from: the saved history (at the method's interval), the
    Flower pool and the scenario's server-side inputs.

    Raises:
        HistoryError: If the history was trained with another configuration, has no final state,
            or cannot stand for the method's interval.
    """
    recorded = dict(history.metadata.get("config") or {})
    expected = scenario.config.as_dict()
    if {k: v for k, v in recorded.items() if k != "record_every"} != {k: v for k, v in expected.items()
                                                                      if k != "record_every"}:
        raise HistoryError(f"the history was trained with config {recorded}, this run config gives "
                           f"{expected}; pass the same scenario, seed, num-clients and rounds as the "
                           "training run")
    if history.final_state is None:
        raise HistoryError("the history has no final state (training did not finish)")
    trained_by = history.metadata.get("method")
    if method.owns_training and trained_by != method.label:
        raise HistoryError(f"{method.label} trains the federation its own way, but the history was trained "
                           f"by {trained_by or 'FedAvg'}; first run mode=\"train\" with method=\"{method.name}\" "
                           "and the same method-config")
    if not method.owns_training and trained_by is not None:
        raise HistoryError(f"the history was trained by {trained_by}'s own training phase; {method.label} "
                           "starts from a FedAvg history (train without that method)")
    history = history_for(method, history)
    config = replace(scenario.config, record_every=history.record_every)
    model = scenario.task.build_model()
    run = TrainedFederation(scenario.task, pool, config, history.init_state, history.final_state, history,
                            CostCounter(), model, server_inputs=scenario.server_inputs, extras=history.extras)
    return replace(run, model=method.trained_model(run))


def train(pool: FlowerPool, settings: RunSettings, scenario: Scenario, out: Path) -> tuple[TrainedFederation, dict]:
    """``mode = "train"``: ``train_federation`` over the SuperNodes (or, when ``method`` owns its
    training phase, that method's ``train_federation``); save the history.

    If a round fails, the rounds recorded so far are saved to ``out/partial-history`` (no final
    state, so no unlearning run accepts it) and ``history-path`` is left as it was.
    """
    task = scenario.task
    model = task.build_model()
    init_state = task.get_state(model)
    facts = {"config": scenario.config.as_dict(), "scenario": scenario.name, "seed": scenario.seed,
             "clients": sorted(scenario.clients), "engine": "flower"}
    history = TrainingHistory(init_state, scenario.config.record_every, facts)
    method = settings.unlearning_method()
    try:
        if method.owns_training:
            setup = TrainedFederation(task, pool, scenario.config, init_state, {}, history, CostCounter(), model,
                                      scenario.server_inputs)
            declared = {"request": scenario.request} if method.trains_for_request else {}
            run = method.train_federation(setup, **declared)
            run.history.metadata.update(facts, method=method.label)
            run.history.extras = dict(run.extras)
        else:
            run = train_federation(task, pool, scenario.config, init_state, server_inputs=scenario.server_inputs,
                                   model=model, history=history)
    except Exception as exc:
        saved = history.save(out / PARTIAL_HISTORY, overwrite=True)
        raise TrainingFailed(f"{exc}; the {len(history.rounds)} round(s) recorded before are saved "
                             f"in {saved} (history-path is unchanged)", saved) from exc
    history_path = settings.path("history-path")
    run.history.save(history_path, overwrite=True)
    return run, {"cost": run.cost.as_dict(), "history_path": str(history_path),
                 **({"method": method.label} if method.owns_training else {})}


def unlearn(pool: FlowerPool, settings: RunSettings, scenario: Scenario) -> tuple[TrainedFederation, State, dict]:
    """``mode = "unlearn"``: load the history, serve the request with ``method``."""
    method = settings.unlearning_method()
    run = federation_from_history(scenario, TrainingHistory.load(settings.path("history-path")), pool, method)
    log(INFO, "fedunlearn: serving %s with %s (history kept every %d round(s))",
        scenario.request.describe(), method.label, run.history.record_every)
    result = run_method(method, run, scenario.request)
    return run, result.state, {"cost": result.cost.as_dict(), "method": result.method,
                          "method_overrides": settings.method_overrides(),
                          "request": scenario.request.describe(),
                          "forgotten_clients": list(scenario.request.clients)}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of the ServerApp (``flwr run``)."""
    settings = RunSettings.from_run_config(context.run_config)
    out = settings.path("out-dir") / ("train" if settings.mode == "train" else f"unlearn-{settings.method}")
    scenario = settings.build_scenario()
    result: dict = {"status": "running", "mode": settings.mode, "settings": settings.__dict__,
                    "scenario": scenario.name, "config": scenario.config.as_dict()}
    pool = make_pool(grid, settings, scenario)
    try:
        if settings.mode == "train":
            run, facts = train(pool, settings, scenario, out)
            state = run.final_state
        else:
            run, state, facts = unlearn(pool, settings, scenario)
    except Exception as exc:
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}", rounds=pool.log)
        if isinstance(exc, TrainingFailed):
            result["partial_history"] = str(exc.partial_history)
        _write_results(out, result)
        log(ERROR, "fedunlearn: %s run failed: %s (written to %s)", settings.mode, result["error"], out)
        raise
    result.update(facts, status="finished", rounds=pool.log,
                  partitions={str(c): n for c, n in sorted(pool.num_examples.items())},
                  metrics=evaluate(scenario, state, run.model))
    _write_results(out, result, state)
    log(INFO, "fedunlearn: %s run finished; metrics %s; results in %s", settings.mode,
        {k: round(v, 4) for k, v in result["metrics"].items()}, out)
