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
# # FedRecover: recovering a poisoned federation from its history
#
# Cao et al. (2023) remove detected malicious clients and re-run federated training from the
# initial model, but the server *estimates* most of the remaining clients' updates from the
# stored history (stored update + L-BFGS Hessian-vector correction) and asks the clients to train
# only during warm-up, periodic correction, abnormality fixing and final tuning. This notebook
# measures, at laptop scale, how close the recovered model gets to train-from-scratch, first
# under Trimmed-mean aggregation (the rule of the paper's headline example), then under FedAvg,
# and what each part of the method contributes.
#
# Smoke size by default (one seed, about a minute on two cores); `FULL=1` runs three seeds,
# twice as many rounds, a wider sweep of the tolerance rate and the language-model scenario at
# its full size. Every number the entry page shows is saved below with `Results` and comes from
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
from fedunlearn.incremental.fedrecover import (
    ABLATION_MARGIN,
    FEDAVG_SCENARIO,
    POISONED_ASR,
    RECOVERY_METRICS,
    RECOVERY_SCENARIO,
    FedRecoverConfig,
    scheduled_rounds,
)
from fedunlearn.results import Results
from fedunlearn.unlearning.compare import LM_HEADLINE_METRICS, Comparison, compare
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.scenarios import LM_SMOKE, POISONED_TRIM_FRACTION, build_scenario

entry = catalog.get("fedrecover")
claims = entry.claims
results = Results("fedrecover")
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# ## Setup
#
# - **Data.** scikit-learn's 8x8 digits **stand in for MNIST** (nothing is downloaded).
# - **Federation.** Scenario `digits-poisoned-trimmed`: 10 IID clients, a 64-64-10 MLP, 40 rounds
#   (80 with `FULL=1`), every client in every round, aggregated with the coordinate-wise
#   **trimmed mean**, which drops the largest and the smallest update of each coordinate (trim
#   fraction below; one of 10 clients in training, one of the 8 retained in recovery and
#   retraining). Clients 0 and 1 (20%; the paper's example has 40 of 100 malicious clients) add
#   triggered copies of half their images labelled 0: a backdoor that survives the trimmed mean,
#   as the paper's does (its poisoned model has ASR 1.00). The second regime, `digits-poisoned`,
#   is the same federation under FedAvg. FedRecover reads the history of every round.
# - **Request.** The detector is assumed perfect: forget clients 0 and 1.
# - **Methods.** $\theta_o$ (do nothing), train-from-scratch $\theta_r$ (the referee),
#   continue-FedAvg (negative control), FedRecover at its defaults ($T_f = 5$, the paper's
#   example; $\alpha = 10^{-4}$; $s = 2$, $T_w = 3$, $T_c = 15$, ours), and three settings that
#   each remove one part: $\alpha = 0$ (the previous default: $\tau$ is the largest coordinate
#   any retained client ever sent, so abnormality fixing almost never fires), `buffer_size=0`
#   (estimates replay the stored update, no L-BFGS correction) and the paper's ablation without
#   correction (estimates after warm-up only). `FULL=1` adds $\alpha = 10^{-3}$. The knobs were
#   fixed without looking at $\theta_r$; the variants show the accuracy-cost trade-off, they are
#   not a tuning sweep.
# - **Metrics.** Test accuracy, attack success rate (ASR) and the **trigger margin** (mean over
#   triggered test inputs of non-target classes of the target logit minus the largest other
#   logit): ASR only says whether the backdoor still wins, the margin says how far it is from
#   winning, and $\theta_r$ sets where it should be. Forget quality (KS-test p-value between the
#   per-example losses on the forgotten clean examples under the model and under $\theta_r$)
#   and the forget loss are shown too.
# - **Cost.** $\rho_{\text{steps}}$ = client SGD steps of the method / of train-from-scratch; the
#   server's estimated updates are counted separately.

# %%
FULL = os.environ.get("FULL") == "1"
SEEDS = (0, 1, 2) if FULL else (0,)
torch.set_num_threads(1)
DEFAULTS = FedRecoverConfig()

RECOVER = get_method("fedrecover")
NO_FIXING = get_method("fedrecover", tolerance_rate=0.0)
REPLAY = get_method("fedrecover", buffer_size=0)
ABLATION = get_method("fedrecover-no-correction")
VARIANTS = [RECOVER, NO_FIXING, REPLAY, ABLATION] + ([get_method("fedrecover", tolerance_rate=1e-3)] if FULL else [])
CONTROLS = ["do-nothing", "continue-fedavg"]
METRICS = ("test_acc", "asr", "trigger_margin", "forget_quality", "forget_loss")
results.value("trim_fraction", POISONED_TRIM_FRACTION)

