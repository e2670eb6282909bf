"""SISA: shard/slice assignment and schedule by hand, the vote by hand, exact retraining of one shard from its
checkpoint (bit for bit, client and record requests) on a toy federation, bad inputs, and the reproduced claims
on ``digits-backdoor``.

The claim tests (``slow``) train SISA on seed 0 of ``digits-backdoor`` (10 IID clients, 20 rounds; cached) and
run each of its clients' requests. Each also runs a named control under which its check fails: a broken step
that retrains every shard (cost, slicing; the ablation that retrains the affected shard from w_0 instead of its
checkpoint shows what the checkpoints add), do-nothing (exactness), and a single shard's model in place of the
vote (accuracy).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedunlearn.decomposition.sisa import (
    CHECKPOINTS,
    COST_FACTOR,
    COST_SHARDS,
    SLICED,
    VOTE_MAX_SHARDS,
    VOTE_POINTS,
    VOTE_SHARDS,
    Sisa,
    SisaConfig,
    VotingEnsemble,
    monolithic_retrain_steps,
    served_state,
    shard_checkpoint,
    shard_of,
    slice_of,
    slice_rounds,
)
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import TrainingHistory
from fedunlearn.federated.requests import ForgetRequest, split_clients
from fedunlearn.unlearning import cache
from fedunlearn.unlearning.base import TrainedFederation, run_method, train_federation
from fedunlearn.unlearning.compare import compare
from fedunlearn.unlearning.controls import Retrain
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.scenarios import build_scenario
from toys import digits_setup, states_equal

# ---------------------------------------------------------------- by hand


def test_clients_go_to_shards_and_slices_by_id() -> None:
    assert [shard_of(c, 4) for c in range(10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert [slice_of(c, 4, 2) for c in range(10)] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert [slice_of(c, 4, 3) for c in range(10)] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert [slice_of(c, 4, 1) for c in range(10)] == [0] * 10


def test_slice_schedule_is_sisas() -> None:
    # a = 2T/(R+1); slice l ends at floor((l+1)a): T rounds when R = 1, 2RT/(R+1) in all
    assert slice_rounds(20, 1) == [range(0, 20)]
    assert slice_rounds(20, 2) == [range(0, 13), range(13, 26)]
    assert slice_rounds(3, 3) == [range(0, 1), range(1, 3), range(3, 4)]


class Fixed(nn.Module):
    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("out", torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out.expand(len(x), -1)


def test_vote_is_the_plurality_of_active_members_with_a_proper_distribution() -> None:
    members = [Fixed([2.0, 0.0, 0.0]), Fixed([0.0, 1.0, 0.0]), Fixed([0.0, 3.0, 0.0]), Fixed([0.0, 0.0, 9.0])]
    vote = VotingEnsemble(members)
    x = torch.zeros(2, 1)
    out = vote(x)
    assert out.argmax(-1).tolist() == [1, 1]  # two votes for class 1 against one each
    assert torch.allclose(out.exp().sum(-1), torch.ones(2))
    # by hand: (votes + mean softmax) / (members + 1)
    mean = torch.stack([m.out.softmax(-1) for m in members]).mean(0)
    assert torch.allclose(out[0].exp(), (torch.tensor([1.0, 2.0, 1.0]) + mean) / 5)
    vote.active = torch.tensor([1.0, 0.0, 0.0, 1.0])  # a tie of one vote each: the mean softmax decides
    assert vote(x).argmax(-1).tolist() == [2, 2]
    vote.active = torch.zeros(4)
    assert torch.allclose(vote(x).exp(), torch.full((2, 3), 1 / 3))


def test_served_state_loads_into_the_ensemble() -> None:
    members = [nn.Linear(2, 3), nn.Linear(2, 3)]
    vote = VotingEnsemble(members)
    states = [{k: torch.full_like(v, float(i)) for k, v in m.state_dict().items()} for i, m in enumerate(members)]
    vote.load_state_dict(served_state(states, [True, False]))
    assert torch.equal(vote.shards[1].weight, torch.ones(3, 2)) and vote.active.tolist() == [1.0, 0.0]


# ---------------------------------------------------------------- a toy federation


def toy(clients: dict | None = None, rounds: int = 4) -> TrainedFederation:
    return digits_setup(clients, rounds, num_clients=6)


def retained_setup(setup: TrainedFederation, request: ForgetRequest) -> TrainedFederation:
    return toy(split_clients(setup.pool.clients, request)[0], setup.config.rounds)


@pytest.mark.parametrize("forgotten", [0, 1, 4, 5])
def test_retrained_shard_equals_a_shard_trained_without_the_client_bit_for_bit(forgotten: int) -> None:
    method = Sisa(SisaConfig(shards=2, slices=2))  # shard 0: clients 0, 2, 4; slices: {0, 2} then {4}
    setup = toy()
    run = method.train_federation(setup)
    request = ForgetRequest.forget_clients(forgotten)
    result = run_method(method, run, request)
    oracle = method.train_federation(retained_setup(setup, request))
    assert states_equal(result.state, oracle.final_state)
    # the other shard is θ_o's, untouched
    other = 1 - shard_of(forgotten, 2)
    assert states_equal({k: v for k, v in result.state.items() if k.startswith(f"shards.{other}.")},
                 {k: v for k, v in run.final_state.items() if k.startswith(f"shards.{other}.")})
    # cost: only the affected shard's slices from the forgotten client's on (4 rounds -> slices of 2 and 3 rounds)
    slices = slice_rounds(4, 2)
    shard = [c for c in range(6) if shard_of(c, 2) == shard_of(forgotten, 2) and c != forgotten]
    start = slice_of(forgotten, 2, 2)
    expected = sum(len(slices[index]) * 3 * sum(slice_of(c, 2, 2) <= index for c in shard)  # 24/8 = 3 steps
                   for index in range(start, 2))
    assert result.cost.client_steps == expected


def test_a_step_that_skips_the_retraining_is_not_exact() -> None:
    """Control (broken step): serving θ_o's shards without retraining is not exact."""
    class FromFinal(Sisa):
        name = "test-sisa-from-final"

        def unlearn(self, run, request, counter):
            state = dict(run.final_state)
            return state

    method = FromFinal(SisaConfig(shards=2, slices=2))
    setup = toy()
    run = method.train_federation(setup)
    request = ForgetRequest.forget_clients(4)
    oracle = method.train_federation(retained_setup(setup, request))
    assert not states_equal(run_method(method, run, request).state, oracle.final_state)


