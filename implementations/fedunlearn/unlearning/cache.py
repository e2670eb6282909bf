r"""A cache of trained federations, shared by tests, notebooks, the benchmark and the docs build.

Training $\theta_o$ (with its history) and retraining the oracle $\theta_r$ dominate every
comparison, and many pages and tests need the same ones. They are trained once and kept under
``$FEDUNLEARN_CACHE/federations/<key>/`` (default ``~/.cache/fedunlearn``):

- ``history/``: the [`TrainingHistory`][fedunlearn.federated.history.TrainingHistory]
  ($w_0$, kept rounds, $\theta_o$), safetensors files with SHA-256 in its manifest;
- ``oracle-<k>.safetensors``: retrained states ($k = 0$ the referee, $k = 1$ the second seed that
  measures the noise floor), their digests and costs in ``meta.json``;
- ``meta.json``: the key's material and the training cost, written last;

and, under ``evaluations/``, the metrics of every cached state ($\theta_o$, $\theta_r$, the second
oracle) on its scenario, keyed by the state's digest and the evaluation code
([`evaluation`][fedunlearn.unlearning.cache.evaluation]).

The key hashes **everything that determines the result**: the scenario's fingerprint (name,
seed, config, request, task description, a digest of every client's tensors), the history
interval, the source of the substrate that trains (``fedunlearn/federated``,
``fedunlearn/models``, the controls), the torch version, and for a method that owns its training
phase the method's label and module source. Nothing stale can match a new key. Content that
fails a check (missing or altered file, digest mismatch, other key) is reported in one log line
and recomputed; every write goes to a temporary name first and is renamed into place, under a
file lock, so parallel notebooks train each federation once and never read half a file.
``FEDUNLEARN_NO_CACHE=1`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import HistoryError, TrainingHistory, read_verified
from fedunlearn.federated.requests import ForgetRequest, request_to_dict
from fedunlearn.federated.task import State
from fedunlearn.federated.training import FederationConfig
from fedunlearn.paths import cache_dir, file_lock, source_digest
from fedunlearn.unlearning.base import (
    TrainedFederation,
    UnlearningMethod,
    UnlearningResult,
    run_method,
    train_federation,
)
from fedunlearn.unlearning.controls import Retrain
from fedunlearn.unlearning.evaluate import Evaluation, assess
from fedunlearn.unlearning.scenarios import Scenario

log = logging.getLogger("fedunlearn.cache")

#: Package paths whose source determines a trained federation or a retrained oracle.
TRAINING_SOURCES = ("federated", "models", "data", "unlearning/controls.py", "unlearning/base.py")
#: Seed offset of the second oracle (the noise floor).
SECOND_SEED_OFFSET = 7777


class CacheError(Exception):
    """Cached content that cannot be used (reported, then recomputed)."""


def enabled() -> bool:
    """Whether the cache is on (``FEDUNLEARN_NO_CACHE`` unset or ``0``)."""
    return os.environ.get("FEDUNLEARN_NO_CACHE", "0") in ("", "0")


def federation_key(scenario: Scenario, method: UnlearningMethod | None = None) -> tuple[str, dict]:
    r"""The cache key of a trained federation (history kept every round) and the material it hashes.

    The forget request is not part of it (training does not depend on it): every request on one
    federation shares $\theta_o$; its oracles are stored per request."""
    fingerprint = scenario.fingerprint()
    fingerprint["config"] = {**fingerprint["config"], "record_every": 1}  # recording does not change training
    if method is None or not method.trains_for_request:  # a training phase for a declared request is keyed by it
        del fingerprint["request"]
    material = {"scenario": fingerprint, "source": source_digest(*TRAINING_SOURCES),
                "torch": torch.__version__}
    if method is not None and method.owns_training:
        source = Path(inspect.getsourcefile(type(method)) or "").read_bytes()
        material["method"] = {"label": method.label, "config": asdict(method.config),
                              "source": hashlib.sha256(source).hexdigest()}
    text = json.dumps(material, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24], material


def _write_atomic(path: Path, payload: bytes) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_meta(entry: Path, key: str) -> dict:
    file = entry / "meta.json"
    if not file.is_file():
        raise CacheError(f"{file}: missing")
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError(f"{file}: not valid JSON ({exc})") from exc
    if meta.get("key") != key:
        raise CacheError(f"{file}: written for key {meta.get('key')!r}, not {key!r}")
    return meta


def _state_payload(state: State) -> bytes:
    return save_safetensors_bytes({k: v.contiguous() for k, v in state.items()})


def _counter(values: dict) -> CostCounter:
    return CostCounter(**{k: v for k, v in values.items() if k != "bytes_communicated"})


def _root() -> Path:
    return cache_dir() / "federations"


def trained_federation(scenario: Scenario, record_every: int | None = None, method: UnlearningMethod | None = None,
                       progress: bool | str = False) -> TrainedFederation:
    r"""$\theta_o$ and its history for ``scenario``: from the cache, or trained now and cached.

    The federation is trained (and cached) with its history kept every round, then thinned to
    ``record_every`` ([`thinned`][fedunlearn.federated.history.TrainingHistory.thinned]): one
    training serves every interval.

    Args:
        scenario: The scenario (its pool, config and task).
        record_every: History interval (default: the scenario's).
        method: A method that owns its training phase (trained its way); ``None`` for FedAvg.
        progress: Show a progress bar while training.
    """
    every = record_every or scenario.config.record_every
    run = _every_round(scenario, method, progress)
    if every == 1:
        return run
    history = run.history.thinned(every)
    cost = replace(run.cost, history_bytes=history.recorded_bytes())
    return replace(run, config=replace(run.config, record_every=every), history=history, cost=cost)


def _every_round(scenario: Scenario, method: UnlearningMethod | None, progress: bool | str) -> TrainedFederation:
    """The federation with its history kept every round (recording does not change training)."""
    config = replace(scenario.config, record_every=1)
    model = scenario.task.build_model()
    setup = TrainedFederation(scenario.task, scenario.pool(model), config, scenario.task.get_state(model),
                              {}, TrainingHistory({}), CostCounter(), model, scenario.server_inputs)

    def train() -> TrainedFederation:
        if method is not None and method.owns_training:
            if method.trains_for_request:
                return method.train_federation(setup, progress=progress, request=scenario.request)
            return method.train_federation(setup, progress=progress)
        return train_federation(setup.task, setup.pool, config, setup.init_state, progress=progress,
                                server_inputs=scenario.server_inputs, model=model)

    if not enabled():
        return train()
    key, material = federation_key(scenario, method)
    entry = _root() / key
    with file_lock(entry):
        try:
            meta = _read_meta(entry, key)
            history = TrainingHistory.load(entry / "history")
            extras = {name: read_verified(entry / f"extra-{name}.safetensors", sha)
                      for name, sha in meta.get("extras", {}).items()}
            if history.final_state is None:
                raise CacheError(f"{entry / 'history'}: no final state")
            return replace(setup, config=FederationConfig(**meta["config"]), init_state=history.init_state,
                           final_state=history.final_state, history=history, cost=_counter(meta["cost"]),
                           extras=extras, model=method.trained_model(setup) if method is not None else setup.model)
        except (CacheError, HistoryError, KeyError) as exc:
            if entry.exists():
                log.warning("cached federation unusable, training again: %s", exc)
        run = train()
        shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir(parents=True)
        run.history.save(entry / "history")
        extras = {}
        for name, state in run.extras.items():
            payload = _state_payload(state)
            _write_atomic(entry / f"extra-{name}.safetensors", payload)
            extras[name] = hashlib.sha256(payload).hexdigest()
        meta = {"key": key, "material": material, "config": run.config.as_dict(), "cost": run.cost.as_dict(),
                "extras": extras, "oracles": {}}
        _write_atomic(entry / "meta.json", json.dumps(meta, indent=1, sort_keys=True, default=str).encode())
        return run


def retrained_oracle(scenario: Scenario, run: TrainedFederation, second_seed: bool = False,
                     method: UnlearningMethod | None = None) -> tuple[State, CostCounter]:
    r"""$\theta_r$ for ``scenario``'s request (or the second-seed retrain), with its measured cost.

    Retrains ``run`` (same $w_0$, config and rounds) with [`Retrain`][fedunlearn.unlearning.controls.Retrain],
    or takes it from the cache entry of ``run``'s federation.
    """
    target = run
    if second_seed:
        target = replace(run, config=replace(run.config, seed=run.config.seed + SECOND_SEED_OFFSET))

    def compute() -> tuple[State, CostCounter]:
        result = run_method(Retrain(), target, scenario.request)
        return result.state, result.cost

    if not enabled():
        return compute()
    key, _ = federation_key(scenario, method)
    entry = _root() / key
    request = json.dumps(request_to_dict(scenario.request), sort_keys=True)
    name = f"oracle-{hashlib.sha256(request.encode()).hexdigest()[:12]}-{int(second_seed)}"
    with file_lock(entry):
        meta = _read_meta(entry, key) if (entry / "meta.json").is_file() else None
        if meta is not None and name in meta.get("oracles", {}):
            record = meta["oracles"][name]
            try:
                return read_verified(entry / f"{name}.safetensors", record["sha256"]), _counter(record["cost"])
            except HistoryError as exc:
                log.warning("cached oracle unusable, retraining: %s", exc)
        state, cost = compute()
        if meta is None:  # the federation was not cached (e.g. built by hand): keep the oracle in memory only
            return state, cost
        payload = _state_payload(state)
        _write_atomic(entry / f"{name}.safetensors", payload)
        meta.setdefault("oracles", {})[name] = {"sha256": hashlib.sha256(payload).hexdigest(), "cost": cost.as_dict()}
        _write_atomic(entry / "meta.json", json.dumps(meta, indent=1, sort_keys=True, default=str).encode())
        return state, cost


def unlearned(scenario: Scenario, run: TrainedFederation, method: UnlearningMethod, request: ForgetRequest
              ) -> UnlearningResult:
    """[`run_method`][fedunlearn.unlearning.base.run_method], from the cache when the same method
    (label, config) served the same request from the same model (federation, history interval and
    served state) with the same code (the whole package's source). Methods are deterministic, so a
    test and a notebook that ask the same comparison share the work. A cached cost's wall time is
    the one measured when it was computed, in another process: ``compare(..., timing=True)``
    bypasses this cache. A function patched at run time (a test's broken-step control) is not in
    the key: such a test replaces ``cache.unlearned`` by ``run_method``."""
    if not enabled():
        return run_method(method, run, request)
    material = {"federation": federation_key(scenario, method if method.owns_training else None)[0],
                "record_every": run.history.record_every, "start": _state_digest(run.final_state),
                "request": request_to_dict(request), "method": method.label,
                "config": asdict(method.config), "source": source_digest(), "torch": torch.__version__}
    key = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]
    entry = _root().parent / "unlearned" / key
    with file_lock(entry):
        try:
            meta = json.loads((entry / "meta.json").read_text())
            if meta.get("material") == json.loads(json.dumps(material, sort_keys=True, default=str)):
                state = read_verified(entry / "state.safetensors", meta["sha256"])
                return UnlearningResult(meta["method"], state, _counter(meta["cost"]))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, HistoryError):
            pass
        result = run_method(method, run, request)
        entry.mkdir(parents=True, exist_ok=True)
        payload = _state_payload(result.state)
        _write_atomic(entry / "state.safetensors", payload)
        meta = {"material": material, "method": result.method, "cost": result.cost.as_dict(),
                "sha256": hashlib.sha256(payload).hexdigest()}
        _write_atomic(entry / "meta.json", json.dumps(meta, indent=1, sort_keys=True, default=str).encode())
        return result


def _state_digest(state: State) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


#: Package paths whose source determines an evaluation (besides the state and the scenario).
EVALUATION_SOURCES = (*TRAINING_SOURCES, "unlearning/evaluate.py", "unlearning/metrics.py", "unlearning/scenarios.py")


def evaluation(scenario: Scenario, state: State, model: nn.Module) -> Evaluation:
    r"""[`assess`][fedunlearn.unlearning.evaluate.assess] of ``state``, from the cache when the same
    state was evaluated on the same scenario by the same code (the shared $\theta_o$, $\theta_r$
    and second oracle are evaluated once for every comparison that uses them)."""
    if not enabled():
        return assess(scenario, state, model)
    material = {"scenario": scenario.fingerprint(), "state": _state_digest(state),
                "source": source_digest(*EVALUATION_SOURCES), "torch": torch.__version__}
    key = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]
    file = _root().parent / "evaluations" / f"{key}.json"
    with file_lock(file):  # pages that evaluate the same state at once: the second waits and reads
        try:
            cached = json.loads(file.read_text())
            if cached.get("material") == json.loads(json.dumps(material, default=str)):
                return Evaluation(dict(cached["metrics"]), {k: list(v) for k, v in cached["items"].items()})
        except (OSError, json.JSONDecodeError, AttributeError, KeyError, TypeError):
            pass
        result = assess(scenario, state, model)
        _write_atomic(file, json.dumps({"material": material, "metrics": result.metrics, "items": result.items},
                                       default=str).encode())
        return result


def clear(predicate: Callable[[dict], bool] | None = None) -> int:
    """Remove cached federations (those whose key material matches ``predicate``); returns how many."""
    removed = 0
    for meta_file in sorted(_root().glob("*/meta.json")):
        try:
            material = json.loads(meta_file.read_text()).get("material", {})
        except (OSError, json.JSONDecodeError):
            material = {}
        if predicate is None or predicate(material):
            shutil.rmtree(meta_file.parent, ignore_errors=True)
            removed += 1
    return removed
