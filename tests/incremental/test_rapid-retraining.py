"""Rapid retraining: the Fisher-Newton step by hand, bad inputs, and the reproduced claim.

Unit tests check the optimiser, its registration as the local optimiser ``diag-fisher``, the
clients' loss report and the helpers against hand-computed numbers, and run the method on a tiny
federation (3 small clients, 3 rounds) for every request granularity and for bad inputs. The claim
tests (``slow``) run the comparison engine on ``digits-backdoor`` (seed 0; federation and oracles
from the shared cache) and compare rapid retraining at its defaults with the retrain oracle of the
same seed; each also applies its check to a named control and asserts that it fails there.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from fedunlearn import catalog
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.costs import CostCounter, state_bytes
from fedunlearn.federated.history import HistoryError
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.task import ClassificationTask
from fedunlearn.federated.training import OPTIMIZERS, FederationConfig, LocalPlan, client_update
from fedunlearn.incremental.rapid_retraining import (
    ENTRY,
    LARGE_DAMPING,
    MAX_RHO_STEPS,
    TUNED_LR,
    TUNING_GRIDS,
    DiagonalFisherNewton,
    RapidRetraining,
    RapidRetrainingConfig,
    backdoor_suppressed,
    best_lr,
    fisher_plan,
    rapid_retrain,
    rounds_to_band,
    rounds_to_stop,
    tuning_score,
)
from fedunlearn.unlearning.base import history_fingerprint, run_method, train_federation
from fedunlearn.unlearning.compare import BACKDOOR_MARGIN, Comparison, compare, tolerance
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.scenarios import build_scenario

RAPID = "rapid-retraining"
SGD_SAME_STOP = "rapid-retraining[optimizer=original]"
FISHER_NAME, LARGE_NAME, SGD_NAME, ADAM_NAME = TUNING_GRIDS
TUNED = {name: {**TUNING_GRIDS[name][0], "lr": TUNED_LR[name]} for name in TUNING_GRIDS}

# ---------------------------------------------------------------- the optimiser, by hand


def _two_parameters(grads: list[list[float]], **kwargs) -> torch.Tensor:
    """Run DiagonalFisherNewton on w = [1, -2] with the given gradients; return w."""
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = DiagonalFisherNewton([w], **kwargs)
    for g in grads:
        w.grad = torch.tensor(g)
        optimizer.step()
    return w.detach()


def test_first_step_is_gradient_over_damped_squared_gradient() -> None:
    # Step 1 after bias correction: m = g, f = g^2, whatever the betas.
    # w1 = 1 - 0.1 * 0.5 / (0.25 + 0.01) = 1 - 0.1923077
    # w2 = -2 + 0.1 * 0.1 / (0.01 + 0.01) = -1.5
    w = _two_parameters([[0.5, -0.1]], lr=0.1, damping=0.01, betas=(0.9, 0.999))
    assert torch.allclose(w, torch.tensor([1 - 0.1 / 0.52, -1.5]), atol=1e-6)


def test_second_step_uses_bias_corrected_momenta() -> None:
    # betas (0.5, 0.5); g1 = [0.5, -0.1], g2 = [0.5, 0.3].
    # m2 = 0.25 * g1 + 0.5 * g2 = [0.375, 0.125]; m_hat = m2 / 0.75 = [0.5, 1/6]
    # f2 = 0.25 * g1^2 + 0.5 * g2^2 = [0.1875, 0.0475]; f_hat = f2 / 0.75 = [0.25, 0.0633333]
    # step 2 = 0.1 * [0.5 / 0.26, (1/6) / 0.0733333] = [0.1923077, 0.2272727]
    w = _two_parameters([[0.5, -0.1], [0.5, 0.3]], lr=0.1, damping=0.01, betas=(0.5, 0.5))
    after_first = torch.tensor([1 - 0.1 / 0.52, -1.5])
    expected = after_first - torch.tensor([0.1 * 0.5 / 0.26, 0.1 * (1 / 6) / (0.19 / 3 + 0.01)])
    assert torch.allclose(w, expected, atol=1e-6)


def test_power_one_half_is_adam_like_sign_step() -> None:
    # p = 1/2, step 1: w - lr * g / (|g| + damping) -> almost lr * sign(g) for small damping
    w = _two_parameters([[0.5, -0.1]], lr=0.1, damping=1e-8, power=0.5)
    assert torch.allclose(w, torch.tensor([0.9, -1.9]), atol=1e-6)


def test_large_damping_is_sgd_with_step_lr_over_damping() -> None:
    w = _two_parameters([[0.5, -0.1]], lr=0.1, damping=100.0, betas=(0.0, 0.5))
    # (g^2 + 100)^-1 ~ 1/100: w ~ [1 - 0.001 * 0.5, -2 + 0.001 * 0.1]
    assert torch.allclose(w, torch.tensor([0.9995, -1.9999]), atol=1e-6)


def test_optimizer_rejects_bad_hyperparameters() -> None:
    w = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError):
        DiagonalFisherNewton(w, damping=0.0)
    with pytest.raises(ValueError):
        DiagonalFisherNewton(w, betas=(1.0, 0.5))
    with pytest.raises(ValueError, match="unknown optimizer"):
        rapid_retrain(None, ForgetRequest.forget_clients(0), {}, FederationConfig(),
                      RapidRetrainingConfig(optimizer="adamw"), CostCounter())


# ---------------------------------------------------------------- the optimiser as the clients build it


def test_diag_fisher_is_registered_with_its_options() -> None:
    w = [nn.Parameter(torch.zeros(2))]
    optimizer = OPTIMIZERS.get("diag-fisher")(w, lr=0.1, momentum=0.5, beta1=0.5, beta2=0.25, damping=0.01,
                                              power=0.5)
    assert isinstance(optimizer, DiagonalFisherNewton)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["damping"], group["power"]) == (0.1, (0.5, 0.25), 0.01, 0.5)


def test_fisher_plan_carries_the_paper_settings_and_travels_as_plain_config() -> None:
    request = ForgetRequest.forget_clients(0)
    plan = fisher_plan(request, RapidRetrainingConfig())
    assert (plan.data, plan.optimizer, plan.lr) == ("retained", "diag-fisher", 1e-3)
    assert dict(plan.optimizer_options) == {"beta1": 0.9, "beta2": 0.999, "damping": 1e-3, "power": 1.0}
    assert LocalPlan.from_config(plan.to_config()) == plan  # what a Flower client rebuilds
    original = fisher_plan(request, RapidRetrainingConfig(optimizer="original"))
    assert (original.optimizer, original.lr, original.optimizer_options) == (None, None, ())


def _linear_task() -> tuple[ClassificationTask, nn.Module]:
    task = ClassificationTask(lambda: nn.Linear(1, 2, bias=False))
    return task, task.build_model()


def test_one_client_step_with_the_fisher_plan_matches_hand_computation() -> None:
    # Logits z = W x with W = [1, 0]^T, one example x = 1, y = 0. Cross-entropy gradient:
    # dz = softmax(z) - e_0 = (-s, s) with s = 1 / (1 + e); dW = dz x. First Fisher step
    # (bias-corrected m = g, f = g^2): update = -eta g / (g^2 + lambda) at the paper's eta and our lambda.
    task, model = _linear_task()
    data = ClientData(0, {"x": torch.ones(1, 1), "y": torch.tensor([0])}, torch.tensor([0]))
    plan = fisher_plan(ForgetRequest.forget_clients(1), RapidRetrainingConfig())  # client 0 keeps its example
    counter = CostCounter()
    update, n = client_update(task, model, {"weight": torch.tensor([[1.0], [0.0]])}, data,
                              FederationConfig(batch_size=1, lr=0.5), 0, plan, counter)
    s = 1 / (1 + math.e)
    step = 1e-3 * s / (s * s + 1e-3)
    assert torch.allclose(update["weight"], torch.tensor([[step], [-step]]), atol=1e-7)
    assert n == 1 and counter.client_steps == 1


# ---------------------------------------------------------------- the clients' loss report, by hand


def test_clients_report_a_sample_weighted_mean_loss_and_the_state_is_counted() -> None:
    task, model = _linear_task()
    state = {"weight": torch.tensor([[1.0], [0.0]])}  # logits of x = 1: [1, 0]
    one = ClientData(0, {"x": torch.ones(1, 1), "y": torch.tensor([0])}, torch.tensor([0]))
    three = ClientData(1, {"x": torch.ones(3, 1), "y": torch.ones(3, dtype=torch.long)},
                       torch.tensor([1, 2, 3]))
    pool = InProcessPool(task, {0: one, 1: three}, model)
    # per example: y = 0 -> log(1 + e^-1); y = 1 -> log(1 + e^1); mean over 4 examples
    expected = (math.log(1 + math.exp(-1)) + 3 * math.log(1 + math.exp(1))) / 4
    counter = CostCounter()
    assert pool.evaluate(state, [0, 1], LocalPlan(), counter) == pytest.approx(expected, rel=1e-6)
    assert counter.bytes_down == 2 * state_bytes(state) and counter.client_steps == 0
    # retained data only: forgetting client 1 leaves client 0's single example
    retained = LocalPlan("retained", ForgetRequest.forget_clients(1))
    assert pool.evaluate(state, [0], retained, CostCounter()) == pytest.approx(math.log(1 + math.exp(-1)))


def test_rounds_to_band_is_first_round_within_tolerance() -> None:
    reference = {"test_acc": 0.90, "asr": 0.0}
    curve = [{"test_acc": 0.50, "asr": 0.0}, {"test_acc": 0.89, "asr": 0.10},
             {"test_acc": 0.93, "asr": 0.01}, {"test_acc": 0.91, "asr": 0.0}]
    band = {m: tolerance(m) for m in ("test_acc", "asr")}  # 2 points each
    # round 2: ASR 10 points above; round 3: accuracy 3 points above (two-sided); round 4 fits
    assert rounds_to_band(curve, reference, band) == 4
    assert rounds_to_band(curve[:3], reference, band) is None


def test_sgd_and_adam_plans_name_the_optimiser_and_its_lr() -> None:
    request = ForgetRequest.forget_clients(0)
    for name in ("sgd", "adam"):
        plan = fisher_plan(request, RapidRetrainingConfig(optimizer=name, lr=0.3))
        assert (plan.data, plan.optimizer, plan.lr, plan.optimizer_options) == ("retained", name, 0.3, ())
    # the large-damping ablation is the Fisher plan with lambda = LARGE_DAMPING
    large = fisher_plan(request, RapidRetrainingConfig(damping=LARGE_DAMPING, lr=LARGE_DAMPING))
    assert dict(large.optimizer_options)["damping"] == LARGE_DAMPING and large.lr == LARGE_DAMPING


def test_rounds_to_stop_and_the_tuning_score_by_hand() -> None:
    assert rounds_to_stop([2.0, 0.9, 0.5, 0.4], 0.5) == 3
    assert rounds_to_stop([2.0, 0.9], 0.5) is None
    assert rounds_to_stop([0.6], 0.5, slack=1.2) == 1  # 0.6 <= 1.2 * 0.5
    # two tuning federations: fires at round 2 (last loss 0.4) and never (charged cap 21, last loss 0.7)
    assert tuning_score([([0.9, 0.4], 0.5), ([1.0, 0.7], 0.5)], cap=21) == (23, pytest.approx(1.1))
    # fewest rounds first, then the lower loss, then the smaller rate
    assert best_lr({0.1: (20, 0.3), 0.3: (10, 0.2), 1.0: (10, 0.1)}) == 1.0
    assert best_lr({0.1: (10, 0.1), 0.3: (10, 0.1)}) == 0.1


def _fake_comparison(margins: list[tuple[float, float]]) -> Comparison:
    """Per seed (method's margin, θ_r's margin); both oracles agree, so the band is the trigger
    margin's tolerance, 0.5."""
    rows = [{"seed": seed, "oracle": {"trigger_margin": r}, "oracle_second_seed": {"trigger_margin": r},
             "original": {"trigger_margin": 5.0},
             "methods": {"m": {"metrics": {"trigger_margin": m}, "gaps": {"trigger_margin": m - r},
                               **{f"rho_{k}": 0.0 for k in ("steps", "comm", "time")}}}}
            for seed, (m, r) in enumerate(margins)]
    comparison = Comparison("digits-backdoor", list(range(len(rows))), False, ["m"], rows)
    assert comparison.aggregate["band"]["trigger_margin"] == 0.5
    return comparison