def test_record_requests_retrain_from_the_owners_slice_exactly() -> None:
    method = Sisa(SisaConfig(shards=2, slices=2))
    setup = toy()
    run = method.train_federation(setup)
    ids = setup.pool.clients[4].record_ids[:5].tolist() + setup.pool.clients[1].record_ids[:2].tolist()
    request = ForgetRequest.forget_records(ids)
    assert method.restarts(run, request) == {0: 1, 1: 0}
    result = run_method(method, run, request)
    assert states_equal(result.state, method.train_federation(retained_setup(setup, request)).final_state)


def test_a_shard_left_without_clients_stops_voting_and_checkpoints_are_kept() -> None:
    method = Sisa(SisaConfig(shards=4, slices=1))  # shards 2 and 3: clients {2}, {3} ... and {4,0}, {5,1}
    run = method.train_federation(toy())
    assert set(run.extras) == {CHECKPOINTS}
    assert len(run.extras[CHECKPOINTS]) == 4 * len(run.init_state)  # one checkpoint (the final) per shard
    assert states_equal(shard_checkpoint(run.extras, 2, 0, run.init_state),
                 {k[len("shards.2."):]: v for k, v in run.final_state.items() if k.startswith("shards.2.")})
    state = run_method(method, run, ForgetRequest.forget_clients(2)).state
    assert state["active"].tolist() == [1.0, 1.0, 0.0, 1.0]
    vote = method.trained_model(run)
    vote.load_state_dict(state)  # the served model loads and votes without the empty shard


