"""The federation cache: a hit trains nothing, damaged or stale content is recomputed, never used."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
import torch

from fedunlearn.unlearning import base, cache
from fedunlearn.unlearning.scenarios import build_scenario


@pytest.fixture
def scenario(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDUNLEARN_CACHE", str(tmp_path))
    monkeypatch.delenv("FEDUNLEARN_NO_CACHE", raising=False)
    return build_scenario("digits-backdoor", seed=0).restricted(num_clients=3, rounds=2)


def count_calls(monkeypatch, name: str) -> list:
    """Replace ``cache.<name>`` by a wrapper that records each call; returns the record."""
    calls = []
    original = getattr(cache, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(cache, name, counting)
    return calls


@pytest.fixture
def trainings(monkeypatch):
    """Counts calls of train_federation made by the cache."""
    return count_calls(monkeypatch, "train_federation")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def entry_dir(scenario) -> object:
    key, _ = cache.federation_key(scenario)
    return cache._root() / key


def test_second_request_is_a_hit(scenario, trainings):
    first = cache.trained_federation(scenario)
    again = cache.trained_federation(scenario)
    assert len(trainings) == 1
    assert same(first.final_state, again.final_state)
    assert again.cost.client_steps == first.cost.client_steps > 0


def test_one_training_serves_every_history_interval(scenario, trainings):
    thinned = cache.trained_federation(scenario, record_every=2)
    assert len(trainings) == 1 and thinned.config.record_every == 2
    assert [r.kept for r in thinned.history.rounds] == [True, False]
    direct = base.train_federation(scenario.task, scenario.pool(), replace(scenario.config, record_every=2))
    assert same(thinned.final_state, direct.final_state)
    assert thinned.cost.history_bytes == direct.cost.history_bytes


def test_a_damaged_file_is_reported_and_recomputed(scenario, trainings, caplog):
    first = cache.trained_federation(scenario)
    round_file = entry_dir(scenario) / "history" / "round_00001.safetensors"
    round_file.write_bytes(round_file.read_bytes()[:-10])
    with caplog.at_level(logging.WARNING, logger="fedunlearn.cache"):
        again = cache.trained_federation(scenario)
    assert len(trainings) == 2
    assert "round_00001.safetensors" in caplog.text and "training again" in caplog.text
    assert same(first.final_state, again.final_state)
    cache.trained_federation(scenario)  # the rewritten entry is whole again
    assert len(trainings) == 2


def test_meta_of_another_key_is_not_trusted(scenario, trainings, caplog):
    cache.trained_federation(scenario)
    meta = entry_dir(scenario) / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "key": "something-else"}))
    with caplog.at_level(logging.WARNING, logger="fedunlearn.cache"):
        cache.trained_federation(scenario)
    assert len(trainings) == 2 and "written for key" in caplog.text


def test_anything_that_changes_training_changes_the_key(scenario):
    key, _ = cache.federation_key(scenario)
    assert cache.federation_key(replace(scenario, config=replace(scenario.config, lr=0.05)))[0] != key
    assert cache.federation_key(build_scenario("digits-backdoor", seed=1).restricted(3, 2))[0] != key
    assert cache.federation_key(scenario.restricted(rounds=3))[0] != key
    # recording does not change training: the history interval shares the key
    assert cache.federation_key(scenario.restricted(record_every=2))[0] == key


def test_oracles_are_cached_and_a_damaged_one_is_retrained(scenario, caplog):
    run = cache.trained_federation(scenario)
    state, cost = cache.retrained_oracle(scenario, run)
    second, _ = cache.retrained_oracle(scenario, run, second_seed=True)
    assert not same(state, second)  # another sampling and data-order seed
    again, again_cost = cache.retrained_oracle(scenario, run)
    assert same(state, again) and again_cost.client_steps == cost.client_steps
    (first,) = entry_dir(scenario).glob("oracle-*-0.safetensors")
    first.write_bytes(b"not a tensor file")
    with caplog.at_level(logging.WARNING, logger="fedunlearn.cache"):
        fixed, _ = cache.retrained_oracle(scenario, run)
    assert "oracle unusable" in caplog.text and same(state, fixed)


def test_requests_share_the_federation_and_keep_their_own_oracles(scenario):
    other = scenario.restricted(forget_clients=(1,))
    assert cache.federation_key(other)[0] == cache.federation_key(scenario)[0]  # training ignores the request
    run = cache.trained_federation(scenario)
    mine, _ = cache.retrained_oracle(scenario, run)
    theirs, _ = cache.retrained_oracle(other, run)
    assert not same(mine, theirs)  # another client left out: another oracle
    assert same(cache.retrained_oracle(scenario, run)[0], mine)


def test_the_cache_can_be_switched_off(scenario, trainings, monkeypatch):
    monkeypatch.setenv("FEDUNLEARN_NO_CACHE", "1")
    cache.trained_federation(scenario)
    cache.trained_federation(scenario)
    assert len(trainings) == 2
    assert not cache._root().exists()


def test_an_evaluation_is_computed_once_per_state_and_code(scenario, monkeypatch):
    run = cache.trained_federation(scenario)
    calls = count_calls(monkeypatch, "assess")
    first = cache.evaluation(scenario, run.final_state, run.model)
    again = cache.evaluation(scenario, run.final_state, run.model)
    assert first == again and len(calls) == 1
    other = cache.evaluation(scenario, run.init_state, run.model)  # another state: computed
    assert len(calls) == 2 and other != first
    for file in (cache._root().parent / "evaluations").glob("*.json"):
        file.write_text("{")  # damaged: recomputed, never trusted
    assert cache.evaluation(scenario, run.final_state, run.model) == first and len(calls) == 3


def test_a_method_serves_a_request_once_per_start_and_code(scenario, monkeypatch):
    """The same method on the same request from the same model is run once (a test and a notebook
    share it); another start state, another config or a damaged file runs it again."""
    from fedunlearn.unlearning.registry import get_method

    runs = count_calls(monkeypatch, "run_method")
    run = cache.trained_federation(scenario)
    method = get_method("continue-fedavg", rounds=1)
    first = cache.unlearned(scenario, run, method, scenario.request)
    again = cache.unlearned(scenario, run, method, scenario.request)
    assert len(runs) == 1 and same(first.state, again.state) and first.cost.as_dict() == again.cost.as_dict()
    cache.unlearned(scenario, run, get_method("continue-fedavg", rounds=2), scenario.request)
    moved = {k: v + 1.0 for k, v in run.final_state.items()}
    cache.unlearned(scenario, replace(run, final_state=moved), method, scenario.request)  # a sequence's next start
    assert len(runs) == 3
    (damaged,) = [p for p in (scenario_root(scenario) / "unlearned").glob("*/state.safetensors")
                  if json.loads((p.parent / "meta.json").read_text())["material"]["config"] == {"rounds": 1}
                  and json.loads((p.parent / "meta.json").read_text())["material"]["start"]
                  == cache._state_digest(run.final_state)]
    damaged.write_bytes(b"garbage")
    again = cache.unlearned(scenario, run, method, scenario.request)
    assert len(runs) == 4 and same(first.state, again.state)


def scenario_root(scenario):
    return cache._root().parent
