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
# measures, at laptop scale, how close the recovered model gets to train-from-scratch and how much
# client work it saves.
#
# Smoke size by default (one seed, about a minute on two cores); `FULL=1` runs three seeds,
# twice as many rounds and the language-model scenario at its full size. Every number the entry
# page shows is saved below with `Results` and comes from this run.

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
    MAX_ACCURACY_GAP,
    MAX_RESIDUAL_ASR,
    MAX_RHO_STEPS,
    POISONED_ASR,
    RECOVERY_METRICS,
)
from fedunlearn.results import Results
from fedunlearn.unlearning.compare import Comparison, compare, tolerance
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

entry = catalog.get("fedrecover")
claims = entry.claims
results = Results("fedrecover")
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# ## Setup
#
# - **Data.** scikit-learn's 8x8 digits **stand in for MNIST** (nothing is downloaded).
# - **Federation.** Scenario `digits-poisoned`: 10 IID clients, FedAvg over a 64-64-10 MLP,
#   40 rounds (80 with `FULL=1`), every client in every round. Clients 0 and 1 (20%, the paper
#   uses up to 40 of 100 malicious clients) add triggered copies of half their images labelled
#   0: a backdoor. FedRecover reads the history of every round (`record_every=1`).
# - **Request.** The detector is assumed perfect: forget clients 0 and 1.
# - **Methods.** $\theta_o$ (do nothing), train-from-scratch $\theta_r$ (the referee),
#   continue-FedAvg (negative control), FedRecover at its defaults ($s = 2$, $T_w = 3$,
#   $T_c = 15$, $T_f = 2$, $\alpha = 0$), the ablation without correction (estimates after
#   warm-up only) and two knob settings that buy accuracy with client work ($T_f = 5$;
#   $\alpha = 10^{-4}$). The knobs were fixed before looking at $\theta_r$; the variants show the
#   paper's accuracy-cost trade-off, they are not a tuning sweep.
# - **Cost.** $\rho_{\text{steps}}$ = client SGD steps of the method / of train-from-scratch; the
#   server's estimated updates are counted separately.

# %%
FULL = os.environ.get("FULL") == "1"
SEEDS = (0, 1, 2) if FULL else (0,)
torch.set_num_threads(1)

VARIANTS = [get_method("fedrecover"), get_method("fedrecover-no-correction"),
            get_method("fedrecover", final_rounds=5), get_method("fedrecover", tolerance_rate=1e-4)]
CONTROLS = ["do-nothing", "continue-fedavg"]
METRICS = ("test_acc", "forget_acc", "mia_auc", "asr")

# %% [markdown]
# ## Run
#
# `compare` takes $\theta_o$ with its history and $\theta_r$ from the federation cache (trained
# once), retrains a second oracle with another seed for the noise floor, runs every method and
# evaluates all models with the one evaluation function. In parentheses: the gap to $\theta_r$ of
# the same seed, ✓ within the retrain band. Wall-time ratios are left out: retraining takes a few
# seconds here, and timings that short are noise; client steps are the primary cost.

# %%
cmp = compare("digits-poisoned", CONTROLS + VARIANTS, seeds=SEEDS, full=FULL, progress=False)
display(Markdown(results.add("digits_table", cmp.table(METRICS, costs=("steps", "comm")))))

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


display(Markdown(results.add("digits_updates", exact_updates(cmp, [m.label for m in VARIANTS]))))

