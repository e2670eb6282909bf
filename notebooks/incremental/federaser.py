# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # FedEraser: calibrated replay of stored client updates
#
# Liu et al. (IWQoS 2021) keep every client's update every $\Delta t$ rounds. To forget a
# client they rebuild the global model over the kept rounds only: the remaining clients train
# briefly ($r$ times a round's local training) from the model being rebuilt, and each stored
# update is replayed with its own length but the direction of that fresh *calibration* update.
# This notebook measures that on a backdoor-removal task against retraining from scratch, with
# the paper's ablation (*FedAccum*: replay the stored updates uncalibrated), in two regimes: our
# smoke regime and one close to the paper's. Then it runs the same method on a federated LoRA
# language model, a setting the paper did not try.
#
# Smoke size by default (seed 0 of the smoke regime, seeds 0-2 of the paper-like one, whose
# verdicts vary between seeds: a few minutes on two CPU cores with a cold cache, about two with a
# warm one); `FULL=1` runs three seeds of both, twice the rounds, and the language-model scenario
# at its full size. Every number the entry page shows is saved below with `Results` and comes from
# this run.

# %% [markdown]
# ## The claim (reported)

# %%
import os
import statistics

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from fedunlearn import catalog
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.loop import run_rounds
from fedunlearn.federated.training import LocalPlan
from fedunlearn.incremental.federaser import (
    CALIBRATION_MARGIN,
    TRIGGER_CLOSURE,
    FedEraser,
    FedEraserConfig,
    FedEraserNoCalibration,
    calibration_gain,
    expected_rho_steps,
    forgets_like_retraining,
    storage_report,
    trigger_margin_closed,
)
from fedunlearn.results import Results
from fedunlearn.unlearning import cache
from fedunlearn.unlearning.compare import BACKDOOR_MARGIN, LM_HEADLINE_METRICS, compare, tolerance
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

entry = catalog.get("federaser")
claims = entry.claims
results = Results("federaser")
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# ## Setup
#
# - **Data.** scikit-learn's bundled 8x8 digits **stand in for** the paper's MNIST (and its
#   Adult, Purchase and CIFAR-10 tasks): nothing is downloaded. Client 0 adds trigger-patched
#   copies of half its images labelled 0 (a backdoor); the request is to forget client 0.
#   Removing a backdoor is one of the paper's motivations (countering data poisoning); it gives
#   metrics that clearly separate $\theta_o$ from $\theta_r$: the attack success rate (ASR) and the
#   trigger margin (the target's logit over the best other class on triggered inputs).
# - **Two regimes**, both FedAvg over all clients, 20 rounds (40 with `FULL=1`), a 64-64 MLP:
#   - *smoke* (`digits-backdoor`): 10 IID clients, **one** local epoch of SGD (batch 16, lr 0.1,
#     momentum 0.5): our shared digits federation;
#   - *paper-like* (`digits-backdoor-paper`): the paper's **20** clients, and the released code's
#     **10 local epochs**, batch 64 and momentum 0.9 (lr stays 0.1: the code's 0.005 is for an
#     MNIST CNN and leaves this MLP near 0.8 test accuracy).
# - **FedEraser** at the paper's defaults: $\Delta t = 2$, calibration ratio $r = 0.5$, per-client
#   calibration tensor by tensor, one calibrated update per kept round; a client's calibration
#   takes $\lceil r\,s_k \rceil$ of the $s_k$ steps of its round (rounded up, as the released code
#   rounds the calibration epochs up). In the paper-like regime also $\Delta t = 1$ (the released
#   code's default) and the released code's *averaged* calibration (`calibrate="aggregate"`).
#   Chosen from the paper and its code, not by looking at the retrained model.
# - **Controls.** $\theta_o$ (do nothing), continue FedAvg 5 rounds without client 0 (a negative
#   control), the ablation `federaser-no-calibration` (FedAccum) at each $\Delta t$, a sanity
#   setting ($\Delta t = 1$, $r = 1$: calibrate every round with a full round of training, which
#   should land on $\theta_r$), the option `scale_by_interval=True`, and the referee $\theta_r$:
#   FedAvg from the same $w_0$ without client 0.

