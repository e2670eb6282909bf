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
# Smoke size by default (one seed, about a minute on two cores); `FULL=1` runs three seeds and
# twice as many rounds.

# %% [markdown]
# ## The claim (reported)

# %%
import dataclasses
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from fedunlearn import catalog
from fedunlearn.incremental.fedrecover import FedRecover, FedRecoverConfig
from fedunlearn.unlearning.base import run_method, train_federation
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.bench import comparison_markdown, evaluate_methods
from fedunlearn.unlearning.scenarios import build_scenario

entry = catalog.get("fedrecover")
claims = entry.claims
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# ## Setup
#
# - **Data.** scikit-learn's 8x8 digits **stand in for MNIST** (nothing is downloaded).
# - **Federation.** Scenario `digits-poisoned`: 10 IID clients, FedAvg over a 64-64-10 MLP,
#   40 rounds (80 with `FULL=1`), every client in every round. Clients 0 and 1 (20%, the paper
#   uses up to 40 of 100 malicious clients) add triggered copies of half their images labelled
#   0: a backdoor. The history keeps every round (`record_every=1`, which FedRecover requires).
# - **Request.** The detector is assumed perfect: forget clients 0 and 1.
# - **Methods.** $\theta_o$ (do nothing), train-from-scratch $\theta_r$ (the referee),
#   continue-FedAvg (negative control), FedRecover at its defaults ($s = 2$, $T_w = 3$,
#   $T_c = 15$, $T_f = 2$, $\alpha = 0$), the ablation without correction (estimates after
#   warm-up only) and two knob settings that buy accuracy with client work. The knobs were fixed
#   before looking at $\theta_r$; the variants show the paper's accuracy-cost trade-off, they are
#   not a tuning sweep.
# - **Cost.** $\rho_{\text{steps}}$ = client SGD steps of the method / of train-from-scratch; the
#   server's estimated updates are counted separately.

# %%
FULL = os.environ.get("FULL") == "1"
SEEDS = (0, 1, 2) if FULL else (0,)
torch.set_num_threads(1)
VARIANTS = {
    "fedrecover": get_method("fedrecover"),
    "fedrecover-no-correction": get_method("fedrecover-no-correction"),
    "fedrecover, T_f=5": FedRecover(FedRecoverConfig(final_rounds=5)),
    "fedrecover, α=1e-4": FedRecover(FedRecoverConfig(tolerance_rate=1e-4)),
}
CONTROLS = ("do-nothing", "retrain", "continue-fedavg")

# %% [markdown]
# ## Run

# %%
rows: dict[tuple[int, str], dict] = {}
for seed in SEEDS:
    scenario = build_scenario("digits-poisoned", seed=seed, full=FULL)
    run = train_federation(scenario.task, scenario.clients, scenario.config)
    methods = {name: get_method(name) for name in CONTROLS} | VARIANTS
    for name, method in methods.items():
        result = run_method(method, run, scenario.request)
        rows[seed, name] = {**evaluate(scenario, result.state, run.model),
                            "client_steps": result.cost.client_steps,
                            "server_steps": result.cost.server_steps}
    for name in methods:
        retrain_steps = rows[seed, "retrain"]["client_steps"]
        rows[seed, name]["rho_steps"] = rows[seed, name]["client_steps"] / retrain_steps
names = list(CONTROLS) + list(VARIANTS)


def median(name: str, key: str) -> float:
    return float(np.median([rows[s, name][key] for s in SEEDS]))


def gap(name: str, key: str) -> list[float]:
    """Paired gaps to the oracle of the same seed."""
    return [rows[s, name][key] - rows[s, "retrain"][key] for s in SEEDS]


def fmt_gap(values: list[float], scale: float = 100) -> str:
    if len(values) == 1:
        return f"{scale * values[0]:+.1f}"
    spread = f"{scale * min(values):+.1f}…{scale * max(values):+.1f}"
    return f"{scale * np.median(values):+.1f} ({spread})"


header = ("| model | test acc | ASR | Δ test acc vs θ_r (pts) | Δ ASR vs θ_r (pts) | ρ_steps "
          "| server estimates |")
