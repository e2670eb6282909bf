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
# briefly ($r$ times a round's local epochs) from the model being rebuilt, and each stored
# update is replayed with its own length but the direction of that fresh *calibration* update.
# This notebook measures that on a backdoor-removal task against retraining from scratch, with
# the paper's ablation (*FedAccum*: replay the stored updates uncalibrated), then runs the same
# method on a federated LoRA language model, a setting the paper did not try.
#
# Smoke size by default (one seed, about a minute on two CPU cores); `FULL=1` runs three seeds
# with twice the rounds.

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
from fedunlearn.federated.costs import CostCounter, state_bytes
from fedunlearn.federated.loop import run_federation
from fedunlearn.incremental.federaser import storage_report
from fedunlearn.unlearning.base import run_method, train_federation
from fedunlearn.unlearning.evaluate import evaluate, gaps_to_oracle
from fedunlearn.unlearning.registry import get_method
from fedunlearn.unlearning.requests import split_clients
from fedunlearn.unlearning.bench import comparison_markdown, evaluate_methods
from fedunlearn.unlearning.scenarios import build_scenario

entry = catalog.get("federaser")
claims = entry.claims
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# ## Setup
#
# - **Data.** scikit-learn's bundled 8x8 digits **stand in for** the paper's MNIST (and its
#   Adult, Purchase and CIFAR-10 tasks): nothing is downloaded. Scenario `digits-backdoor`:
#   10 IID clients; client 0 adds trigger-patched copies of half its images labelled 0 (a
#   backdoor); the request is to forget client 0. Removing a backdoor is one of the paper's
#   motivations (countering data poisoning); it gives a metric, the attack success rate (ASR),
#   that clearly separates $\theta_o$ from $\theta_r$.
# - **Federation.** FedAvg over all 10 clients, 20 rounds (40 with `FULL=1`), one local epoch
#   of SGD (batch 16, lr 0.1, momentum 0.5), a 64-64 MLP. The history keeps global states and
#   client updates every $\Delta t = 2$ rounds (`record_every=2`).
# - **FedEraser** at the paper's defaults: $\Delta t = 2$, calibration ratio $r = 0.5$ (half an
#   epoch of calibration), per-client calibration tensor by tensor, one calibrated update per
#   kept round. Chosen from the paper, not by looking at the retrained model.
# - **Controls.** $\theta_o$ (do nothing), continue FedAvg 5 rounds without client 0 (a negative
#   control), and the referee $\theta_r$: FedAvg from the same $w_0$ without client 0.

# %%
FULL = os.environ.get("FULL") == "1"
SEEDS = (0, 1, 2) if FULL else (0,)
DELTA_T = 2
torch.set_num_threads(1)  # a 64-unit MLP is faster on one thread than split over two

METHODS = ("do-nothing", "continue-fedavg", "federaser", "federaser-no-calibration")
METRICS = ("test_acc", "forget_acc", "forget_loss", "mia_auc", "asr")

# %% [markdown]
# ## Run
#
# For each seed: train $\theta_o$ with its history, retrain $\theta_r$, run every method from
# $\theta_o$ and its history, and evaluate all models with the one evaluation function. The
# retrain and FedEraser trajectories are also evaluated after every update for the plot below.

# %%
rows, curves, storage = {}, {}, {}
for seed in SEEDS:
    scenario = build_scenario("digits-backdoor", seed=seed, full=FULL)
    scenario.config = dataclasses.replace(scenario.config, record_every=DELTA_T)
    run = train_federation(scenario.task, scenario.clients, scenario.config)
    storage[seed] = run.history.storage_bytes() / state_bytes(run.final_state)
    oracle = run_method(get_method("retrain"), run, scenario.request)
    rows[seed, "retrain"] = (evaluate(scenario, oracle.state, run.model), oracle.cost)
    for name in METHODS:
        result = run_method(get_method(name), run, scenario.request)
        rows[seed, name] = (evaluate(scenario, result.state, run.model), result.cost)
    if seed == SEEDS[0]:
        # Test accuracy after each global update: retraining, FedEraser and its ablation.
        def accuracy(state, scenario=scenario, model=run.model):
            return scenario.task.accuracy(model, state, scenario.test["x"], scenario.test["y"])

        retained, _ = split_clients(run.clients, scenario.request)
        curves["retrain"] = []
        run_federation(run.task, retained, run.init_state, run.config, model=run.model,
                       on_round=lambda r, state: curves["retrain"].append((r + 1, accuracy(state))))
        for name in ("federaser", "federaser-no-calibration"):
            curves[name] = []
            get_method(name).reconstruct(
                run, scenario.request, CostCounter(),
                on_step=lambda r, state, name=name: curves[name].append((r + 1, accuracy(state))))
print(f"{len(SEEDS)} seed(s), {run.config.rounds} rounds, {len(run.history.kept_rounds)} kept")