def test_backdoor_suppressed_is_one_sided_and_holds_at_every_seed() -> None:
    assert backdoor_suppressed(_fake_comparison([(-11.0, -9.0), (-9.4, -9.0)]), "m")  # -9.4 <= -8.5
    assert not backdoor_suppressed(_fake_comparison([(-11.0, -9.0), (-8.0, -9.0)]), "m")  # -8.0 > -8.5
    # a backdoor that merely lost the argmax (margin just below 0): ASR 0, but not suppressed
    assert not backdoor_suppressed(_fake_comparison([(-0.5, -9.0)]), "m")


def test_entry_registers_the_method() -> None:
    assert catalog.get("rapid-retraining").methods == (RAPID,)
    assert ENTRY.citation_keys == ("liu2022right",)
    assert isinstance(get_method(RAPID), RapidRetraining)
    assert get_method(RAPID, optimizer="original").label == SGD_SAME_STOP
    assert RapidRetraining.granularities == {"client", "class", "records"}


# ---------------------------------------------------------------- tiny federation, bad inputs


@pytest.fixture(scope="module")
def tiny():
    """Clients 0-2 of digits-backdoor, 24 examples each, 3 rounds, 2 clients per round."""
    scenario = build_scenario("digits-backdoor", seed=0)
    clients = {c: d.select(torch.arange(d.num_samples) < 24)
               for c, d in scenario.clients.items() if c < 3}
    config = FederationConfig(rounds=3, clients_per_round=2, batch_size=8, lr=0.1, seed=0)
    pool = InProcessPool(scenario.task, clients)
    return scenario.task, pool, train_federation(scenario.task, pool, config)