# %% [markdown]
# ## Run: Trimmed-mean
#
# `compare` takes $\theta_o$ with its history and $\theta_r$ from the federation cache (trained
# once), retrains a second oracle with another seed for the noise floor, runs every method and
# evaluates all models with the one evaluation function. In parentheses: the gap to $\theta_r$ of
# the same seed, ✓ within the retrain band. Wall-time ratios are left out: retraining takes a few
# seconds here, and timings that short are noise; client steps are the primary cost.

# %%
cmp = compare(RECOVERY_SCENARIO, CONTROLS + VARIANTS, seeds=SEEDS, full=FULL, progress=False)
display(Markdown(results.add("digits_table", cmp.table(METRICS, costs=("steps",)))))

# %% [markdown]
# Where the client work goes. Every round needs one update per retained client; FedRecover
# either asks the client (warm-up, correction, final tuning, or an estimate flagged by
# abnormality fixing) or uses the server's estimate.


# %%
def exact_updates(comparison: Comparison, labels: list[str]) -> str:
    """Per method (median over seeds): client updates asked, of which abnormality fixes, and
    server estimates used, out of the updates train-from-scratch asks."""
    lines = ["| method | exact client updates | of which abnormality fixes | server estimates used | of |",
             "|---|---|---|---|---|"]
    for label in labels:
        rows = [(row["oracle_cost"]["client_rounds"], row["methods"][label]["cost"]) for row in comparison.per_seed]
        asked = statistics.median(cost["client_rounds"] for _, cost in rows)
        used = statistics.median(total - cost["client_rounds"] for total, cost in rows)
        fixes = statistics.median(cost["server_steps"] - (total - cost["client_rounds"]) for total, cost in rows)
        total = statistics.median(total for total, _ in rows)
        lines.append(f"| {label} | {asked:.0f} | {fixes:.0f} | {used:.0f} | {total:.0f} |")
    return "\n".join(lines)


def fixes(comparison: Comparison, label: str, stat=max) -> float:
    """Abnormality fixes of a method (``stat`` over seeds)."""
    return stat(row["methods"][label]["cost"]["server_steps"] - row["oracle_cost"]["client_rounds"]
                + row["methods"][label]["cost"]["client_rounds"] for row in comparison.per_seed)


def estimates(comparison: Comparison, label: str) -> float:
    """Estimates the server computed (median over seeds)."""
    return statistics.median(row["methods"][label]["cost"]["server_steps"] for row in comparison.per_seed)


display(Markdown(results.add("digits_updates", exact_updates(cmp, [m.label for m in VARIANTS]))))

# %% [markdown]
# ## Run: FedAvg
#
# The same federation, methods and request under FedAvg: FedRecover at its defaults and with
# $\alpha = 0$.

# %%
fedavg = compare(FEDAVG_SCENARIO, [RECOVER, NO_FIXING], seeds=SEEDS, full=FULL, progress=False)
display(Markdown(results.add("fedavg_table", fedavg.table(METRICS, costs=("steps",)))))
display(Markdown(results.add("fedavg_updates", exact_updates(fedavg, fedavg.methods))))