# %% [markdown]
# ## Accuracy against client work
#
# Each point is one method (median over seeds): how far from train-from-scratch it lands,
# against the share of train-from-scratch client steps it needed. The paper's promise is the
# lower-left corner; dashed: the accuracy criterion (left) and the retrain tolerance of the ASR
# (right); dotted: the client-work criterion.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
for ax, metric, label, line in ((axes[0], "test_acc", "|Δ test accuracy|", MAX_ACCURACY_GAP),
                                (axes[1], "asr", "ASR − ASR(θ_r)", tolerance("asr"))):
    for name in cmp.methods:
        gap = cmp.gap(name, metric)
        y, x = abs(gap) if metric == "test_acc" else gap, cmp.rho(name)
        ax.scatter(x, y)
        ax.annotate(name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.axhline(line, color="grey", linewidth=0.8, linestyle="--")
    ax.axvline(MAX_RHO_STEPS, color="grey", linewidth=0.8, linestyle=":")
    ax.set(xlabel="ρ_steps (client steps / train-from-scratch)", ylabel=label, xlim=(-0.05, 1.1))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Reported vs reproduced
#
# Criteria (named once in the entry module): test accuracy within `MAX_ACCURACY_GAP` of
# $\theta_r$; ASR within the retrain band (the strict reading of "as accurate") and at most
# `MAX_RESIDUAL_ASR` above $\theta_r$ (most of the backdoor removed); $\rho_\text{steps}$ at most
# `MAX_RHO_STEPS`; without corrections, the worst gap larger by at least `ABLATION_MARGIN`. Each
# is judged on the worst seed.


# %%
def in_band(label: str, metric: str) -> bool:
    """Retrain-equivalent at every seed (each paired gap within the band)."""
    return cmp.equivalent(label, metric, every_seed=True)


def holds(condition: bool) -> str:
    return "holds" if condition else "**does not hold**"


def worst(label: str, metric: str) -> float:
    """The largest |gap to θ_r| over seeds."""
    return max(abs(cmp.gap(label, metric, "min")), abs(cmp.gap(label, metric, "max")))


def worst_gap(label: str) -> float:
    return max(worst(label, metric) for metric in RECOVERY_METRICS)


checks = {
    "poisoned": cmp.value("original", "asr", "min") > POISONED_ASR,
    "accuracy": worst("fedrecover", "test_acc") <= MAX_ACCURACY_GAP,
    "asr_band": in_band("fedrecover", "asr"),
    "asr_residual": cmp.gap("fedrecover", "asr", "max") <= MAX_RESIDUAL_ASR,
    "saving": 0 < cmp.rho("fedrecover", "steps", "max") <= MAX_RHO_STEPS,
    "ablation": worst_gap("fedrecover-no-correction") >= worst_gap("fedrecover") + ABLATION_MARGIN,
}
rho = cmp.rho("fedrecover")
acc_gap, asr_gap = cmp.gap("fedrecover", "test_acc"), cmp.gap("fedrecover", "asr")
results.value("acc_gap", acc_gap, "{:+.3f}")
results.value("asr_gap", asr_gap, "{:+.3f}")
results.value("asr_original", cmp.value("original", "asr"))
results.value("asr_recovered", cmp.value("fedrecover", "asr"), "{:.3f}")
results.value("rho_steps", rho, "{:.3f}")
results.value("saved", 100 * (1 - rho), "{:.0f}%")
results.add("verdict_accuracy", holds(checks["accuracy"]))
results.add("verdict_asr_band", holds(checks["asr_band"]))
results.add("verdict_residual", holds(checks["asr_residual"] and checks["poisoned"]))
results.add("verdict_saving", holds(checks["saving"]))
results.add("verdict_ablation", holds(checks["ablation"]))
display(Markdown(results.claims("claims", [
    (claims[0], f"Δ test accuracy {acc_gap:+.3f}, Δ ASR {asr_gap:+.3f} (θ_o ASR {cmp.value('original', 'asr'):.2f}, "
     f"recovered {cmp.value('fedrecover', 'asr'):.3f})",
     f"test accuracy within {MAX_ACCURACY_GAP:.2f}: {holds(checks['accuracy'])}; ASR within the retrain band "
     f"at every seed: "
     f"{holds(checks['asr_band'])}; ASR at most {MAX_RESIDUAL_ASR:.2f} above θ_r: "
     f"{holds(checks['asr_residual'] and checks['poisoned'])}"),
    (claims[1], f"{100 * (1 - rho):.0f}% (ρ_steps {rho:.3f})",
     f"at least {100 * (1 - MAX_RHO_STEPS):.0f}% saved: {holds(checks['saving'])}"),
    (claims[2], f"worst gap without corrections {worst_gap('fedrecover-no-correction'):.3f} against "
     f"{worst_gap('fedrecover'):.3f} with them",
     f"larger by at least {ABLATION_MARGIN:.2f}: {holds(checks['ablation'])}"),
])))

# %% [markdown]
# Where the ASR does not match: L-BFGS approximates the Hessian by $\sigma I$ outside the span
# of its $s$ stored pairs, so $\tilde{\mathbf H}(\hat w_t - \bar w_t)$ partly pulls the
# recovered model back towards the *poisoned* trajectory, including along the trigger's
# weights, which the clean clients' data barely constrain. Exact rounds (final tuning,
# abnormality fixing) wash that out; more of them (the $T_f = 5$ and $\alpha = 10^{-4}$
# variants) trade client work for a lower ASR: compare their rows above.

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
LM_METRICS = ("test_logprob", "retain_logprob", "forget_logprob", "mia_auc_loss", "canary_exposure")
lm = compare("profiles-client", ("fedrecover", "fedrecover-no-correction"), full=FULL, rounds=LM_ROUNDS,
             progress=False)
display(Markdown(results.add("lm_table", lm.table(LM_METRICS))))
display(Markdown(results.add("lm_updates", exact_updates(lm, lm.methods))))
lm_rounds = LM_ROUNDS or build_scenario("profiles-client", seed=0, full=FULL).config.rounds
results.add("lm_regime", f"{lm_rounds} rounds, seed 0" + (", full size" if FULL else ""))
digits_rounds = build_scenario("digits-poisoned", seed=SEEDS[0], full=FULL).config.rounds
results.add("regime", (f"`FULL=1`: seeds {', '.join(map(str, SEEDS))}" if FULL else f"smoke size: seed {SEEDS[0]}")
            + f", {digits_rounds} rounds of `digits-poisoned`")

# %% [markdown]
# Read `forget_logprob` and the membership AUC against $\theta_r$, not against zero: a retrained
# adapter still answers in the right format. The LM federation runs few rounds, so FedRecover's
# fixed warm-up and final-tuning rounds are most of them and $\rho_{\text{steps}}$ is far from
# the digits value; with local Adam the update is not a gradient step, so the L-BFGS estimate has
# less to stand on: the second table shows how many estimates abnormality fixing rejected.

# %%
saved_to = results.save()  # every item the entry page shows

# %% [markdown]
# ## What not to conclude
#
# - **Not the paper's scale.** 40 rounds of a tiny MLP on digits, 2 of 10 clients malicious,
#   FedAvg only; the paper runs hundreds of rounds, 100 clients, MNIST/Fashion-MNIST/Purchase/HAR
#   and robust aggregation rules (Median, Trimmed-mean). The saving is mostly arithmetic:
#   $(T_w + T_f + \lfloor (T - T_w - T_f)/T_c \rfloor)/T$ plus abnormality fixes, so it grows
#   with $T$ for fixed knobs.
# - **Our knobs, not the paper's.** The text fixes none of $s$, $T_w$, $T_c$, $\alpha$ for its
#   tables; ours were set for a 40-round run. Other settings move the point along the trade-off
#   in the plot.
# - **A perfect detector.** Both malicious clients are removed; the paper also studies missed
#   and false detections.
# - **One smoke seed.** ASR gaps of a few points vary from seed to seed; run `FULL=1` before
#   quoting them.