# %%
FULL = os.environ.get("FULL") == "1"
SEEDS = (0, 1, 2) if FULL else (0,)
PAPER_SEEDS = (0, 1, 2)  # the paper-like regime's verdicts vary between seeds: always three
torch.set_num_threads(1)  # a 64-unit MLP is faster on one thread than split over two

PAPER = FedEraserConfig()  # Δt = 2, r = 0.5
SANITY = ("federaser", {"interval": 1, "calibration_ratio": 1.0})
SCALED = ("federaser", {"scale_by_interval": True})  # the option of the page's deviations
EVERY_ROUND = ("federaser", {"interval": 1})  # the released code's Δt = 1
EVERY_ROUND_ACCUM = ("federaser-no-calibration", {"interval": 1})
CODE = ("federaser", {"interval": 1, "calibrate": "aggregate"})  # the released code's calibration
REGIMES = {"smoke": "digits-backdoor", "paper": "digits-backdoor-paper"}
METHODS = {
    "smoke": ("do-nothing", "continue-fedavg", "federaser", "federaser-no-calibration", SCALED, SANITY),
    "paper": ("do-nothing", "continue-fedavg", "federaser", "federaser-no-calibration", EVERY_ROUND,
              EVERY_ROUND_ACCUM, CODE),
}
METRICS = ("test_acc", "forget_acc", "forget_loss", "forget_quality", "asr", "trigger_margin", "mia_auc")

# %% [markdown]
# ## Run
#
# `compare` takes $\theta_o$ with its history and the oracle $\theta_r$ from the federation cache
# (trained once), retrains a second oracle with another seed to measure the noise floor, runs
# every method from $\theta_o$ and its history, and evaluates all models with the one
# evaluation function. One row per model; in parentheses the gap to $\theta_r$ of the same seed,
# ✓ when it lies within the retrain band; $\rho$ = cost of the method / cost of retraining
# (client SGD steps, bytes exchanged). `forget_quality` is the KS-test p-value between the losses
# of the forgotten client's clean examples under the model and under $\theta_r$ (1 for
# $\theta_r$). Wall-time ratios are left out: retraining takes seconds here, and timings that short
# are noise.

# %%
cmps = {regime: compare(REGIMES[regime], METHODS[regime], seeds=PAPER_SEEDS if regime == "paper" else SEEDS,
                        full=FULL, progress=False) for regime in REGIMES}
smoke, paper = cmps["smoke"], cmps["paper"]
scaled, sanity = smoke.methods[-2:]  # labels, e.g. federaser[interval=1,calibration_ratio=1.0]
every_round, every_round_accum, code = paper.methods[-3:]
display(Markdown(results.add("digits_table", smoke.table(METRICS, costs=("steps", "comm")))))
display(Markdown(results.add("paper_table", paper.table(METRICS, costs=("steps", "comm")))))
storage_models = statistics.median(row["methods"]["federaser"]["history_storage_models"] for row in smoke.per_seed)
print(f"history FedEraser reads: {results.value('digits_storage', storage_models, '{:.0f}')} models' worth of tensors")

# %% [markdown]
# ## Test accuracy along the way
#
# The rebuilt model after each kept round, the ablation's, and retraining's after each round
# (the same rounds $\theta_r$ ran, from the same $w_0$), at $\Delta t = 2$. Left: against the round
# of the original run that each update stands for. Right: against the number of global updates
# applied. FedEraser applies one update per kept round, so after the last kept round it has made
# $\lceil T/\Delta t \rceil$ updates: the right panel compares it with retraining for that many
# rounds.