# %% [markdown]
# One row per model. Gaps are paired with the oracle of the same seed; $\rho$ = cost of the
# method / cost of retraining (client SGD steps, bytes exchanged, wall time).


# %%
def span(values, sign: str = "+") -> str:
    """Median [min, max] over seeds (the value alone for one seed); ``sign=""`` drops the +."""
    values, fmt = list(values), f"{sign}.3f"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(np.median(values), fmt)} [{format(min(values), fmt)}, {format(max(values), fmt)}]"


def ratio(name: str, field: str, seed: int) -> float:
    return getattr(rows[seed, name][1], field) / getattr(rows[seed, "retrain"][1], field)


header = "| model | " + " | ".join(METRICS) + " | ρ_steps | ρ_comm | ρ_time |"
lines = [header, "|---" * (len(METRICS) + 4) + "|"]
for name in ("retrain", *METHODS):
    if name == "retrain":
        cells = [span((rows[s, name][0][m] for s in SEEDS), sign="") for m in METRICS]
    else:
        cells = [span(gaps_to_oracle(rows[s, name][0], rows[s, "retrain"][0])[m] for s in SEEDS)
                 for m in METRICS]
    costs = [span((ratio(name, f, s) for s in SEEDS), sign="")
             for f in ("client_steps", "bytes_communicated", "wall_time_s")]
    label = "θ_r (values)" if name == "retrain" else f"{name} (gap to θ_r)"
    lines.append(f"| {label} | " + " | ".join(cells + costs) + " |")
display(Markdown("\n".join(lines)))
print(f"history kept: {np.median(list(storage.values())):.1f} models' worth of tensors")

# %% [markdown]
# ## Test accuracy along the way
#
# Left: against the round of the original run that each update stands for. Right: against the
# number of global updates applied. FedEraser applies one update per kept round, so after the
# last kept round it has made $\lceil T/\Delta t \rceil$ updates. On the right it stays close
# to, and at or below, the retraining curve: it rebuilds a model trained for half the rounds.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
styles = {"retrain": "-", "federaser": "o-", "federaser-no-calibration": "s--"}
for name, points in curves.items():
    rounds, accs = zip(*points)
    axes[0].plot(rounds, accs, styles[name], label=name, markersize=4)
    axes[1].plot(range(1, len(accs) + 1), accs, styles[name], label=name, markersize=4)
axes[0].set(xlabel="round of the original run", ylabel="test accuracy", ylim=(0, 1))
axes[1].set(xlabel="global updates applied")
axes[0].legend(loc="lower right")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Reported vs reproduced

# %%
fe = [rows[s, "federaser"][0] for s in SEEDS]
accum = [rows[s, "federaser-no-calibration"][0] for s in SEEDS]
oracle_rows = [rows[s, "retrain"][0] for s in SEEDS]
speedup = [1 / ratio("federaser", "client_steps", s) for s in SEEDS]
time_speedup = [1 / ratio("federaser", "wall_time_s", s) for s in SEEDS]
asr_gap = [f["asr"] - o["asr"] for f, o in zip(fe, oracle_rows)]
acc_gap = [f["test_acc"] - o["test_acc"] for f, o in zip(fe, oracle_rows)]
calibration_gain = [f["test_acc"] - a["test_acc"] for f, a in zip(fe, accum)]
within = "within" if all(abs(g) <= 0.03 for g in acc_gap) else "not within"
# MIA separates θ_o from θ_r only if their AUCs differ by more than the 0.02 tolerance.
mia_spread = [rows[s, "do-nothing"][0]["mia_auc"] - rows[s, "retrain"][0]["mia_auc"] for s in SEEDS]
mia_note = "informative" if np.median(np.abs(mia_spread)) > 0.02 else "not informative here"
table = [
    "| claim | reported | reproduced (digits, 10 clients) |",
    "|---|---|---|",
    (
        f"| {claims[0].claim} | {claims[0].reported} | {np.median(speedup):.1f}x fewer client "
        f"steps (ρ_steps {1 / np.median(speedup):.2f}); {np.median(time_speedup):.1f}x wall time |"
    ),
    (
        f"| {claims[1].claim} | {claims[1].reported} | backdoor removed (ASR gap "
        f"{span(asr_gap)}); test accuracy gap {span(acc_gap)} ({within} 3 points); calibration adds "
        f"{span(calibration_gain)} test accuracy over FedAccum; MIA AUC {mia_note} "
        f"(θ_o − θ_r: {span(mia_spread)}) |"
    ),
]
display(Markdown("\n".join(table)))

# %% [markdown]
# The speed-up is a little above $\Delta t / r = 4$ because the first kept round needs no
# calibration (the stored round-0 updates were computed from $w_0$). The backdoor is gone as in
# retraining. Utility is not: the rebuilt model stands for $T/\Delta t$ rounds of training (right
# panel), and a federation that is still improving at round $T$ loses accuracy. Calibration
# matters a lot: replaying the stored updates from a different trajectory (FedAccum) collapses.
# The membership AUC of client 0's clean images barely separates $\theta_o$ from $\theta_r$ in this
# scenario (IID clients, one local epoch: little memorisation); the table says whether it does.

