"""Negative Preference Optimization: the loss and its gradient by hand (summed answer log-probs, the
weight that fades, β → 0 gives gradient ascent), bad inputs on a tiny federation, and the
reproduced claim on ``profiles-client`` against the retrain oracle of the same seed.

The claim tests (``slow``) run the comparison engine at the shared smoke cut (``LM_SMOKE``, seeds
``CLAIM_SEEDS``; federations and oracles from the shared cache) and assert, per seed: gradient
ascent with NPO's budget (``npo[objective=ascent]``) leaves the retained people's answer
probability below ``COLLAPSE_FRACTION`` of θ_o's while NPO does not, and NPO's model utility is
higher; and that the budget is the one ``collapse_budget`` picks on validation people. The issue's
stricter rule (NPO at least ``KEEP_FRACTION`` of θ_o's and a higher forget quality, 3 of 3 seeds)
does not reproduce at this scale; the notebook reports it. Each claim test also applies its check
to a named control and asserts that it fails there.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

import pytest
import torch
from torch import nn

from fedunlearn import catalog
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.objectives import GradientAscent, NegativePreference
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.task import ClassificationTask
from fedunlearn.federated.training import FederationConfig, local_train
from fedunlearn.models.decoding import teacher_forced
from fedunlearn.perturbation.npo import (
    CLAIM_SEEDS,
    COLLAPSE_FRACTION,
    ENTRY,
    KEEP_FRACTION,
    NegativePreferenceOptimization,
    NPOConfig,
    collapse_budget,
    collapse_rows,
    forgetting_plan,
    mean_equivalent_beta,
    npo_weight,
)
from fedunlearn.unlearning.base import history_fingerprint, run_method, train_federation
from fedunlearn.unlearning.compare import Comparison, compare
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario


class TokenTask:
    """A fake language task: each example's loss is the per-token mean ``w * a`` (one weight ``w``),
    with ``labels`` marking its answer tokens as a causal LM's do (position 0 is never a target)."""

    def per_example_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.w * batch["a"]

    def sequence_nll(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-token mean times the number of answer tokens, as the LoRA task's sum."""
        return self.per_example_loss(model, batch) * (batch["labels"][:, 1:] != -100).sum(-1)


def token_batch(a: list[float], tokens: list[int], width: int = 6) -> dict[str, torch.Tensor]:
    labels = torch.full((len(a), width), -100)
    for row, t in enumerate(tokens):
        labels[row, 1 : 1 + t] = 7
    return {"a": torch.tensor(a), "labels": labels}


def scalar_model(w: float) -> nn.Module:
    model = nn.Module()
    model.w = nn.Parameter(torch.tensor(w))
    return model


# ---------------------------------------------------------------- the loss, by hand


def test_sequence_nll_is_the_per_example_loss_of_a_classifier() -> None:
    task = ClassificationTask(lambda: nn.Linear(2, 2))
    model = task.build_model()
    batch = {"x": torch.randn(4, 2), "y": torch.tensor([0, 1, 1, 0])}
    assert torch.allclose(task.sequence_nll(model, batch), task.per_example_loss(model, batch))


def test_sequence_nll_is_the_negative_summed_log_probability_on_the_language_model() -> None:
    scenario = build_scenario("profiles-client", seed=0)
    model = scenario.task.build_model()
    tensors = {k: v[:3] for k, v in scenario.clients[0].tensors.items()}
    logprobs, _, mask = teacher_forced(model, tensors)
    summed = scenario.task.sequence_nll(model, tensors)
    assert torch.allclose(summed, -(logprobs * mask).sum(-1), atol=1e-4)
    assert bool((mask.sum(-1) > 1).all())  # several answer tokens: sum and mean differ


def test_npo_loss_matches_hand_computation() -> None:
    # w = 1, a = (1, 2), T = (2, 1): summed NLL (2, 2); reference summed NLL (1, 4)
    # log ratio = ref - nll = (-1, 2); beta = 0.5: loss = -(2/0.5) * mean(log sigma(0.5), log sigma(-1))
    batch = {**token_batch([1.0, 2.0], [2, 1]), "reference_loss": torch.tensor([1.0, 4.0])}
    loss = NegativePreference(beta=0.5).loss(TokenTask(), scalar_model(1.0), batch)
    log_sigmoid = lambda z: -math.log1p(math.exp(-z))  # noqa: E731
    assert loss.item() == pytest.approx(-4.0 * (log_sigmoid(0.5) + log_sigmoid(-1.0)) / 2)
    # equivalent form (2/beta) log(1 + (pi/pi_ref)^beta), with pi/pi_ref = exp(log ratio)
    assert loss.item() == pytest.approx(4.0 * (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.0))) / 2)