# %%
def accuracy_curves(scenario_name: str, seed: int) -> tuple[dict[str, list[tuple[int, float]]], int]:
    """Test accuracy after every update of retraining, FedEraser and its ablation (one seed);
    and the number of kept rounds."""
    scenario = build_scenario(scenario_name, seed=seed, full=FULL)
    run = cache.trained_federation(scenario, PAPER.interval)  # the federation compare used

    def recorder(points: list):
        def record(round_index: int, state) -> None:
            points.append((round_index + 1, scenario.task.accuracy(run.model, state, scenario.test["x"],
                                                                   scenario.test["y"])))
        return record

    curves = {"retrain": [], "federaser": [], "federaser-no-calibration": []}
    run_rounds(run.pool, run.init_state, run.config, range(run.config.rounds),
               plan=LocalPlan("retained", scenario.request), on_round=recorder(curves["retrain"]))
    for name, method in (("federaser", FedEraser(PAPER)), ("federaser-no-calibration", FedEraserNoCalibration(PAPER))):
        method.reconstruct(run, scenario.request, CostCounter(), on_step=recorder(curves[name]))
    return curves, len(run.history.kept_rounds)


per_seed_curves = {(regime, seed): accuracy_curves(REGIMES[regime], seed) for regime in REGIMES for seed in SEEDS}
fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharey=True)
styles = {"retrain": "-", "federaser": "o-", "federaser-no-calibration": "s--"}
for row, regime in enumerate(REGIMES):
    curves, kept = per_seed_curves[(regime, SEEDS[0])]
    for name, points in curves.items():
        rounds, accs = zip(*points)
        axes[row, 0].plot(rounds, accs, styles[name], label=name, markersize=4)
        axes[row, 1].plot(range(1, len(accs) + 1), accs, styles[name], label=name, markersize=4)
    axes[row, 1].axvline(kept, color="grey", linewidth=0.8, linestyle=":")
    axes[row, 0].set(ylabel=f"{REGIMES[regime]}\ntest accuracy", ylim=(0, 1))
axes[1, 0].set(xlabel="round of the original run")
axes[1, 1].set(xlabel="global updates applied")
axes[0, 0].legend(loc="lower right")
fig.suptitle(f"seed {SEEDS[0]}")
fig.tight_layout()
plt.show()

# %% [markdown]
# The explanation to test: FedEraser's accuracy is that of retraining for
# $\lceil T/\Delta t \rceil$ rounds, not above it (within the accuracy tolerance), and closer to
# it than to $\theta_r$.

# %%
tol = tolerance("test_acc")
bound_rows = ["| regime | seed | retrain, ⌈T/Δt⌉ rounds | FedEraser | retrain, T rounds (θ_r) |", "|---|---|---|---|---|"]
bounded = {regime: True for regime in REGIMES}
for (regime, seed), (seed_curves, seed_kept) in per_seed_curves.items():
    short, erased, oracle = (seed_curves["retrain"][seed_kept - 1][1], seed_curves["federaser"][-1][1],
                             seed_curves["retrain"][-1][1])
    bounded[regime] &= erased <= short + tol and abs(erased - short) < abs(erased - oracle)
    bound_rows.append(f"| {regime} | {seed} | {short:.3f} | {erased:.3f} | {oracle:.3f} |")
display(Markdown(results.add("bound_table", "\n".join(bound_rows))))
for regime in REGIMES:
    results.add(f"bound_verdict_{regime}", "holds" if bounded[regime] else "does not hold")
print("bounded by the shortened retraining:", bounded)

# %% [markdown]
# ## Reported vs reproduced
#
# Each criterion is judged on the comparisons above, at the worst seed: the retrain band of
# `compare` for "close to retraining", the paper's $r/\Delta t$ for the cost, and the margins
# named in the entry module (`CALIBRATION_MARGIN`, `TRIGGER_CLOSURE`) for the ablation and the
# backdoor. The ASR alone cannot tell a good unlearning from a bad one here: every model that never
# saw client 0 in its trajectory has none, the much worse FedAccum included. The trigger margin
# and the forgotten examples' loss distribution can.


