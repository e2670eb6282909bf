"""Knowledge unlearning by gradient ascent: config and request checks, the EL/MA client measure
against the evaluation's, the stopping rule, and the reproduced claims on the federated LoRA model.

The claim tests (``slow``) run at the shared smoke cut (``LM_SMOKE``; federations, oracles and
evaluations from the shared cache) with thresholds computed on the validation people, and assert
what the notebook reports. Each applies its check to a named control and asserts it fails there:
θ_o (do nothing) for the threshold; ascent without repair for the retained utility; ascent
stopped at the threshold for the collapse; one seed alone for the ordering.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from fedunlearn.federated.client import ClientData
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.task import ClassificationTask
from fedunlearn.federated.training import LocalPlan
from fedunlearn.perturbation.knowledge_unlearning import (
    COLLAPSE_FRACTION,
    ENTRY,
    MEASURE,
    ORDERING_PEOPLE,
    ORDERING_SEEDS,
    RETAIN_FRACTION,
    KnowledgeUnlearning,
    KnowledgeUnlearningConfig,
    answer_probability,
    ascend,
    chunk_requests,
    el_ma,
    forgotten_el_ma,
    validation_thresholds,
)
from fedunlearn.unlearning import cache
from fedunlearn.unlearning.base import TrainedFederation
from fedunlearn.unlearning.compare import compare
from fedunlearn.unlearning.evaluate import _el_ma
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

# ---------------------------------------------------------------- config and requests


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("lr", -1e-3), ("max_epochs", 0), ("el_threshold", -0.1),
                                          ("ma_threshold", 1.5), ("chunks", 0), ("repair_rounds", -1),
                                          ("optimizer", "nesterov")])
def test_config_rejects_invalid_values_naming_field_and_value(field, value) -> None:
    with pytest.raises(ValueError, match=rf"{field}={value!r}"):
        KnowledgeUnlearningConfig(**{field: value})


def test_registered_with_its_granularities_and_entry() -> None:
    method = get_method("knowledge-ga", chunks=2)
    assert method.config.chunks == 2 and method.granularities == {"client", "records"}
    assert ENTRY.methods == ("knowledge-ga",)


def test_chunks_split_the_record_ids_in_order() -> None:
    request = ForgetRequest.forget_records([5, 1, 4, 2, 3, 6, 7])
    assert chunk_requests(request, 1) == [request]
    parts = chunk_requests(request, 3)
    assert [p.record_ids for p in parts] == [(1, 2), (3, 4, 5), (6, 7)]


def test_chunks_need_a_records_request_with_enough_records() -> None:
    with pytest.raises(ForgetRequestError, match="needs a records request"):
        chunk_requests(ForgetRequest.forget_clients(0), 2)
    with pytest.raises(ForgetRequestError, match="chunks=4 exceeds the 3 records"):
        chunk_requests(ForgetRequest.forget_records([1, 2, 3]), 4)


def test_a_forget_set_empty_after_filtering_is_refused_naming_it() -> None:
    data = {c: ClientData(c, {"x": torch.zeros(3, 4), "y": torch.zeros(3, dtype=torch.long)},
                          torch.arange(3) + 10 * c, torch.arange(3) + 10 * c) for c in (0, 1)}
    task = ClassificationTask(lambda: torch.nn.Linear(4, 2), init_seed=0)
    pool = InProcessPool(task, data)
    model = task.build_model()
    run = TrainedFederation(task, pool, None, task.get_state(model), task.get_state(model), None, CostCounter(), model)
    with pytest.raises(ForgetRequestError, match="2 records"):
        KnowledgeUnlearning().unlearn(run, ForgetRequest.forget_records([97, 98]), CostCounter())


# ---------------------------------------------------------------- the client measure and the stop


@pytest.fixture(scope="module")
def lm():
    """profiles-person at seed 0 with the untrained adapters (no federation is trained)."""
    scenario = build_scenario("profiles-person", 0)
    model = scenario.task.build_model()
    state = scenario.task.get_state(model)
    run = TrainedFederation(scenario.task, scenario.pool(), scenario.config, state, state, None, CostCounter(), model)
    return scenario, run


def test_el_ma_equals_the_evaluation_metric(lm) -> None:
    scenario, run = lm
    records = [scenario.records[r] for r in scenario.request.record_ids] + scenario.validation_records[:12]
    run.task.set_state(run.model, run.final_state)
    el, ma = el_ma(run.model, scenario.task.encode(records))
    expected = _el_ma(run.model, scenario, records)
    assert float(el.mean()) == pytest.approx(expected[0], abs=1e-6)
    assert float(ma.mean()) == pytest.approx(expected[1], abs=1e-6)


def test_client_measure_pools_the_forgotten_records(lm) -> None:
    scenario, run = lm
    counter = CostCounter()
    replies = run.pool.measure(run.final_state, [0], LocalPlan("forgotten", scenario.request), MEASURE, counter)
    sums, count = replies[0]
    assert count == len(scenario.request.record_ids)
    run.task.set_state(run.model, run.final_state)
    el, ma = el_ma(run.model, scenario.task.encode([scenario.records[r] for r in scenario.request.record_ids]))
    assert float(sums["el"]) == pytest.approx(float(el.sum()), abs=1e-5)
    assert forgotten_el_ma(run, run.final_state, scenario.request, counter)[1] == pytest.approx(float(ma.mean()), abs=1e-6)
    assert counter.bytes_down > 0 and counter.client_steps == 0


def test_ascent_stops_at_the_threshold_or_after_max_epochs(lm) -> None:
    scenario, run = lm
    reached = KnowledgeUnlearningConfig(el_threshold=1.0, ma_threshold=1.0)
    state, epochs = ascend(run, dict(run.final_state), scenario.request, reached, CostCounter())
    assert epochs == 0 and all(torch.equal(state[k], run.final_state[k]) for k in state)
    counter, seen = CostCounter(), []
    forced = KnowledgeUnlearningConfig(el_threshold=1.0, ma_threshold=1.0, stop_at_threshold=False, max_epochs=2)
    state, epochs = ascend(run, dict(run.final_state), scenario.request, forced, counter, lambda e, *_: seen.append(e))
    assert epochs == 2 and seen == [0, 1, 2]
    assert counter.client_steps == 2  # one full-batch step per epoch, one client
    assert any(not torch.equal(state[k], run.final_state[k]) for k in state)


# ---------------------------------------------------------------- claims (smoke size, cached)


def smoke(name: str, seed: int = 0):
    return build_scenario(name, seed).restricted(rounds=LM_SMOKE["rounds"])


@pytest.fixture(scope="module")
def comparisons():
    out = {}
    for name in ("profiles-person", "profiles-client"):
        scenario = smoke(name)
        el_t, ma_t = validation_thresholds(scenario, cache.trained_federation(scenario))
        settings = {"el_threshold": el_t, "ma_threshold": ma_t}
        cmp = compare(name, [("knowledge-ga", settings), ("knowledge-ga", {**settings, "repair_rounds": 0})],
                      seeds=(0,), progress=False, **LM_SMOKE)
        out[name] = (cmp, el_t, ma_t)
    return out


def at_threshold(cmp, label, el_t, ma_t) -> bool:
    return cmp.value(label, "forget_el") <= el_t and cmp.value(label, "forget_ma") <= ma_t


def kept(cmp, label) -> float:
    return cmp.value(label, "retain_answer_prob") / cmp.value("original", "retain_answer_prob")


@pytest.mark.slow
def test_ascent_reaches_the_threshold_and_the_canary_falls_to_retraining(comparisons) -> None:
    cmp, el_t, ma_t = comparisons["profiles-person"]
    ascent_only = cmp.methods[1]
    assert at_threshold(cmp, ascent_only, el_t, ma_t)
    assert cmp.equivalent(ascent_only, "canary_exposure")
    # control: doing nothing (θ_o) is far above the threshold and outside the band
    assert cmp.value("original", "forget_ma") > ma_t
    assert abs(cmp.value("original", "canary_exposure") - cmp.value("retrain", "canary_exposure")) > \
        cmp.aggregate["band"]["canary_exposure"]
    client, el_c, ma_c = comparisons["profiles-client"]
    assert at_threshold(client, client.methods[1], el_c, ma_c)


@pytest.mark.slow
def test_one_repair_round_restores_retained_utility_and_brings_memorisation_back(comparisons) -> None:
    for cmp, el_t, ma_t in comparisons.values():
        repaired, ascent_only = cmp.methods
        assert kept(cmp, repaired) >= RETAIN_FRACTION
        assert cmp.value(repaired, "forget_ma") > ma_t  # the forgotten records' MA climbs back
        assert not at_threshold(cmp, repaired, el_t, ma_t)
    # control: without repair, forgetting the whole client costs more than the criterion allows
    cmp = comparisons["profiles-client"][0]
    assert kept(cmp, cmp.methods[1]) < RETAIN_FRACTION


def retained_tensors(scenario):
    forgotten = set(scenario.request.record_ids)
    return scenario.task.encode([scenario.records[int(i)] for c in sorted(scenario.clients)
                                 for i in scenario.clients[c].record_ids if int(i) not in forgotten])


@pytest.mark.slow
def test_ascent_past_the_threshold_collapses_utility() -> None:
    scenario = smoke("profiles-person")
    run = cache.trained_federation(scenario)
    el_t, ma_t = validation_thresholds(scenario, run)
    retained = retained_tensors(scenario)
    before = answer_probability(scenario.task, run.model, run.final_state, retained)
    results = {}
    for stop in (True, False):
        config = KnowledgeUnlearningConfig(el_threshold=el_t, ma_threshold=ma_t, stop_at_threshold=stop)
        state, _ = ascend(run, dict(run.final_state), scenario.request, config, CostCounter())
        results[stop] = answer_probability(scenario.task, run.model, state, retained) / before
    assert results[False] < COLLAPSE_FRACTION
    assert results[True] >= COLLAPSE_FRACTION  # control: stopped at the threshold, no collapse


@pytest.mark.slow
def test_sequential_chunks_cost_more_utility_here_than_all_at_once() -> None:
    """The paper's ordering claim does not reproduce at this scale (the page says why); this test
    guards the reported verdict. Control: the same check on seed 1 alone fails (there one person
    per chunk keeps more), so the median over seeds is what decides."""
    kept_by = {1: [], ORDERING_PEOPLE: []}
    for seed in ORDERING_SEEDS:
        scenario = smoke("profiles-client", seed)
        run = cache.trained_federation(scenario)
        el_t, ma_t = validation_thresholds(scenario, run)
        data = scenario.clients[0]
        people = sorted({int(o) for o in data.owner_ids})[:ORDERING_PEOPLE]
        request = ForgetRequest.forget_records(int(r) for r, o in zip(data.record_ids, data.owner_ids) if int(o) in people)
        others = scenario.task.encode([scenario.records[int(i)] for c in sorted(scenario.clients) if c != 0
                                       for i in scenario.clients[c].record_ids])
        before = answer_probability(scenario.task, run.model, run.final_state, others)
        for chunks in kept_by:
            method = KnowledgeUnlearning(KnowledgeUnlearningConfig(el_threshold=el_t, ma_threshold=ma_t,
                                                                   chunks=chunks, repair_rounds=0))
            state = cache.unlearned(scenario, run, method, request).state  # shared with the notebook
            kept_by[chunks].append(answer_probability(scenario.task, run.model, state, others) / before)
    batch, sequential = statistics.median(kept_by[1]), statistics.median(kept_by[ORDERING_PEOPLE])
    assert sequential < batch
    seed_one = ORDERING_SEEDS.index(1)
    assert not kept_by[ORDERING_PEOPLE][seed_one] < kept_by[1][seed_one]  # control: seed 1 alone