def test_npo_weight_fades_once_forgotten() -> None:
    weights = npo_weight(torch.tensor([0.0, -10.0, -100.0, 5.0]), beta=0.1)
    assert weights[0].item() == pytest.approx(1.0)
    assert weights[1].item() == pytest.approx(2 / (1 + math.e)) and weights[2].item() < 1e-4
    assert 1 < weights[3].item() < 2


def test_summed_loss_is_the_mean_loss_at_beta_times_tokens() -> None:
    # L_sum(beta) = T * L_mean(beta * T), for one example with T answer tokens (the package's `npo`
    # objective takes per-token mean log-probabilities)
    beta, tokens = 0.1, 4
    batch = token_batch([0.75], [tokens])
    model = scalar_model(2.0)
    summed = NegativePreference(beta).loss(TokenTask(), model, {**batch, "reference_loss": torch.tensor([2.0])})

    class MeanTask(TokenTask):  # preference on per-token mean log-probabilities instead
        def sequence_nll(self, model, batch):
            return self.per_example_loss(model, batch)

    mean = NegativePreference(mean_equivalent_beta(beta, tokens)).loss(
        MeanTask(), model, {**batch, "reference_loss": torch.tensor([2.0 / tokens])})
    assert summed.item() == pytest.approx(tokens * mean.item())