# %%
def verdict(ok: bool) -> str:
    return "holds" if ok else "**does not hold**"


def gap(cmp, label: str, metric: str) -> str:
    return f"{cmp.gap(label, metric):+.3f}"


def judge(cmp, label: str, accum: str) -> dict[str, bool]:
    like = forgets_like_retraining(cmp, label)
    return {
        "backdoor_present": cmp.gap("do-nothing", "asr", "min") > BACKDOOR_MARGIN,
        "asr": cmp.gap(label, "asr", "max") <= tolerance("asr"),
        "trigger": trigger_margin_closed(cmp, label) >= TRIGGER_CLOSURE,
        "calibration": calibration_gain(cmp, label, accum) >= CALIBRATION_MARGIN,
        **{f"like_{k}": v for k, v in like.items()},
    }


judged = {"smoke": judge(smoke, "federaser", "federaser-no-calibration"),
          "paper": judge(paper, "federaser", "federaser-no-calibration"),
          "paper, Δt = 1": judge(paper, every_round, every_round_accum)}
setting = {"smoke": (smoke, "federaser", "federaser-no-calibration"),
           "paper": (paper, "federaser", "federaser-no-calibration"),
           "paper, Δt = 1": (paper, every_round, every_round_accum)}
rows = ["| criterion | " + " | ".join(judged) + " |", "|---" * (len(judged) + 1) + "|"]


def row(text: str, cell) -> None:
    rows.append(f"| {text} | " + " | ".join(cell(name, *setting[name]) for name in judged) + " |")


row(f"ρ_steps (paper: r/Δt = {expected_rho_steps(PAPER):.2f} at Δt = 2)",
    lambda n, c, m, a: f"{c.rho(m, 'steps', 'max'):.2f} ({1 / c.rho(m, 'steps', 'max'):.1f}x fewer steps)")
row(f"backdoor ASR within {tolerance('asr'):.2f} of θ_r's (θ_o more than {BACKDOOR_MARGIN:.2f} above)",
    lambda n, c, m, a: f"{verdict(judged[n]['asr'] and judged[n]['backdoor_present'])}: {gap(c, m, 'asr')} "
    f"(θ_o {gap(c, 'do-nothing', 'asr')})")
row(f"at least {TRIGGER_CLOSURE:.0%} of θ_o's trigger-margin excess removed",
    lambda n, c, m, a: f"{verdict(judged[n]['trigger'])}: {trigger_margin_closed(c, m):.2f} "
    f"(FedAccum {trigger_margin_closed(c, a):.2f})")
row("trigger margin at most the band above θ_r's (worst seed)",
    lambda n, c, m, a: f"{verdict(judged[n]['like_trigger_margin'])}: {c.gap(m, 'trigger_margin', 'max'):+.3f} "
    f"(band {c.aggregate['band']['trigger_margin']:.2f})")
row("forget loss within the retrain band", lambda n, c, m, a: f"{verdict(judged[n]['like_forget_loss'])}: "
    f"{gap(c, m, 'forget_loss')}")
row("forget-loss distribution like θ_r's (KS p ≥ 0.05)", lambda n, c, m, a: f"{verdict(judged[n]['like_forget_quality'])}: "
    f"p = {c.value(m, 'forget_quality', 'min'):.3f}")
row("test accuracy within the retrain band", lambda n, c, m, a: f"{verdict(judged[n]['like_test_acc'])}: "
    f"{gap(c, m, 'test_acc')} (band {c.aggregate['band']['test_acc']:.2f})")
row(f"calibration adds at least {CALIBRATION_MARGIN:.2f} test accuracy over FedAccum",
    lambda n, c, m, a: f"{verdict(judged[n]['calibration'])}: {calibration_gain(c, m, a):+.3f}")