def test_every_granularity_runs_and_counts_client_steps(tiny) -> None:
    _, pool, run = tiny
    record_ids = pool.clients[1].record_ids[:5].tolist()
    for request in (ForgetRequest.forget_clients(0), ForgetRequest.forget_class(3),
                    ForgetRequest.forget_records(record_ids)):
        before = history_fingerprint(run.history)
        result = run_method(RapidRetraining(), run, request)
        assert history_fingerprint(run.history) == before
        assert 0 < result.cost.client_steps <= 3 * 2 * 3  # <= T rounds x 2 clients x 3 steps
        assert set(result.state) == set(run.final_state)


def test_history_with_missing_rounds_is_refused(tiny) -> None:
    _, _, run = tiny
    broken = copy.copy(run.history)
    broken.rounds = [r for r in run.history.rounds if r.round_index != 1]
    with pytest.raises(HistoryError, match="missing rounds"):
        run_method(RapidRetraining(), dataclasses.replace(run, history=broken),
                   ForgetRequest.forget_clients(0))


def test_history_recorded_with_another_interval_is_accepted(tiny) -> None:
    # Rapid retraining only reads w_0 from the history: any recording interval will do.
    task, pool, run = tiny
    sparse = train_federation(task, pool, dataclasses.replace(run.config, record_every=2))
    result = run_method(RapidRetraining(), sparse, ForgetRequest.forget_clients(0))
    assert result.cost.client_steps > 0


