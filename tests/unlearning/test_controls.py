"""The retrain oracle and the controls on the digits backdoor scenario (smoke size)."""

import pytest
import torch

from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.training import local_step_count
from fedunlearn.unlearning import cache
from fedunlearn.unlearning.base import history_fingerprint, run_method
from fedunlearn.unlearning.controls import ContinueFedAvg, DoNothing, Retrain
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.scenarios import build_scenario

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backdoor():
    scenario = build_scenario("digits-backdoor", seed=0)
    return scenario, cache.trained_federation(scenario)


def test_oracle_never_sees_the_forgotten_client(backdoor, monkeypatch):
    scenario, run = backdoor
    seen = []
    original = InProcessPool._train

    def spy(self, state, participants, round_index, config, plan):
        for cid in participants:
            kept = plan.select(self.clients[cid])
            seen.append((cid, set(kept.record_ids.tolist())))
        return original(self, state, participants, round_index, config, plan)

    monkeypatch.setattr(InProcessPool, "_train", spy)
    run_method(Retrain(), run, scenario.request)
    forgotten_ids = set(scenario.clients[0].record_ids.tolist())
    assert seen and all(cid != 0 for cid, _ in seen)
    assert all(not (ids & forgotten_ids) for _, ids in seen)


def test_oracle_without_a_class_holds_no_example_of_it():
    scenario = build_scenario("digits-class", seed=0)
    run = cache.trained_federation(scenario)
    state, _ = cache.retrained_oracle(scenario, run)
    metrics = evaluate(scenario, state, run.model)
    assert metrics["forget_acc"] == 0.0  # a class never seen is never predicted
    assert metrics["retain_acc"] > 0.85


def test_backdoor_negative_control(backdoor):
    """θ_o has a high ASR, θ_r a low one, and 5 more FedAvg rounds keep most of the backdoor."""
    scenario, run = backdoor
    original = evaluate(scenario, run.final_state, run.model)
    oracle = evaluate(scenario, cache.retrained_oracle(scenario, run)[0], run.model)
    continued = evaluate(scenario, run_method(ContinueFedAvg(), run, scenario.request).state, run.model)
    assert original["asr"] > 0.4
    assert oracle["asr"] < 0.05
    assert continued["asr"] > 0.5 * original["asr"]


def test_costs_are_counted_by_the_pool(backdoor):
    scenario, run = backdoor
    oracle = run_method(Retrain(), run, scenario.request)
    kept = [c for c in scenario.clients if c != 0]
    per_round = sum(local_step_count(scenario.clients[c].num_samples, scenario.config) for c in kept)
    assert oracle.cost.client_steps == per_round * scenario.config.rounds
    assert oracle.cost.client_rounds == len(kept) * scenario.config.rounds
    assert run_method(DoNothing(), run, scenario.request).cost.client_steps == 0


def test_unknown_client_is_rejected_and_history_untouched(backdoor):
    scenario, run = backdoor
    before = history_fingerprint(run.history)
    with pytest.raises(ForgetRequestError, match="unknown client"):
        run_method(Retrain(), run, ForgetRequest.forget_clients(42))
    assert history_fingerprint(run.history) == before


def test_same_seed_same_oracle_and_the_cache_returns_it(backdoor):
    scenario, run = backdoor
    a = run_method(Retrain(), run, scenario.request).state
    b = run_method(Retrain(), run, scenario.request).state
    cached, _ = cache.retrained_oracle(scenario, run)
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], cached[k]) for k in a)