display(Markdown(results.add("criteria", "\n".join(rows))))

sanity_like = forgets_like_retraining(smoke, sanity)
others = [
    "| check | outcome |", "|---|---|",
    f"| FedEraser ≤ retraining for ⌈T/Δt⌉ rounds (+{tol:.2f}), and closer to it than to θ_r | smoke: "
    f"{verdict(bounded['smoke'])}; paper-like: {verdict(bounded['paper'])} |",
    f"| sanity (smoke): Δt = 1, r = 1 meets every retrain-like criterion | {verdict(all(sanity_like.values()))}: "
    f"test accuracy {gap(smoke, sanity, 'test_acc')}, forget-loss p = {smoke.value(sanity, 'forget_quality', 'min'):.3f}, "
    f"ρ_steps {smoke.rho(sanity):.2f} |",
    f"| option `scale_by_interval=True` against the default (smoke, test accuracy) "
    f"| {gap(smoke, scaled, 'test_acc')} against {gap(smoke, 'federaser', 'test_acc')} |",
    f"| the released code's averaged calibration (paper-like, Δt = 1) | test accuracy {gap(paper, code, 'test_acc')}, "
    f"forget-loss p = {paper.value(code, 'forget_quality', 'min'):.3f}, trigger-margin excess removed "
    f"{trigger_margin_closed(paper, code):.2f} |",
    f"| MIA AUC separates θ_o from θ_r | smoke: {'yes' if smoke.informative('mia_auc') else 'not informative'}, "
    f"paper-like: {'yes' if paper.informative('mia_auc') else 'not informative'} |",
]
display(Markdown(results.add("other_checks", "\n".join(others))))

# %% [markdown]
# The headline verdict of claim 2 per regime, from the criteria above.


# %%
def claim2_verdict(name: str) -> str:
    j = judged[name]
    removed = j["asr"] and j["backdoor_present"] and j["trigger"]
    like = all(j[k] for k in ("like_trigger_margin", "like_forget_loss", "like_forget_quality", "like_test_acc"))
    overall = "holds" if removed and like and j["calibration"] else "partly" if removed or j["calibration"] else "does not hold"
    return (f"{overall}: backdoor largely removed {verdict(removed)}, close to retraining {verdict(like)}, "
            f"calibration beats FedAccum {verdict(j['calibration'])}")


for name in judged:
    print(name, "->", claim2_verdict(name))
rho = smoke.rho("federaser")
results.value("rho_steps", rho)
results.value("speedup", 1 / rho, "{:.1f}")
results.value("rho_comm", smoke.rho("federaser", "comm"))
results.value("rho_steps_paper", paper.rho("federaser"))
results.value("rho_steps_every_round", paper.rho(every_round))
results.value("acc_gap", smoke.gap("federaser", "test_acc"), "{:+.3f}")
results.value("acc_gap_paper", paper.gap("federaser", "test_acc"), "{:+.3f}")
results.value("acc_gap_every_round", paper.gap(every_round, "test_acc"), "{:+.3f}")
results.value("calibration_gain", calibration_gain(smoke), "{:+.3f}")
results.value("calibration_gain_paper", calibration_gain(paper), "{:+.3f}")
results.value("trigger_closed", trigger_margin_closed(smoke, "federaser"), "{:.2f}")
results.value("trigger_closed_paper", trigger_margin_closed(paper, "federaser"), "{:.2f}")
results.value("trigger_closed_accum_paper", trigger_margin_closed(paper, "federaser-no-calibration"), "{:.2f}")
for name, key in (("smoke", "claim2_smoke"), ("paper", "claim2_paper"), ("paper, Δt = 1", "claim2_every_round")):
    results.add(key, claim2_verdict(name))