def test_monolithic_steps_match_a_measured_retraining() -> None:
    setup = toy()
    run = train_federation(setup.task, setup.pool, setup.config, setup.init_state, model=setup.model)
    request = ForgetRequest.forget_clients(1)
    measured = run_method(Retrain(), run, request).cost.client_steps
    assert monolithic_retrain_steps(setup, request) == measured == 4 * 5 * 3


def test_bad_input_names_the_value() -> None:
    with pytest.raises(ValueError, match="shards=7"):
        Sisa(SisaConfig(shards=7)).train_federation(toy())
    with pytest.raises(ValueError, match="shards must be >= 1, got 0"):
        get_method("sisa", shards=0)
    with pytest.raises(ValueError, match="slices must be >= 1, got 0"):
        SisaConfig(slices=0)


def test_a_shard_count_above_the_clients_stores_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FEDUNLEARN_CACHE", str(tmp_path))
    scenario = build_scenario("digits-backdoor", seed=0).restricted(num_clients=3, rounds=1)
    with pytest.raises(ValueError, match="shards=5 exceeds the number of clients \\(3\\)"):
        cache.trained_federation(scenario, method=Sisa())
    assert not any((tmp_path / "federations").glob("*/meta.json"))


# ---------------------------------------------------------------- reproduced claims (digits-backdoor)


def expected_cost(config: SisaConfig, unlearner: type[Sisa] = Sisa, requests: int = 0) -> float:
    """Client steps of unlearning (SISA's, or a control's on SISA's trained federation) averaged over the 10
    single-client requests (the first ``requests`` of them when given: a control that retrains everything
    costs the same for each), over the average monolithic retraining's (uniform requests)."""
    scenario = build_scenario("digits-backdoor", seed=0)
    run = cache.trained_federation(scenario, method=Sisa(config))
    method = unlearner(config)
    steps, monolithic = 0, 0
    for c in sorted(scenario.clients)[: requests or None]:
        request = ForgetRequest.forget_clients(c)
        steps += run_method(method, run, request).cost.client_steps
        monolithic += monolithic_retrain_steps(run, request)
    return steps / monolithic


class EveryShard(Sisa):
    """Control (broken step): every request retrains every shard from w_0."""

    name = "test-sisa-every-shard"

    def restarts(self, run, request):
        return {s: 0 for s in range(self.config.shards)}


class FromScratch(Sisa):
    """Control (ablation): the affected shard is retrained from w_0, ignoring its checkpoints."""

    name = "test-sisa-from-scratch"

    def restarts(self, run, request):
        return {s: 0 for s in super().restarts(run, request)}


@pytest.mark.slow
@pytest.mark.parametrize("shards", COST_SHARDS)
def test_reproduced_claim_expected_cost_at_most_two_over_s(shards: int) -> None:
    assert expected_cost(SisaConfig(shards=shards)) <= COST_FACTOR / shards
    assert expected_cost(SisaConfig(shards=shards), EveryShard, requests=2) > COST_FACTOR / shards


@pytest.mark.slow
def test_reproduced_claim_slicing_cuts_the_expected_cost() -> None:
    shards = COST_SHARDS[0]
    unsliced = expected_cost(SisaConfig(shards=shards))
    sliced = expected_cost(SisaConfig(shards=shards, slices=SLICED))
    assert sliced < unsliced
    # the checkpoints do part of it: retraining the shard from w_0 on the same slices costs more
    assert expected_cost(SisaConfig(shards=shards, slices=SLICED), FromScratch) > sliced
    assert expected_cost(SisaConfig(shards=shards, slices=SLICED), EveryShard, requests=2) >= unsliced