# %% [markdown]
# ## The same method on a federated LoRA language model
#
# Scenario `profiles-client`: a tiny Llama-style model (pretrained once, cached), LoRA adapters
# trained with FedAvg (local Adam, as FedIT's clients) over 4 clients holding question-answer
# records about fictitious people, canaries (secret codes) included; forget client 0 and every
# record of its people. No FedEraser experiment in the paper covers this. The history keeps
# adapter tensors only, which is where storage changes. To keep the smoke run short it trains
# half the scenario's rounds (10 instead of 20, still $\Delta t = 2$); `FULL=1` runs the
# scenario's full configuration.

# %%
lm = build_scenario("profiles-client", seed=0, full=FULL)
lm_rounds = lm.config.rounds if FULL else lm.config.rounds // 2
lm.config = dataclasses.replace(lm.config, record_every=DELTA_T, rounds=lm_rounds)
lm_run = train_federation(lm.task, lm.clients, lm.config)
lm_rows = evaluate_methods(lm, lm_run, ("retrain", "do-nothing", "federaser", "federaser-no-calibration"))
lm_metrics = [m for m in ("test_logprob", "retain_logprob", "forget_logprob", "mia_auc_loss",
                          "mia_auc_mink", "canary_exposure", "canary_extraction")
              if m in lm_rows["retrain"][0]]
display(Markdown(comparison_markdown(lm_rows, lm_metrics)))

# %% [markdown]
# How far each method moves from $\theta_o$ towards $\theta_r$: share of the gap
# $m(\theta_r) - m(\theta_o)$ closed (1 = lands on $\theta_r$, 0 = stays at $\theta_o$, above 1 =
# overshoots), for the metrics of the forgotten people on which $\theta_o$ and $\theta_r$ differ.

# %%
original, referee = lm_rows["do-nothing"][0], lm_rows["retrain"][0]
moved = [m for m in lm_metrics if m.startswith(("forget", "mia", "canary"))
         and abs(referee[m] - original[m]) > 0.05]
lines = ["| model | " + " | ".join(moved) + " |", "|---" * (len(moved) + 1) + "|"]
for name in ("federaser", "federaser-no-calibration"):
    values = lm_rows[name][0]
    shares = [(values[m] - original[m]) / (referee[m] - original[m]) for m in moved]
    lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in shares) + " |")
display(Markdown("\n".join(lines)))

report = storage_report(lm_run.history, lm_run.model)
display(Markdown(
    f"History storage: **{report['stored_bytes'] / 2**20:.1f} MiB** of adapter tensors; the same "
    f"history with full model weights ({report['full_model_bytes'] / 2**20:.2f} MiB per model) "
    f"would take **{report['full_history_bytes'] / 2**20:.1f} MiB**, {report['ratio']:.1f}x more."
))

# %% [markdown]
# Read the tables against retraining, not against zero: a retrained adapter still knows the
# format of the questions, so `forget_logprob` of $\theta_r$ sits near the held-out people's
# `test_logprob`, while $\theta_o$ has memorised client 0's people. `retain_logprob` is the price:
# the rebuilt adapter again stands for $T/\Delta t$ rounds, so it knows the remaining people less
# well than $\theta_r$ does. The storage saving of adapters is small here because the tiny model's
# rank-16 adapters on every linear layer are about a fifth of its size; for a 7B model with rank-8
# adapters on the query and value projections (about 4 M parameters against 6.7 B) it is about 1,600.

# %% [markdown]
# ## What not to conclude
#
# - **Not the paper's numbers.** Digits, a 64-unit MLP and 20 rounds stand in for four data
#   sets and their CNNs. The paper reports the 4x as an *expected* speed-up ($\Delta t / r$), which
#   counting client steps confirms by construction; it is not evidence of quality.
# - **The accuracy gap depends on convergence, not only on the method.** FedEraser rebuilds a
#   model of $T/\Delta t$ rounds. Where federated training converged long before $T$ (the paper's
#   curves), the gap vanishes; here it did not. Do not read the gap as "calibration fails", nor a
#   small gap elsewhere as "FedEraser equals retraining".
# - **Backdoor ASR near zero is easy to reach.** Any model that never saw client 0 in its
#   trajectory has no backdoor, including the much worse FedAccum replay. ASR says the influence is
#   gone, not that utility is preserved.
# - **MIA here is not informative** (θ_o and θ_r have similar AUCs); it cannot support a privacy
#   claim either way.
# - **One language-model seed, half the rounds at smoke size.** Run `FULL=1` before quoting any
#   LM number; the tiny model and synthetic people say nothing about a real LLM's knowledge.