lines = [header, "|---|---|---|---|---|---|---|"]
for name in names:
    lines.append(
        f"| {name} | {median(name, 'test_acc'):.3f} | {median(name, 'asr'):.3f} "
        f"| {fmt_gap(gap(name, 'test_acc'))} | {fmt_gap(gap(name, 'asr'))} "
        f"| {median(name, 'rho_steps'):.3f} | {median(name, 'server_steps'):.0f} |")
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Accuracy against client work
#
# Each point is one method (median over seeds): how far from train-from-scratch it lands,
# against the share of train-from-scratch client steps it needed. The paper's promise is the
# lower-left corner.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
for ax, key, label in ((axes[0], "test_acc", "|Δ test accuracy| (pts)"),
                       (axes[1], "asr", "ASR − ASR(θ_r) (pts)")):
    for name in names:
        if name == "retrain":
            continue
        values = gap(name, key)
        y = 100 * float(np.median(np.abs(values) if key == "test_acc" else values))
        ax.scatter(median(name, "rho_steps"), y)
        ax.annotate(name, (median(name, "rho_steps"), y), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.axhline(1 if key == "test_acc" else 2, color="grey", linewidth=0.8, linestyle="--")
    ax.axvline(0.2, color="grey", linewidth=0.8, linestyle=":")
    ax.set(xlabel="ρ_steps (client steps / train-from-scratch)", ylabel=label, xlim=(-0.05, 1.1))
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Reported vs reproduced


# %%
def holds(condition: bool) -> str:
    return "holds" if condition else "**does not hold**"


acc_gaps, asr_gaps = gap("fedrecover", "test_acc"), gap("fedrecover", "asr")
rho = [rows[s, "fedrecover"]["rho_steps"] for s in SEEDS]
ablation_worst = [max(abs(a), abs(b)) for a, b in zip(gap("fedrecover-no-correction", "test_acc"),
                                                      gap("fedrecover-no-correction", "asr"))]
default_worst = [max(abs(a), abs(b)) for a, b in zip(acc_gaps, asr_gaps)]
clearly_worse = all(a >= d + 0.05 for a, d in zip(ablation_worst, default_worst))
table = [
    "| claim | reported | reproduced (digits, 10 clients, 2 backdoored) | criterion |",
    "|---|---|---|---|",
    (f"| {claims[0].claim} | {claims[0].reported} | Δ test acc {fmt_gap(acc_gaps)} pts, "
     f"Δ ASR {fmt_gap(asr_gaps)} pts (θ_o ASR {median('do-nothing', 'asr'):.2f}) "
     f"| within 1 pt: {holds(max(map(abs, acc_gaps)) <= 0.01)}; "
     f"ASR within 2 pts: {holds(max(asr_gaps) <= 0.02)} |"),
    (f"| {claims[1].claim} | {claims[1].reported} | {100 * (1 - np.median(rho)):.0f}% "
     f"(ρ_steps {np.median(rho):.3f}) | ≥ 80%: {holds(max(rho) <= 0.2)} |"),
    (f"| {claims[2].claim} | {claims[2].reported} | worst gap without corrections "
     f"{fmt_gap(ablation_worst)} pts vs {fmt_gap(default_worst)} pts with them "
     f"| clearly worse: {holds(clearly_worse)} |"),
]
display(Markdown("\n".join(table)))

# %% [markdown]
# Where the ASR does not match: L-BFGS approximates the Hessian by $\sigma I$ outside the span
# of its $s$ stored pairs, so $\tilde{\mathbf H}(\hat w_t - \bar w_t)$ partly pulls the
# recovered model back towards the *poisoned* trajectory, including along the trigger's
# weights, which the clean clients' data barely constrain. Exact rounds (final tuning,
# abnormality fixing) wash that out; more of them (the $T_f = 5$ and $\alpha = 10^{-4}$
# variants) trade client work for a lower ASR.

# %% [markdown]
# ## The same method on a federated LoRA language model
#
# Scenario `profiles-client`: a tiny Llama-style model with LoRA adapters trained by FedAvg over
# clients holding question-answer records about fictitious people; forget client 0. No
# experiment in the paper covers language models; here the "model" FedRecover re-runs is the
# adapter, the clients train with local Adam, and the forgotten client is honest (nothing is
# poisoned), so the question is only whether estimated updates land near train-from-scratch.

# %%
lm = build_scenario("profiles-client", seed=0, full=FULL)
lm.config = dataclasses.replace(lm.config, record_every=1)
lm_run = train_federation(lm.task, lm.clients, lm.config)
lm_rows = evaluate_methods(lm, lm_run, ("retrain", "do-nothing", "fedrecover", "fedrecover-no-correction"))
lm_metrics = [m for m in ("test_logprob", "retain_logprob", "forget_logprob", "mia_auc_loss")
              if m in lm_rows["retrain"][0]]
display(Markdown(comparison_markdown(lm_rows, lm_metrics)))

# %% [markdown]
# Read `forget_logprob` and the membership AUC against $\theta_r$, not against zero: a retrained
# adapter still answers in the right format. The LM federation runs few rounds, so FedRecover's
# fixed warm-up and final-tuning rounds are a large share of them and $\rho_{\text{steps}}$ is
# far from the digits value; with local Adam the update is not a gradient step, so the L-BFGS
# estimate has less to stand on. The table shows what happens for this seed.
#
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