@pytest.fixture(scope="module")
def backdoor():
    """digits-backdoor, seed 0: SISA (default 5 shards) against its own oracle, and do-nothing."""
    return compare("digits-backdoor", ["sisa", "do-nothing"], seeds=(0,), progress=False)


@pytest.mark.slow
def test_reproduced_claim_exact_against_its_own_oracle(backdoor) -> None:
    """Every metric of the unlearned vote equals the vote trained without client 0 (zero gaps); the
    control do-nothing (θ_o of the monolithic model) has non-zero gaps to θ_r."""
    row = backdoor.per_seed[0]["methods"]["sisa"]
    assert all(gap == 0 for gap in row["gaps"].values())
    assert row["rho_steps"] < 1
    assert any(gap != 0 for gap in backdoor.per_seed[0]["methods"]["do-nothing"]["gaps"].values())


@pytest.mark.slow
def test_reproduced_claim_vote_accuracy_close_to_monolithic() -> None:
    """For every S <= VOTE_MAX_SHARDS of the sweep, the vote's test accuracy (θ_o of SISA) is within VOTE_POINTS of
    the monolithic θ_o's. Control: the weakest shard's model alone (at S = VOTE_MAX_SHARDS) is not, so the vote,
    not any one shard, carries the accuracy."""
    scenario = build_scenario("digits-backdoor", seed=0)
    mono = cache.trained_federation(scenario)
    monolithic = cache.evaluation(scenario, mono.final_state, mono.model).metrics["test_acc"]
    for shards in (s for s in VOTE_SHARDS if s <= VOTE_MAX_SHARDS):
        run = cache.trained_federation(scenario, method=Sisa(SisaConfig(shards=shards)))
        assert cache.evaluation(scenario, run.final_state, run.model).metrics["test_acc"] >= monolithic - VOTE_POINTS
    alone = []
    for s in range(VOTE_MAX_SHARDS):
        single = scenario.task.build_model()
        single.load_state_dict(shard_checkpoint(run.extras, s, 0, run.init_state))
        alone.append(cache.evaluation(scenario, scenario.task.get_state(single), single).metrics["test_acc"])
    assert min(alone) < monolithic - VOTE_POINTS


# ---------------------------------------------------------------- on Flower


def test_sisa_trains_and_unlearns_on_flower_as_in_process(tmp_path, flower_server) -> None:
    """``mode="train"`` with ``method="sisa"`` trains the shards through the Flower pool (checkpoints saved
    with the history), ``mode="unlearn"`` retrains client 0's shard: both equal the in-process engine."""
    import json

    from safetensors.torch import load_file

    from fedunlearn.flower.settings import RunSettings

    config = {"scenario": "digits-backdoor", "seed": 0, "num-clients": 4, "rounds": 2}
    overrides = {"shards": 2, "slices": 2}
    method = get_method("sisa", **overrides)
    scenario = RunSettings.from_run_config(config).build_scenario()
    model = scenario.task.build_model()
    setup = TrainedFederation(scenario.task, scenario.pool(model), scenario.config, scenario.task.get_state(model),
                              {}, TrainingHistory({}), CostCounter(), model, scenario.server_inputs)
    reference = method.train_federation(setup)
    expected = run_method(method, reference, scenario.request)
    nodes = {300 + c: c for c in scenario.clients}
    paths = {"history-path": str(tmp_path / "history"), "out-dir": str(tmp_path / "out")}
    own = {"method": "sisa", "method-config": json.dumps(overrides)}
    for mode in ("train", "unlearn"):
        flower_server(config, nodes, {**paths, **own, "mode": mode})
    history = TrainingHistory.load(tmp_path / "history")
    assert set(history.extras) == {CHECKPOINTS}
    flower_server.assert_same_state(history.final_state, reference.final_state)
    out = tmp_path / "out" / "unlearn-sisa"
    assert json.loads((out / "result.json").read_text())["status"] == "finished"
    flower_server.assert_same_state(load_file(out / "state.safetensors"), expected.state)
