"""The decomposition family's language-model baseline, task-vector negation: its arithmetic on a
tiny federation, bad settings, the kinds of scenario it serves, and its sweep on the language model
(the same comparison as the family page): forgetting grows with α. Control: ``do-nothing`` (and
α → 0) leaves the forgotten records as likely as θ_o does, so the claim test's first check fails
under it."""

from __future__ import annotations

import pytest
import torch

from fedunlearn.decomposition.task_vector import ALPHA_GRID, TaskVectorConfig
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest
from fedunlearn.federated.task import ClassificationTask
from fedunlearn.federated.training import FederationConfig, LocalPlan, client_update
from fedunlearn.unlearning.base import check_scenario, train_federation
from fedunlearn.unlearning.compare import compare
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

CONFIG = FederationConfig(rounds=2, batch_size=4, lr=0.1)


def tiny():
    generator = torch.Generator().manual_seed(3)
    clients, start = {}, 0
    for cid, n in {0: 6, 1: 9}.items():
        x, y = torch.randn(n, 4, generator=generator), torch.randint(0, 3, (n,), generator=generator)
        clients[cid] = ClientData(cid, {"x": x, "y": y}, torch.arange(start, start + n), class_labels=y)
        start += n
    task = ClassificationTask(lambda: torch.nn.Linear(4, 3), init_seed=0)
    return task, clients, train_federation(task, InProcessPool(task, clients), CONFIG)


def test_the_state_is_theta_o_minus_alpha_times_the_reinforcement_step():
    task, clients, run = tiny()
    request = ForgetRequest.forget_clients(0)
    got = get_method("task-vector-negation", alpha=2.0, epochs=3).unlearn(run, request, CostCounter())
    plan = LocalPlan("forgotten", request, local_epochs=3)
    step, _ = client_update(task, task.build_model(), run.final_state, clients[0], CONFIG, CONFIG.rounds, plan,
                            CostCounter())
    for key, value in run.final_state.items():
        torch.testing.assert_close(got[key], value - 2.0 * step[key])


def test_only_the_clients_holding_forgotten_data_work_once():
    _, _, run = tiny()
    counter = CostCounter()
    get_method("task-vector-negation").unlearn(run, ForgetRequest.forget_clients(0), counter)
    assert counter.client_rounds == 1
    assert counter.client_steps == 5 * 2  # 5 epochs of 6 records in batches of 4


@pytest.mark.parametrize("field, value", [("alpha", 0.0), ("epochs", -1.0), ("lr", 0.0)])
def test_bad_settings_are_named(field, value):
    with pytest.raises(ValueError, match=f"{field} must be positive, got {value}"):
        TaskVectorConfig(**{field: value})


def test_it_serves_language_scenarios_only():
    with pytest.raises(ValueError, match="task-vector-negation"):
        check_scenario(get_method("task-vector-negation"), build_scenario("digits-backdoor", 0))


def alpha_sweep():
    """The family page's sweep: profiles-client at the smoke cut, seed 0."""
    return compare("profiles-client", [("task-vector-negation", {"alpha": a}) for a in ALPHA_GRID] + ["do-nothing"],
                   seeds=(0,), progress=False, **LM_SMOKE)


@pytest.mark.slow
def test_forgetting_grows_with_alpha_and_do_nothing_does_not_forget():
    cmp = alpha_sweep()
    labels = [get_method("task-vector-negation", alpha=a).label for a in ALPHA_GRID]
    forget = [cmp.value(label, "forget_logprob") for label in labels]
    original = cmp.value("original", "forget_logprob")
    assert forget[0] < original
    assert all(later < earlier for earlier, later in zip(forget, forget[1:], strict=False))
    assert cmp.value("do-nothing", "forget_logprob") == pytest.approx(original)  # the control does not forget