def test_unknown_or_absent_client_is_refused(tiny) -> None:
    task, pool, tiny_run = tiny
    # One round with 2 of the 3 clients: one client never takes part.
    run = train_federation(task, pool, dataclasses.replace(tiny_run.config, rounds=1))
    absent = sorted(set(pool.client_ids()) - run.history.clients)
    assert len(absent) == 1
    with pytest.raises(ForgetRequestError, match="never took part"):
        run_method(RapidRetraining(), run, ForgetRequest.forget_clients(absent[0]))
    with pytest.raises(ForgetRequestError, match="unknown client"):
        run_method(RapidRetraining(), run, ForgetRequest.forget_clients(42))


def test_stopping_rule_stops_at_target_and_zero_slack_runs_all_rounds(tiny) -> None:
    _, pool, run = tiny
    request = ForgetRequest.forget_clients(0)  # clients 1 and 2 remain: both train every round
    config = RapidRetrainingConfig()
    _, losses = rapid_retrain(pool, request, run.init_state, run.config,
                              dataclasses.replace(config, loss_slack=0), CostCounter())
    assert len(losses) == run.config.rounds
    # With theta_o's loss replaced by the loss after round 2, the run stops at the first round
    # whose loss is at most that (round 2, or round 1 if the loss went up in between).
    target = losses[1]
    expected = next(i for i, loss in enumerate(losses) if loss <= target) + 1
    counter = CostCounter()
    _, stopped = rapid_retrain(pool, request, run.init_state, run.config, config, counter,
                               target_loss=target)
    assert stopped == losses[:expected]
    assert counter.client_rounds == expected * 2  # 2 clients per round
    # Bytes per round: the state down to 2 trainers and to 2 loss reporters; 2 updates up, and 2
    # loss sums (one float64 each).
    model = state_bytes(run.init_state)
    assert counter.bytes_down == expected * 4 * model and counter.bytes_up == expected * 2 * (model + 8)


def test_the_method_asks_the_clients_for_the_target_loss_too(tiny) -> None:
    # theta_o's retained loss (one request to the 2 holders), then T rounds of training + report.
    _, _, run = tiny
    result = run_method(RapidRetraining(RapidRetrainingConfig(loss_slack=0)), run, ForgetRequest.forget_clients(0))
    model = state_bytes(run.init_state)
    rounds = run.config.rounds
    assert result.cost.client_rounds == rounds * 2
    assert result.cost.bytes_down == (2 + rounds * 4) * model
    assert result.cost.bytes_up == rounds * 2 * model + (1 + rounds) * 2 * 8  # updates, then float64 loss sums


# ---------------------------------------------------------------- the reproduced claim