# %% [markdown]
# ## Backdoor margin against client work
#
# Each point is one method (median over seeds) under Trimmed-mean: its trigger-margin gap to
# train-from-scratch against the share of train-from-scratch client steps it needed. The
# paper's promise is a point near zero on the left; the band is the retrain band of the margin.

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.6))
for name in cmp.methods:
    x, y = cmp.rho(name), cmp.gap(name, "trigger_margin")
    ax.scatter(x, y)
    ax.annotate(name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
band = cmp.aggregate["band"]["trigger_margin"]
ax.axhspan(-band, band, color="grey", alpha=0.2, linewidth=0)
ax.set(xlabel="ρ_steps (client steps / train-from-scratch)", ylabel="trigger margin − θ_r's", xlim=(-0.05, 1.1),
       yscale="symlog")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Reported vs reproduced
#
# Criteria (named once in the entry module): test accuracy, ASR and trigger margin within the
# retrain band of $\theta_r$ (the comparison engine's retrain-equivalence: median gap over seeds;
# the notebook also says whether it holds at every seed); without corrections, the worst gap
# (test accuracy or ASR) larger by at least `ABLATION_MARGIN`. The client-work saving is not a
# criterion: it is fixed by the schedule
# ($T_w + T_f + \lfloor (T - T_w - T_f)/T_c \rfloor$ of $T$ rounds) plus the abnormality fixes,
# so it is reported, not judged.


# %%
def holds(condition: bool) -> str:
    return "holds" if condition else "**does not hold**"


def worst(comparison: Comparison, label: str, metric: str) -> float:
    """The largest |gap to θ_r| over seeds."""
    return max(abs(comparison.gap(label, metric, "min")), abs(comparison.gap(label, metric, "max")))


def recovered(comparison: Comparison, label: str, every_seed: bool = False) -> dict[str, bool]:
    """Claim 1 for one method: each recovery metric within the retrain band (median gap, or each
    seed's gap)."""
    return {metric: comparison.equivalent(label, metric, every_seed=every_seed) for metric in RECOVERY_METRICS}


def ablation_gap(label: str) -> float:
    return max(worst(cmp, label, metric) for metric in ("test_acc", "asr"))


trimmed, averaged = recovered(cmp, RECOVER.label), recovered(fedavg, RECOVER.label)
no_fixing = recovered(cmp, NO_FIXING.label)
checks = {
    "poisoned": cmp.value("original", "asr", "min") > POISONED_ASR and fedavg.value("original", "asr", "min") > POISONED_ASR,
    "trimmed": all(trimmed.values()),
    "fedavg": all(averaged.values()),
    "ablation": ablation_gap(ABLATION.label) >= ablation_gap(RECOVER.label) + ABLATION_MARGIN,
}
rounds = build_scenario(RECOVERY_SCENARIO, seed=SEEDS[0], full=FULL).config.rounds
rho = cmp.rho(RECOVER.label)
results.value("scheduled_share", scheduled_rounds(rounds, DEFAULTS) / rounds, "{:.3f}")
results.value("rho_steps", rho, "{:.3f}")
results.value("saved", 100 * (1 - rho), "{:.0f}%")
results.value("fixes", fixes(cmp, RECOVER.label, statistics.median), "{:.0f}")
results.value("estimates", estimates(cmp, RECOVER.label), "{:.0f}")
results.value("fixes_alpha0", fixes(cmp, NO_FIXING.label), "{:.0f}")
results.value("fixes_alpha0_fedavg", fixes(fedavg, NO_FIXING.label), "{:.0f}")
for name, comparison in (("trimmed", cmp), ("fedavg", fedavg)):
    for metric in RECOVERY_METRICS:
        results.value(f"{name}_{metric}_gap", comparison.gap(RECOVER.label, metric),
                      "{:+.2f}" if metric == "trigger_margin" else "{:+.3f}")
        results.value(f"{name}_alpha0_{metric}_gap", comparison.gap(NO_FIXING.label, metric),
                      "{:+.2f}" if metric == "trigger_margin" else "{:+.3f}")
    results.value(f"{name}_margin_band", comparison.aggregate["band"]["trigger_margin"])
results.value("replay_margin_gap", cmp.gap(REPLAY.label, "trigger_margin"), "{:+.2f}")
results.value("asr_original", cmp.value("original", "asr"))
results.value("ablation_gap", ablation_gap(ABLATION.label), "{:.3f}")
results.value("recover_gap", ablation_gap(RECOVER.label), "{:.3f}")
results.add("verdict_trimmed", holds(checks["trimmed"] and checks["poisoned"]))
results.add("verdict_fedavg", holds(checks["fedavg"] and checks["poisoned"]))
NAMES = {"test_acc": "test accuracy", "asr": "ASR", "trigger_margin": "trigger margin"}
results.add("verdict_fedavg_parts", ", ".join(f"{NAMES[metric]} {holds(ok)}" for metric, ok in averaged.items()))
results.add("verdict_alpha0", ", ".join(f"{NAMES[metric]} {holds(ok)}" for metric, ok in no_fixing.items()))
results.add("verdict_ablation", holds(checks["ablation"]))
results.add("verdict_every_seed", f"Trimmed-mean: {holds(all(recovered(cmp, RECOVER.label, True).values()))}; "
            f"FedAvg: {holds(all(recovered(fedavg, RECOVER.label, True).values()))}")


def gaps_text(comparison: Comparison, label: str) -> str:
    return (f"Δ test accuracy {comparison.gap(label, 'test_acc'):+.3f}, Δ ASR {comparison.gap(label, 'asr'):+.3f}, "
            f"Δ trigger margin {comparison.gap(label, 'trigger_margin'):+.2f}")


display(Markdown(results.claims("claims", [
    (claims[0], f"Trimmed-mean: {gaps_text(cmp, RECOVER.label)} (θ_o ASR {cmp.value('original', 'asr'):.2f}); "
     f"FedAvg: {gaps_text(fedavg, RECOVER.label)}",
     f"Trimmed-mean: {holds(checks['trimmed'] and checks['poisoned'])}; FedAvg: "
     f"{holds(checks['fedavg'] and checks['poisoned'])} (test accuracy, ASR and trigger margin within the "
     "retrain band)"),
    (claims[1], f"{100 * (1 - rho):.0f}% (ρ_steps {rho:.3f}; the schedule alone asks "
     f"{scheduled_rounds(rounds, DEFAULTS)} of {rounds} rounds)",
     "set by the schedule and the abnormality fixes; not judged"),
    (claims[2], f"worst gap (test accuracy, ASR) without corrections {ablation_gap(ABLATION.label):.3f} against "
     f"{ablation_gap(RECOVER.label):.3f} with them",
     f"larger by at least {ABLATION_MARGIN:.2f}: {holds(checks['ablation'])}"),
])))

# %% [markdown]
# With $\alpha = 0$ abnormality fixing is all but switched off, and what remains of the
# backdoor is the part of the L-BFGS estimate that pulls the recovered model back towards the
# poisoned trajectory: outside the span of its $s$ pairs L-BFGS approximates the Hessian by
# $\sigma I$, also along the trigger's weights, which the clean clients' data barely constrain.
# Its ASR can land within the band while its trigger margin stays far above $\theta_r$'s: the
# margin is the discriminating metric.

# %% [markdown]
# ## The same method on a federated LoRA language model
#
# Scenario `profiles-client`: a tiny Llama-style model with LoRA adapters trained by FedAvg over
# 4 clients holding question-answer records about fictitious people; forget client 0. No
# experiment in the paper covers language models; here the "model" FedRecover re-runs is the
# adapter, the clients train with local Adam, and the forgotten client is honest (nothing is
# poisoned), so the question is only whether estimated updates land near train-from-scratch. To
# keep the smoke run short the federation trains 6 rounds (the FedEraser notebook uses the same
# cached federation); `FULL=1` runs the scenario's full configuration.

# %%
LM_ROUNDS = 0 if FULL else LM_SMOKE["rounds"]  # 0: the scenario's own rounds
LM_METRICS = (*LM_HEADLINE_METRICS, "forget_logprob", "retain_logprob")
lm_rounds = LM_ROUNDS or build_scenario("profiles-client", seed=0, full=FULL).config.rounds
# When warm-up and final tuning cover every round, FedRecover is train-from-scratch: skip the run.
lm_all_exact = scheduled_rounds(lm_rounds, DEFAULTS) == lm_rounds
lm = compare("profiles-client", ["fedrecover-no-correction"] + ([] if lm_all_exact else ["fedrecover"]),
             full=FULL, rounds=LM_ROUNDS, progress=False)
display(Markdown(results.add("lm_table", lm.table(LM_METRICS))))
display(Markdown(results.add("lm_updates", exact_updates(lm, lm.methods))))
results.add("lm_regime", f"{lm_rounds} rounds, seed 0" + (", full size" if FULL else "")
            + (f"; warm-up and final tuning ({DEFAULTS.warmup_rounds + DEFAULTS.final_rounds} rounds) cover all "
               f"{lm_rounds}, so `fedrecover` is train-from-scratch here and only the ablation runs"
               if lm_all_exact else ""))
results.add("regime", (f"`FULL=1`: seeds {', '.join(map(str, SEEDS))}" if FULL else f"smoke size: seed {SEEDS[0]}")
            + f", {rounds} rounds")

# %% [markdown]
# Read `forget_logprob` and the membership AUC against $\theta_r$, not against zero: a retrained
# adapter still answers in the right format. The LM federation runs few rounds, so FedRecover's
# fixed warm-up and final-tuning rounds are most or all of them; with local Adam the update is
# not a gradient step, so the L-BFGS estimate has less to stand on: the ablation, which accepts
# every estimate after warm-up, shows what the estimates alone do.

# %%
saved_to = results.save()  # every item the entry page shows

# %% [markdown]
# ## What not to conclude
#
# - **Not the paper's scale.** 40 rounds of a tiny MLP on digits, 2 of 10 clients malicious;
#   the paper runs 100 clients, MNIST/Fashion-MNIST/Purchase/HAR, FedAvg, Median and
#   Trimmed-mean. The paper's trim parameter was not retrieved; ours cuts fewer updates than there
#   are malicious clients, so that the backdoor survives training.
# - **Our knobs, mostly.** Only $T_f = 5$ is the paper's; $s$, $T_w$, $T_c$ and $\alpha$ of its
#   experiments were not retrieved. Other settings move the point along the trade-off.
# - **The saving is arithmetic.** With fixed knobs it grows with $T$; the abnormality fixes add
#   to it, more under FedAvg than under Trimmed-mean here.
# - **A perfect detector.** Both malicious clients are removed; the paper also studies missed
#   and false detections.
# - **One smoke seed.** Run `FULL=1` before quoting a gap.