display(Markdown(results.claims("claims", [
    (claims[0], f"smoke: ρ_steps {rho:.2f} ({1 / rho:.1f}x fewer client steps), ρ_comm "
     f"{smoke.rho('federaser', 'comm'):.2f}; paper-like: ρ_steps {paper.rho('federaser'):.2f} "
     f"({1 / paper.rho('federaser'):.1f}x)",
     verdict(smoke.rho("federaser", "steps", "max") <= expected_rho_steps(PAPER)
             and paper.rho("federaser", "steps", "max") <= expected_rho_steps(PAPER))
     + " (by construction: a count of steps)"),
    (claims[1], f"smoke: test accuracy gap {gap(smoke, 'federaser', 'test_acc')}, trigger-margin excess removed "
     f"{trigger_margin_closed(smoke, 'federaser'):.2f}, calibration gain {calibration_gain(smoke):+.3f}; paper-like: "
     f"{gap(paper, 'federaser', 'test_acc')}, {trigger_margin_closed(paper, 'federaser'):.2f}, "
     f"{calibration_gain(paper):+.3f}; paper-like at Δt = 1: {gap(paper, every_round, 'test_acc')}",
     f"smoke: {claim2_verdict('smoke')}; paper-like: {claim2_verdict('paper')}"),
])))

# %% [markdown]
# The cost is a count: each remaining client trains $\lceil r\,s_k \rceil$ steps at every kept
# round but the first, so $\rho_\text{steps}$ is at most $r/\Delta t$ up to that rounding (the
# first kept round needs no calibration). Communication shrinks less: every calibration is a full
# round trip, $r$ only shortens the local training. Where utility is lost, the bound table says
# why: the rebuilt model stands for $\lceil T/\Delta t \rceil$ rounds of training (right panels),
# and a federation that is still improving at round $T$ loses accuracy; the sanity row
# ($\Delta t = 1$, $r = 1$) shows the same code landing on $\theta_r$ when nothing is skipped.

# %% [markdown]
# ## The same method on a federated LoRA language model
#
# Scenario `profiles-client`: a tiny Llama-style model (pretrained once, cached), LoRA adapters
# trained with FedAvg (local Adam, as FedIT's clients) over 4 clients holding question-answer
# records about fictitious people, canaries (secret codes) included; forget client 0 and every
# record of its people. No FedEraser experiment in the paper covers this. The history keeps
# adapter tensors only, which is where storage changes. To keep the smoke run short it trains
# 6 rounds (still $\Delta t = 2$); `FULL=1` runs the scenario's full configuration. The
# FedRecover notebook compares on the same federation (shared through the cache).

# %%
LM_ROUNDS = 0 if FULL else LM_SMOKE["rounds"]  # 0: the scenario's own rounds
LM_METRICS = (*LM_HEADLINE_METRICS, "forget_logprob", "retain_logprob", "canary_extraction")
lm = compare("profiles-client", ("federaser", "federaser-no-calibration"), full=FULL, rounds=LM_ROUNDS,
             progress=False)
display(Markdown(results.add("lm_table", lm.table(LM_METRICS))))


def moved_to(metric: str, what: str) -> str:
    return (f"- {what}: {lm.value('original', metric):.2f} for θ_o, {lm.value('federaser', metric):.2f} for "
            f"FedEraser, {lm.value('retrain', metric):.2f} for θ_r, {lm.value('federaser-no-calibration', metric):.2f} "
            "for the uncalibrated replay")


display(Markdown(results.add("lm_summary", "\n".join([
    moved_to("forget_logprob", "the forgotten people's answer log-probability"),
    moved_to("mia_auc_loss", "their LOSS membership AUC"),
    moved_to("canary_exposure", "the exposure of their canaries"),
    moved_to("retain_logprob", "the retained people's answer log-probability (the price)")]))))