@pytest.fixture(scope="module")
def backdoor() -> Comparison:
    """digits-backdoor, seed 0 (cached θ_o, θ_r): rapid retraining at the paper's η, the controls,
    and every local optimiser at its tuned learning rate with the same stopping rule."""
    return compare("digits-backdoor", ["do-nothing", "continue-fedavg", RAPID, (RAPID, {"optimizer": "original"}),
                                       *((RAPID, o) for o in TUNED.values())], seeds=(0,), progress=False)


def label(overrides: dict) -> str:
    return get_method(RAPID, **overrides).label


def retrain_equivalent_in_few_steps(comparison: Comparison, label: str) -> bool:
    """Test accuracy and ASR in the retrain band, at ρ_steps <= MAX_RHO_STEPS."""
    return (comparison.equivalent(label, "test_acc") and comparison.equivalent(label, "asr")
            and comparison.rho(label, "steps") <= MAX_RHO_STEPS)


def fewer_steps(comparison: Comparison, label: str, baseline: str) -> bool:
    """``label`` takes fewer client steps than ``baseline`` at every seed."""
    return all(row["methods"][label]["cost"]["client_steps"] < row["methods"][baseline]["cost"]["client_steps"]
               for row in comparison.per_seed)


@pytest.mark.slow
def test_reproduced_claim_against_the_retrain_oracle(backdoor: Comparison) -> None:
    """Rapid retraining at its defaults is retrain-equivalent on test accuracy and backdoor ASR
    (the retrain band, 2 points at seed 0) using at most MAX_RHO_STEPS of the oracle's client steps
    (measured at seed 0: ρ_steps 0.40, the rule stops after 8 of 20 rounds; test accuracy +0.4
    points; ASR 0 like θ_r; also at the unused seeds 5-7: ρ_steps 0.40, gaps -0.4 to -0.9 points).
    θ_o's ASR is more than BACKDOOR_MARGIN above θ_r's, so the ASR comparison is informative.
    Fails under do-nothing (ASR 0.59) and under the untuned SGD with the same stop (ρ_steps 1.0),
    as asserted. (Tuned SGD with the same stop, ρ_steps 0.55 at seed 0, also fails the ρ
    criterion here, but meets it at seeds 1, 2, 5, 6: the criterion does not single out the
    curvature; the next tests do that.)"""
    assert backdoor.informative("asr")
    assert backdoor.value("original", "asr") > backdoor.value("retrain", "asr") + BACKDOOR_MARGIN
    assert retrain_equivalent_in_few_steps(backdoor, RAPID)
    for control in ("do-nothing", SGD_SAME_STOP):
        assert not retrain_equivalent_in_few_steps(backdoor, control)


@pytest.mark.slow
def test_the_backdoor_is_suppressed_not_just_below_the_argmax(backdoor: Comparison) -> None:
    """Discriminating forgetting check: the trigger margin (target logit minus best other logit on
    triggered inputs) is at most θ_r's plus its band (measured at seed 0: -11.4 against θ_r's -9.5;
    at the unused seeds 5-7: -9.9 to -10.5 against -9.1 to -9.3). Fails under do-nothing (margin
    +0.6) and under continue-fedavg (-1.2: five clean rounds lower the ASR to about 0.4 but leave
    the target logit close to the others), as asserted. The KS forget quality on the forgotten
    client's clean images cannot serve here: θ_o scores 0.76 (inside its band: not informative),
    while exact retrainings along other trajectories score below 0.01, as asserted."""
    assert backdoor_suppressed(backdoor, RAPID)
    for control in ("do-nothing", "continue-fedavg"):
        assert not backdoor_suppressed(backdoor, control)
    assert not backdoor.informative("forget_quality")
    assert not backdoor.equivalent(label(TUNED[SGD_NAME]), "forget_quality")  # an exact retraining fails it


@pytest.mark.slow
def test_the_curvature_buys_steps_over_tuned_sgd(backdoor: Comparison) -> None:
    """With the same tuning budget (five learning rates, picked on seeds 3-4 by the stopping rule's
    own target) and the same stopping rule, the Fisher step takes fewer client steps than SGD
    (measured at seed 0: 7 against 11 rounds; at seeds 1, 2, 5, 6, 7 too). Fails under the
    ablation that switches the curvature off, the same optimiser with λ = LARGE_DAMPING (16
    rounds against SGD's 11), as asserted. Against tuned Adam the margin is one round (7 against
    8, seed 0), reported by the notebook and not asserted as a claim."""
    sgd = label(TUNED[SGD_NAME])
    assert fewer_steps(backdoor, label(TUNED[FISHER_NAME]), sgd)
    assert not fewer_steps(backdoor, label(TUNED[LARGE_NAME]), sgd)