def _grad(objective, task, model, batch) -> torch.Tensor:
    model.zero_grad()
    objective.loss(task, model, batch).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_npo_gradient_tends_to_ascent_as_beta_vanishes() -> None:
    # A classifier away from its reference (log ratios far from 0): at beta -> 0 the NPO gradient is
    # ascent's (-mean loss); at beta = 1 it is not (examples already pushed down weigh less).
    torch.manual_seed(0)
    task = ClassificationTask(lambda: nn.Linear(3, 4))
    model = task.build_model()
    batch = {"x": torch.randn(8, 3), "y": torch.randint(0, 4, (8,))}
    with torch.no_grad():
        reference = task.per_example_loss(model, batch) - torch.linspace(-3, 3, 8)
    ascent = _grad(GradientAscent(), task, model, batch)
    near = _grad(NegativePreference(1e-6), task, model, {**batch, "reference_loss": reference})
    far = _grad(NegativePreference(1.0), task, model, {**batch, "reference_loss": reference})
    assert torch.allclose(near, ascent, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(far, ascent, rtol=0.05)


def test_one_npo_update_tends_to_the_ascent_update() -> None:
    # The same through the training loop: one SGD step of NPO (beta -> 0) from a state away from the
    # reference lands where one ascent step does.
    torch.manual_seed(1)
    task = ClassificationTask(lambda: nn.Linear(3, 2))
    model = task.build_model()
    reference = task.get_state(model)
    start = {k: v + 0.5 * torch.randn_like(v) for k, v in reference.items()}
    data = {"x": torch.randn(6, 3), "y": torch.randint(0, 2, (6,))}
    config = FederationConfig(batch_size=6, lr=0.5)

    def step(objective, states):
        return local_train(task, model, start, data, config, 1, 0, CostCounter(), objective=objective, states=states)

    ascent = step(GradientAscent(), {})
    near = step(NegativePreference(1e-6), {"reference": reference})
    far = step(NegativePreference(2.0), {"reference": reference})
    assert all(torch.allclose(near[k], ascent[k], atol=1e-6) for k in ascent)
    assert not all(torch.allclose(far[k], ascent[k], atol=1e-3) for k in ascent)


# ---------------------------------------------------------------- configuration, bad input


@pytest.mark.parametrize(("field", "value"), [
    ("beta", 0.0), ("beta", -0.1), ("beta", float("nan")), ("lr", 0.0), ("lr", -1e-3), ("epochs", 0),
    ("epochs", 2.5), ("repair_rounds", -1), ("objective", "simnpo"), ("optimizer", "lion"),
])
def test_invalid_settings_are_refused_naming_field_and_value(field: str, value) -> None:
    with pytest.raises(ValueError, match=rf"npo: invalid {field}={value!r}"):
        NPOConfig(**{field: value})


def test_objective_refuses_non_positive_beta() -> None:
    with pytest.raises(ValueError, match="beta=0.0"):
        NegativePreference(0.0)


def test_ablation_is_one_override_on_the_same_path() -> None:
    ascent = get_method("npo", objective="ascent")
    assert isinstance(ascent, NegativePreferenceOptimization) and ascent.label == "npo[objective=ascent]"
    request = ForgetRequest.forget_clients(0)
    reference = {"w": torch.zeros(1)}
    npo_plan = forgetting_plan(NPOConfig(), request, reference)
    ga_plan = forgetting_plan(ascent.config, request, reference)
    assert npo_plan.objective == NegativePreference(0.1) and npo_plan.states["reference"] is reference
    assert isinstance(ga_plan.objective, GradientAscent) and not ga_plan.states
    same = ("data", "request", "local_epochs", "optimizer", "lr")
    assert all(getattr(npo_plan, f) == getattr(ga_plan, f) for f in same)


def test_entry_is_declared() -> None:
    assert ENTRY.slug == "npo" and ENTRY.family == "perturbation"
    assert catalog.get("npo").methods == ("npo",)
    assert get_method("npo").granularities == {"client", "records"}


@pytest.fixture(scope="module")
def tiny():
    """Clients 0-2 of digits-backdoor, 24 examples each, 3 rounds."""
    scenario = build_scenario("digits-backdoor", seed=0)
    clients = {c: d.select(torch.arange(d.num_samples) < 24) for c, d in scenario.clients.items() if c < 3}
    pool = InProcessPool(scenario.task, clients)
    return train_federation(scenario.task, pool, FederationConfig(rounds=3, batch_size=8, lr=0.1, seed=0))


def test_npo_counts_its_work_and_leaves_the_history_alone(tiny) -> None:
    before = history_fingerprint(tiny.history)
    result = run_method(get_method("npo", epochs=2, repair_rounds=1), tiny, ForgetRequest.forget_clients(0))
    # client 0: 2 epochs x ceil(24 / 8); repair: clients 1 and 2, 1 local epoch x 3 mini-batches each
    assert result.cost.client_steps == 2 * 3 + 2 * 3
    assert result.cost.client_rounds == 1 + 2
    assert history_fingerprint(tiny.history) == before
    records = ForgetRequest.forget_records(tiny.pool.clients[1].record_ids[:4].tolist())
    assert run_method(get_method("npo", epochs=1, repair_rounds=0), tiny, records).cost.client_steps == 1


def test_nothing_to_forget_is_refused(tiny) -> None:
    held = {int(r) for data in tiny.pool.clients.values() for r in data.record_ids}
    nowhere = ForgetRequest.forget_records([max(held) + 1, max(held) + 2])
    with pytest.raises(ForgetRequestError):  # the harness checks the request first
        run_method(get_method("npo"), tiny, nowhere)
    with pytest.raises(ForgetRequestError, match="2 records; nothing to forget"):  # the method itself, too
        get_method("npo").unlearn(tiny, nowhere, CostCounter())
    with pytest.raises(ForgetRequestError, match="unknown client"):
        run_method(get_method("npo"), tiny, ForgetRequest.forget_clients(42))
    with pytest.raises(ForgetRequestError, match="serves"):
        run_method(get_method("npo"), tiny, ForgetRequest.forget_class(3))


# ---------------------------------------------------------------- the reproduced claim


GA = "npo[objective=ascent]"
#: The ablation that removes NPO's fading weight: β → 0 (the gradient tends to ascent's).
VANISHING_BETA = 1e-6


@pytest.fixture(scope="module")
def profiles() -> Comparison:
    """profiles-client at the smoke cut, seeds CLAIM_SEEDS: NPO, ascent with NPO's budget, NPO at β → 0."""
    return compare("profiles-client", ["npo", ("npo", {"objective": "ascent"}), ("npo", {"beta": VANISHING_BETA})],
                   seeds=CLAIM_SEEDS, progress=False, noise_floor=False, **LM_SMOKE)  # the claim reads no band


@pytest.mark.slow
def test_reproduced_claim_ascent_collapses_npo_does_not(profiles: Comparison) -> None:
    """At every seed of CLAIM_SEEDS, ascent with NPO's budget leaves the retained people's answer
    probability below COLLAPSE_FRACTION of θ_o's and NPO does not, and NPO's model utility is higher
    (measured: ascent 0.13 / 0.23 / 0.34 of θ_o's, NPO 0.84 / 0.95 / 0.69; model utility NPO
    0.30 / 0.28 / 0.27, ascent 0.00 / 0.11 / 0.19). The issue's stricter rule (NPO at least
    KEEP_FRACTION and a higher forget quality) holds at seed 1 only; the notebook reports it, this
    test does not assert it. Fails under two controls in NPO's place, as asserted: ascent itself (no
    seed survives) and the ablation β → 0, which removes NPO's fading weight (measured 0.12 / 0.35 /
    0.49 of θ_o's: it collapses too; asserted on the median, since seed 2 lies near the line)."""
    rows = collapse_rows(profiles, "npo", GA)
    assert all(r["collapses"] and r["survives"] for r in rows)
    for row in profiles.per_seed:
        assert row["methods"]["npo"]["metrics"]["model_utility"] > row["methods"][GA]["metrics"]["model_utility"]
    assert not any(r["survives"] for r in collapse_rows(profiles, GA, GA))
    vanishing = collapse_rows(profiles, f"npo[beta={VANISHING_BETA}]", GA)
    assert statistics.median(r["npo"] for r in vanishing) < COLLAPSE_FRACTION


@pytest.mark.slow
def test_budget_is_where_ascent_collapses_on_validation_people() -> None:
    """The default budget is the smallest in BUDGET_GRID at which ascent (repair included) brings the
    validation people's answer probability below COLLAPSE_FRACTION of θ_o's (seed 0, smoke cut; no
    θ_r involved). Fails for NPO in ascent's place: at that budget NPO does not collapse them."""
    from fedunlearn.unlearning import cache

    scenario = build_scenario("profiles-client", seed=0).restricted(**LM_SMOKE)
    run = cache.trained_federation(scenario)
    validation = scenario.task.encode(scenario.validation_records)

    def answer_probability(state) -> float:
        scenario.task.set_state(run.model, state)
        logprobs, _, mask = teacher_forced(run.model, validation)
        return float((logprobs.sum(-1) / mask.sum(-1)).exp().mean())

    def unlearned(method):  # the method cache: the notebook asks the same runs
        return cache.unlearned(scenario, run, method, scenario.request).state

    epochs, _ = collapse_budget(run, scenario.request, answer_probability, unlearn=unlearned)
    assert epochs == NPOConfig().epochs
    npo = unlearned(NegativePreferenceOptimization())
    assert answer_probability(npo) >= COLLAPSE_FRACTION * answer_probability(run.final_state)


def test_claim_constants_are_consistent() -> None:
    assert 0 < COLLAPSE_FRACTION < KEEP_FRACTION <= 1
    assert len(CLAIM_SEEDS) >= 3
    assert dataclasses.replace(NPOConfig(), objective="ascent").beta == NPOConfig().beta