# %% [markdown]
# How far each method moves from $\theta_o$ towards $\theta_r$: share of the gap
# $m(\theta_r) - m(\theta_o)$ closed (1 = lands on $\theta_r$, 0 = stays at $\theta_o$, above 1 =
# overshoots), for the metrics of the forgotten people on which $\theta_o$ is outside the retrain
# band (the informative ones).

# %%
moved = [m for m in LM_METRICS if m.startswith(("forget", "mia", "canary")) and lm.informative(m)]
lines = ["| model | " + " | ".join(moved) + " |", "|---" * (len(moved) + 1) + "|"]
for name in lm.methods:
    shares = [(lm.value(name, m) - lm.value("original", m)) / (lm.value("retrain", m) - lm.value("original", m))
              for m in moved]
    lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in shares) + " |")
display(Markdown(results.add("lm_closed", "\n".join(lines))))

lm_scenario = build_scenario("profiles-client", seed=0, full=FULL).restricted(rounds=LM_ROUNDS)
lm_run = cache.trained_federation(lm_scenario, PAPER.interval)
report = storage_report(lm_run.history, lm_run.model)
display(Markdown(results.add("lm_storage", (
    f"{report['stored_bytes'] / 2**20:.1f} MiB of adapter tensors; the same history with full model "
    f"weights ({report['full_model_bytes'] / 2**20:.2f} MiB per model) would take "
    f"{report['full_history_bytes'] / 2**20:.1f} MiB, {report['ratio']:.1f}x more"))))
results.add("lm_regime", f"{lm_run.config.rounds} rounds, seed 0" + (", full size" if FULL else ""))
results.add("regime", (f"`FULL=1`: seeds {', '.join(map(str, SEEDS))}" if FULL else f"smoke size: seed {SEEDS[0]}")
            + f", {len(per_seed_curves[('smoke', SEEDS[0])][0]['retrain'])} rounds of `digits-backdoor`; seeds "
            f"{', '.join(map(str, PAPER_SEEDS))} of `digits-backdoor-paper`")

# %% [markdown]
# Read the tables against retraining, not against zero: a retrained adapter still knows the
# format of the questions, so `forget_logprob` of $\theta_r$ sits near the held-out people's
# `test_logprob`, while $\theta_o$ has memorised client 0's people. `retain_logprob` is the price:
# the rebuilt adapter again stands for $\lceil T/\Delta t \rceil$ rounds, so it may know the
# remaining people less well than $\theta_r$ does. The storage saving of adapters is small here
# because the tiny model's rank-16 adapters on every linear layer are about a fifth of its size;
# for a 7B model with rank-8 adapters on the query and value projections (about 4 M parameters
# against 6.7 B) it would be about 1,600.

# %%
saved_to = results.save()  # every item the entry page shows

# %% [markdown]
# ## What not to conclude
#
# - **Not the paper's numbers.** Digits, a 64-unit MLP and 20 rounds stand in for four data
#   sets and their CNNs. The paper reports the 4x as an *expected* speed-up ($\Delta t / r$), which
#   counting client steps confirms by construction; it is not evidence of quality.
# - **The accuracy gap depends on the regime, not only on the method.** FedEraser rebuilds a model
#   of $\lceil T/\Delta t \rceil$ rounds. With ten local epochs per round (the paper-like regime)
#   each stored update carries more training and the gap narrows; with one epoch it is wide. Do not
#   read a gap as "calibration fails", nor a small gap elsewhere as "FedEraser equals retraining".
# - **Backdoor ASR near zero is easy to reach.** Any model that never saw client 0 in its
#   trajectory has no backdoor, including the much worse FedAccum replay. The trigger margin and the
#   forget-loss distribution are the discriminating measures here.
# - **A membership AUC marked n.i.** cannot support a privacy claim either way: $\theta_o$ and
#   $\theta_r$ are within the retrain band of each other.
# - **One language-model seed, few rounds at smoke size.** Run `FULL=1` before quoting any LM
#   number; the tiny model and synthetic people say nothing about a real LLM's knowledge.
