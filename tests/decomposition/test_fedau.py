"""FedAU: unlearning labels, the two-head loss, the head combination and the cost counts by hand; the
auxiliary head idle under FedAvg; bad inputs on a tiny federation; the reproduced claims on
``digits-class-aux`` (class mode) and ``digits-backdoor-records`` (sample mode).

The claim tests (``slow``) take seed 0 at smoke size from the shared cache: the scenario's FedAvg federation
and its retraining θ_r without the forgotten data (the monolithic referee), FedAU's federation and FedAU's own
oracle (its training on the retained data only). Each claim also runs a named control under which its check
fails: do-nothing (FedAU's θ_o, heads not combined) for forgetting, and one FedAvg round of retraining for the
cost bound.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from fedunlearn.decomposition.fedau import (
    ACCURACY_POINTS,
    AUX_HEAD,
    MAIN_HEAD,
    OPERATION_SHARE,
    OTHER_CLASSES_POINTS,
    TARGET_CLASS_ACCURACY,
    AuxiliaryHeads,
    FedAU,
    FedAUConfig,
    aggregate_heads,
    case_states,
    class_accuracies,
    combine_heads,
    declared_request,
    declared_tensors,
    operation_flops,
    round_flops,
    unlearning_labels,
)
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import TrainingHistory
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.training import FederationConfig
from fedunlearn.unlearning.base import (
    TrainedFederation,
    history_fingerprint,
    run_method,
    train_federation,
)
from fedunlearn.unlearning.compare import tolerance
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.scenarios import AuxHeadMLP, build_scenario

# ---------------------------------------------------------------- by hand


def test_class_mode_labels_every_row_with_the_target() -> None:
    y = torch.tensor([0, 3, 7, 3])
    assert torch.equal(unlearning_labels(y, None, 3, 0, 10), torch.full((4,), 3))


def test_random_labels_are_wrong_on_forgotten_rows_true_elsewhere_and_fixed() -> None:
    y = torch.arange(10).repeat(20)
    forget = torch.arange(200) % 2 == 0
    labels = unlearning_labels(y, forget, -1, seed=5, classes=10)
    assert bool((labels[forget] != y[forget]).all())
    assert torch.equal(labels[~forget], y[~forget])
    assert bool(((labels >= 0) & (labels < 10)).all())
    assert torch.equal(labels, unlearning_labels(y, forget, -1, seed=5, classes=10))  # same every round
    assert len(set(labels[forget].tolist())) > 5  # spread over the wrong classes
    assert torch.equal(unlearning_labels(y, None, -1, 5, 10), y)  # nothing to forget: the true labels


def test_combine_heads_by_hand() -> None:
    state = {"main.0.weight": torch.ones(2, 2), MAIN_HEAD[0]: torch.tensor([[2.0, 4.0]]),
             MAIN_HEAD[1]: torch.tensor([1.0]), AUX_HEAD[0]: torch.tensor([[1.0, -1.0]]),
             AUX_HEAD[1]: torch.tensor([3.0])}
    cls = combine_heads(state, "class", 0.9)
    assert torch.equal(cls[MAIN_HEAD[0]], torch.tensor([[1.0, 5.0]]))  # W1 - W2
    assert torch.equal(cls[MAIN_HEAD[1]], torch.tensor([-2.0]))
    mixed = combine_heads(state, "random", 0.75)  # 0.25 W1 + 0.75 W2
    assert torch.allclose(mixed[MAIN_HEAD[0]], torch.tensor([[1.25, 0.25]]))
    assert torch.allclose(mixed[MAIN_HEAD[1]], torch.tensor([2.5]))
    for out in (cls, mixed):
        assert out["main.0.weight"] is state["main.0.weight"] and out[AUX_HEAD[0]] is state[AUX_HEAD[0]]
    assert torch.equal(state[MAIN_HEAD[0]], torch.tensor([[2.0, 4.0]]))  # the input is left alone


def test_aggregation_averages_the_auxiliary_head_over_its_trainers_only() -> None:
    zero = {"w": torch.tensor([0.0]), AUX_HEAD[0]: torch.tensor([0.0]), AUX_HEAD[1]: torch.tensor([0.0])}
    updates = {0: {"w": torch.tensor([4.0]), AUX_HEAD[0]: torch.tensor([6.0]), AUX_HEAD[1]: torch.tensor([2.0])},
               1: {"w": torch.tensor([8.0]), AUX_HEAD[0]: torch.tensor([0.0]), AUX_HEAD[1]: torch.tensor([0.0])},
               2: {"w": torch.tensor([0.0]), AUX_HEAD[0]: torch.tensor([2.0]), AUX_HEAD[1]: torch.tensor([0.0])}}
    out = aggregate_heads(zero, updates, {0: 1, 1: 3, 2: 4})
    assert torch.allclose(out["w"], torch.tensor([(4 + 24 + 0) / 8]))  # FedAvg: (1*4 + 3*8 + 4*0) / 8
    assert torch.allclose(out[AUX_HEAD[0]], torch.tensor([4.0]))  # clients 0 and 2 trained it: (6 + 2) / 2
    assert torch.allclose(out[AUX_HEAD[1]], torch.tensor([1.0]))  # (2 + 0) / 2
    idle = aggregate_heads(zero, {1: updates[1]}, {1: 3})
    assert torch.equal(idle[AUX_HEAD[0]], zero[AUX_HEAD[0]])  # nobody trained it: it stays


def test_flop_counts_by_hand() -> None:
    state = {MAIN_HEAD[0]: torch.zeros(10, 64), MAIN_HEAD[1]: torch.zeros(10),
             AUX_HEAD[0]: torch.zeros(10, 64), AUX_HEAD[1]: torch.zeros(10), "main.0.weight": torch.zeros(64, 64)}
    assert operation_flops(state, "class") == 650 and operation_flops(state, "random") == 1950
    # 3 steps x batch 2 x 6 FLOPs x (650 + 650 + 4096) weights; without the auxiliary head 650 fewer
    assert round_flops(state, 3, 2) == 3 * 2 * 6 * 5396
    assert round_flops(state, 3, 2, aux=False) == 3 * 2 * 6 * 4746


def test_two_head_loss_is_the_sum_of_two_cross_entropies() -> None:
    torch.manual_seed(0)
    model = AuxHeadMLP(hidden=8)
    x, y = torch.randn(5, 64), torch.tensor([0, 1, 2, 3, 4])
    objective = AuxiliaryHeads(target_class=7)
    columns = {"x": x, "y": y, "forget": torch.tensor([True, False, False, False, False])}  # an unlearning client
    batch = {**columns, **objective.prepare(None, model, columns, {})}
    expected = F.cross_entropy(model(x), y) + F.cross_entropy(model.aux(model.features(x)), torch.full((5,), 7))
    assert objective.loss(None, model, batch).item() == pytest.approx(expected.item())
    columns["forget"] = torch.zeros(5, dtype=torch.bool)  # a client with nothing to forget trains W_1 only
    batch = {**columns, **objective.prepare(None, model, columns, {})}
    assert objective.loss(None, model, batch).item() == pytest.approx(F.cross_entropy(model(x), y).item())


def test_detached_features_get_no_gradient_from_the_auxiliary_loss() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 64), torch.tensor([0, 1, 2, 3])

    def fresh() -> AuxHeadMLP:
        torch.manual_seed(1)
        return AuxHeadMLP(hidden=8)

    def body_gradient(objective: AuxiliaryHeads) -> torch.Tensor:
        model = fresh()
        columns = {"x": x, "y": y, "forget": torch.ones(4, dtype=torch.bool)}
        batch = {**columns, **objective.prepare(None, model, columns, {})}
        objective.loss(None, model, batch).backward()
        return model.main[0].weight.grad

    reference = fresh()
    F.cross_entropy(reference(x), y).backward()  # the main loss alone
    assert torch.allclose(body_gradient(AuxiliaryHeads(target_class=2, detach_features=True)),
                          reference.main[0].weight.grad, atol=1e-7)
    assert not torch.allclose(body_gradient(AuxiliaryHeads(target_class=2)), reference.main[0].weight.grad, atol=1e-7)


def test_declared_request_round_trips() -> None:
    for request in (ForgetRequest.forget_class(3), ForgetRequest.forget_records([5, 1_000_002]),
                    ForgetRequest.forget_clients(0, 2)):
        assert declared_request(declared_tensors(request)) == request


@pytest.mark.parametrize(("field", "value"), [("alpha", 0.0), ("alpha", 1.5), ("seed", -1), ("detach_features", 1)])
def test_invalid_config_values_name_field_and_value(field: str, value) -> None:
    with pytest.raises(ValueError, match=rf"{field}.*{value}"):
        FedAUConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        get_method("fedau", **{field: value})


# ---------------------------------------------------------------- tiny federations


def _setup(name: str, rows: int = 24, rounds: int = 2) -> tuple:
    scenario = build_scenario(name, seed=0)
    clients = {c: d.select(torch.arange(d.num_samples) < rows) for c, d in scenario.clients.items() if c < 3}
    if name == "digits-backdoor-records":  # keep the triggered copies of client 0 in the tiny federation
        clients[0] = scenario.clients[0].select(torch.arange(scenario.clients[0].num_samples) % 6 == 0)
    model = scenario.task.build_model()
    pool = InProcessPool(scenario.task, clients, model)
    config = FederationConfig(rounds=rounds, batch_size=8, lr=0.1, seed=0)
    setup = TrainedFederation(scenario.task, pool, config, scenario.task.get_state(model), {}, TrainingHistory({}),
                              CostCounter(), model)
    return scenario, pool, config, setup


@pytest.fixture(scope="module")
def tiny_class():
    scenario, pool, config, setup = _setup("digits-class-aux")
    return scenario, setup, FedAU().train_federation(setup, request=scenario.request)


def test_fedavg_leaves_the_auxiliary_head_idle_and_trains_the_plain_mlp() -> None:
    scenario, pool, config, setup = _setup("digits-class-aux")
    run = train_federation(setup.task, pool, config, setup.init_state)
    for key in AUX_HEAD:
        assert torch.equal(run.final_state[key], setup.init_state[key])
    plain = build_scenario("digits-class", seed=0)
    plain_pool = InProcessPool(plain.task, {c: d.select(torch.arange(d.num_samples) < 24)
                                            for c, d in plain.clients.items() if c < 3})
    reference = train_federation(plain.task, plain_pool, config)
    for key, value in reference.final_state.items():
        assert torch.equal(run.final_state[f"main.{key}"], value)


def test_unlearning_is_one_server_operation_and_leaves_the_history_alone(tiny_class) -> None:
    scenario, _, run = tiny_class
    before = history_fingerprint(run.history)
    result = run_method(FedAU(), run, scenario.request)
    assert result.cost.client_steps == 0 and result.cost.bytes_communicated == 0
    assert result.cost.server_steps == 1
    assert history_fingerprint(run.history) == before
    expected = combine_heads(run.final_state, "class", 0.9)
    assert all(torch.equal(result.state[k], expected[k]) for k in expected)


def test_both_heads_train_and_the_training_counts_every_step(tiny_class) -> None:
    _, setup, run = tiny_class
    for key in (*MAIN_HEAD, *AUX_HEAD):
        assert not torch.equal(run.final_state[key], setup.init_state[key])
    # 2 rounds x 3 clients x ceil(24 / 8) steps
    assert run.cost.client_steps == 2 * 3 * 3 and run.cost.client_rounds == 6


def test_absent_class_is_refused_naming_it(tiny_class) -> None:
    scenario, setup, run = tiny_class
    with pytest.raises(ForgetRequestError, match="class 42 is not present"):
        run_method(FedAU(), run, ForgetRequest.forget_class(42))
    with pytest.raises(ForgetRequestError, match="class 42"):
        FedAU().train_federation(setup, request=ForgetRequest.forget_class(42))
    with pytest.raises(ForgetRequestError, match="class 42"):
        class_accuracies(scenario.task, setup.model, run.final_state, scenario.test, 42)


def test_another_request_than_the_declared_one_is_refused(tiny_class) -> None:
    _, setup, run = tiny_class
    with pytest.raises(ForgetRequestError, match="class 3.*not class 5"):
        run_method(FedAU(), run, ForgetRequest.forget_class(5))
    with pytest.raises(ForgetRequestError, match="not trained by fedau"):
        run_method(FedAU(), train_federation(setup.task, setup.pool, setup.config, setup.init_state),
                   ForgetRequest.forget_class(3))


def test_training_needs_a_declared_request_and_an_auxiliary_head() -> None:
    scenario, _, config, setup = _setup("digits-class-aux")
    with pytest.raises(ValueError, match="declared"):
        FedAU().train_federation(setup)
    plain = build_scenario("digits-class", seed=0)
    model = plain.task.build_model()
    bare = TrainedFederation(plain.task, plain.pool(model), config, plain.task.get_state(model), {},
                             TrainingHistory({}), CostCounter(), model)
    with pytest.raises(ValueError, match="auxiliary head"):
        FedAU().train_federation(bare, request=plain.request)


def test_sample_and_client_modes_run_on_a_tiny_federation() -> None:
    scenario, pool, _, setup = _setup("digits-backdoor-records")
    ids = pool.clients[0].record_ids
    triggered = ForgetRequest.forget_records(ids[ids >= 1_000_000].tolist())
    assert len(triggered.record_ids) > 0
    run = FedAU().train_federation(setup, request=triggered)
    first = run.history.rounds[0]
    assert any(bool(first.client_updates[0][k].any()) for k in AUX_HEAD)  # client 0 holds the records: it trains W2
    assert not any(bool(first.client_updates[c][k].any()) for c in (1, 2) for k in AUX_HEAD)  # the others do not
    result = run_method(FedAU(), run, triggered)
    expected = combine_heads(run.final_state, "random", 0.9)
    assert all(torch.equal(result.state[k], expected[k]) for k in expected)
    client = ForgetRequest.forget_clients(1)
    run = FedAU().train_federation(setup, request=client)
    assert run_method(FedAU(), run, client).cost.server_steps == 1


# ---------------------------------------------------------------- claims (smoke size, seed 0)


@pytest.fixture(scope="module")
def class_case():
    torch.set_num_threads(1)
    scenario = build_scenario("digits-class-aux", seed=0)
    return scenario, case_states(scenario)


@pytest.fixture(scope="module")
def backdoor_case():
    torch.set_num_threads(1)
    scenario = build_scenario("digits-backdoor-records", seed=0)
    return scenario, case_states(scenario)


def _split(scenario, state, model):
    return class_accuracies(scenario.task, model, state, scenario.test, scenario.request.label)


@pytest.mark.slow
def test_class_mode_forgets_the_class_and_keeps_the_others(class_case) -> None:
    scenario, case = class_case
    model = case.fedau.model
    unlearned = _split(scenario, case.unlearned, model)
    retrain = _split(scenario, case.retrain, case.fedavg.model)
    own = _split(scenario, case.own_oracle.final_state, model)
    assert unlearned.target <= TARGET_CLASS_ACCURACY
    assert abs(unlearned.others - retrain.others) <= OTHER_CLASSES_POINTS  # the monolithic θ_r
    assert abs(unlearned.others - own.others) <= OTHER_CLASSES_POINTS  # FedAU's own oracle
    # control: do nothing (FedAU's θ_o, heads not combined) keeps the class
    assert _split(scenario, case.fedau.final_state, model).target > TARGET_CLASS_ACCURACY


@pytest.mark.slow
def test_sample_mode_removes_the_backdoor_and_keeps_accuracy(backdoor_case) -> None:
    scenario, case = backdoor_case
    model = case.fedau.model
    unlearned = evaluate(scenario, case.unlearned, model)
    own = evaluate(scenario, case.own_oracle.final_state, model)
    retrain = evaluate(scenario, case.retrain, case.fedavg.model)
    assert abs(unlearned["asr"] - own["asr"]) <= tolerance("asr")  # FedAU's own oracle
    assert unlearned["asr"] <= retrain["asr"] + tolerance("asr")  # the monolithic θ_r
    assert unlearned["test_acc"] >= retrain["test_acc"] - ACCURACY_POINTS
    # control: do nothing keeps the backdoor
    original = evaluate(scenario, case.fedau.final_state, model)
    assert abs(original["asr"] - own["asr"]) > tolerance("asr")


@pytest.mark.slow
@pytest.mark.parametrize("case_name", ["class_case", "backdoor_case"])
def test_unlearning_costs_under_one_percent_of_a_round(case_name, request) -> None:
    scenario, case = request.getfixturevalue(case_name)
    run = case.fedau
    steps_per_round = run.cost.client_steps / run.config.rounds
    share = operation_flops(case.unlearned, "class" if scenario.request.kind == "class" else "random") / round_flops(
        run.final_state, steps_per_round, run.config.batch_size)
    assert case.unlearning_cost.client_steps == 0 and case.unlearning_cost.bytes_communicated == 0
    assert share <= OPERATION_SHARE and case.unlearning_cost.server_steps == 1
    # control: one round of retraining costs a whole round
    assert round_flops(case.own_oracle.final_state, case.own_oracle.cost.client_steps / run.config.rounds,
                       run.config.batch_size) / round_flops(run.final_state, steps_per_round,
                                                            run.config.batch_size) > OPERATION_SHARE


@pytest.mark.slow
@pytest.mark.parametrize("case_name", ["class_case", "backdoor_case"])
def test_own_oracle_is_the_monolithic_retraining_bit_for_bit(case_name, request) -> None:
    # without the forgotten data no client holds what the request names: W_2 stays idle, the rest is FedAvg
    _, case = request.getfixturevalue(case_name)
    assert case.own_oracle.final_state.keys() == case.retrain.keys()
    for key, value in case.retrain.items():
        assert torch.equal(case.own_oracle.final_state[key], value)
    for key in AUX_HEAD:
        assert torch.equal(case.own_oracle.final_state[key], case.own_oracle.init_state[key])


@pytest.mark.slow
def test_extra_training_cost_is_one_head(class_case) -> None:
    _, case = class_case
    plain, fedau = case.fedavg.cost, case.fedau.cost
    assert fedau.client_steps == plain.client_steps  # same schedule, same steps
    head = sum(case.fedau.final_state[k].numel() for k in AUX_HEAD)
    extra = round_flops(case.fedau.final_state, 1, 1) - round_flops(case.fedau.final_state, 1, 1, aux=False)
    assert extra == 6 * head
    assert fedau.bytes_communicated == plain.bytes_communicated  # the idle head travels in FedAvg's state too
    assert math.isfinite(fedau.wall_time_s / plain.wall_time_s)


# ---------------------------------------------------------------- Flower (in one process)


def _flower_test_pool():
    """``tests/flower/test_pool.py`` (its in-process ``LocalGrid``), loaded by path."""
    import importlib.util
    from pathlib import Path

    pytest.importorskip("flwr", reason="Flower is not installed; pip install -e '.[flower]'")
    path = Path(__file__).parents[1] / "flower" / "test_pool.py"
    spec = importlib.util.spec_from_file_location("flower_test_pool_for_fedau", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fedau_trains_and_unlearns_on_flower_as_in_process(tmp_path, monkeypatch) -> None:
    """A ``mode="train"`` run naming ``fedau`` trains its way (the declared request reaches it), and
    the ``mode="unlearn"`` run combines the heads: both equal the in-process engine."""
    import json

    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from safetensors.torch import load_file

    from fedunlearn.flower import server_app
    from fedunlearn.flower.settings import RunSettings

    grid_module = _flower_test_pool()
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    config = {"scenario": "digits-class-aux", "seed": 0, "num-clients": 3, "rounds": 2}
    scenario = RunSettings.from_run_config(config).build_scenario()
    model = scenario.task.build_model()
    setup = TrainedFederation(scenario.task, scenario.pool(model), scenario.config, scenario.task.get_state(model),
                              {}, TrainingHistory({}), CostCounter(), model, scenario.server_inputs)
    reference = FedAU().train_federation(setup, request=scenario.request)
    expected = run_method(FedAU(), reference, scenario.request)
    nodes = {200 + c: c for c in scenario.clients}
    paths = {"history-path": str(tmp_path / "history"), "out-dir": str(tmp_path / "out"), "method": "fedau"}
    for mode in ("train", "unlearn"):
        context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                          run_config={**config, **paths, "mode": mode})
        server_app.main(grid_module.LocalGrid(config, nodes), context)
        if mode == "train":
            history = TrainingHistory.load(tmp_path / "history")
            grid_module.assert_same_state(history.final_state, reference.final_state)
    result = json.loads((tmp_path / "out" / "unlearn-fedau" / "result.json").read_text())
    assert result["status"] == "finished" and result["cost"]["client_steps"] == 0
    grid_module.assert_same_state(load_file(tmp_path / "out" / "unlearn-fedau" / "state.safetensors"), expected.state)


@pytest.mark.slow
def test_sample_mode_asr_stays_in_band_over_three_seeds_while_accuracy_follows_one_client() -> None:
    """What reproduces over seeds 0-2: the ASR within the band of FedAU's own oracle at every seed (control:
    do-nothing outside it); the accuracy criterion holds at seed 0 only (the served head is mostly client 0's
    local W_2), recorded here so that a change in it is noticed."""
    from fedunlearn.unlearning.compare import compare

    cmp = compare("digits-backdoor-records", ["fedau"], seeds=(0, 1, 2), progress=False)
    for row in cmp.per_seed:
        fedau = row["methods"]["fedau"]
        assert abs(fedau["metrics"]["asr"] - fedau["own_oracle"]["asr"]) <= tolerance("asr")
        assert row["original"]["asr"] - fedau["own_oracle"]["asr"] > tolerance("asr")
    below = [row["seed"] for row in cmp.per_seed
             if row["methods"]["fedau"]["metrics"]["test_acc"] < row["oracle"]["test_acc"] - ACCURACY_POINTS]
    assert below == [1, 2]
