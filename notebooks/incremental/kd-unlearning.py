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
# # Federated unlearning with knowledge distillation: subtract, then distill
#
# Wu, Zhu & Mitra (2022) forget a client on the server alone: subtract the client's stored
# updates from the final model (weighted as FedAvg added them), which removes its contribution
# but damages the model, then repair the damage by distilling the original model $\theta_o$
# (teacher) into the subtracted model (student) on unlabeled data the server holds. This notebook
# checks, at laptop scale, that the backdoor of a malicious client disappears, that the repair
# brings test accuracy back near the retrained model $\theta_r$, and that no client works.
#
# Runs at smoke size by default (one seed, about a minute on two CPU cores); `FULL=1` runs three
# seeds and the scenarios' larger configuration.

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
from fedunlearn.data.digits import TRIGGER_PIXELS
from fedunlearn.data.profiles import make_profiles
from fedunlearn.incremental.kd_unlearning import (
    KDConfig,
    KnowledgeDistillationUnlearning,
    SubtractOnly,
)
from fedunlearn.unlearning.base import run_method, train_federation
from fedunlearn.unlearning.controls import ContinueFedAvg, DoNothing, Retrain
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.scenarios import build_scenario, question_inputs

entry = catalog.get("kd-unlearning")
claims = entry.claims
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# The paper shows its results in figures (MNIST, CIFAR-10, GTSRB; backdoor accuracy and test
# accuracy before and after unlearning); no number is quoted here.
#
# ## Setup
#
# - **Data.** scikit-learn's 8x8 digits **stand in for MNIST**. Scenario `digits-backdoor`:
#   10 IID clients, FedAvg for 20 rounds, every client in every round; client 0 adds triggered
#   copies (a bright 2x2 patch bottom-right) labelled 0 to half of its images. Forget client 0.
# - **Server's unlabeled data.** The paper's server uses unlabeled data of its own. Here the
#   digits test split is cut in two at random (seeded): **one half is the server's unlabeled
#   inputs (labels dropped), the other half is the evaluation set of every model in this
#   notebook** (so test accuracy and ASR are measured on images the server never saw). A second
#   run distills on **uniform noise** images instead, to show what the data choice does.
# - **History.** Every round's client updates are kept (`record_every = 1`, required).
# - **Method.** `kd`: subtraction, then distillation with the default `KDConfig` ($T = 2$,
#   10 epochs, SGD lr 0.05, batch 32; not the paper's values, which are not sourced here; chosen
#   before looking at $\theta_r$). Ablation `kd-subtract-only`: subtraction alone.
# - **Controls.** $\theta_o$ (do nothing), `continue-fedavg` (5 more rounds without client 0),
#   and the referee $\theta_r$: FedAvg from the same initialisation without client 0.

# %%
FULL = os.environ.get("FULL") == "1"
SEEDS = (0, 1, 2) if FULL else (0,)
torch.set_num_threads(1)  # tiny models: one thread is faster, and fair between methods

rows, curves = [], {}
EPOCH_GRID = (0, 1, 2, 5, 10, 20)
for seed in SEEDS:
    sc = build_scenario("digits-backdoor", seed=seed, full=FULL)
    unlabeled = sc.server_inputs  # half of the digits test split, labels dropped; sc.test is the other half
    noise = {"x": torch.rand(len(unlabeled["x"]), 64, generator=torch.Generator().manual_seed(seed))}
    run = train_federation(sc.task, sc.clients, dataclasses.replace(sc.config, record_every=1))
    methods = {
        "θo (do nothing)": DoNothing(),
        "retrain θr": Retrain(),
        "continue-fedavg": ContinueFedAvg(),
        "kd-subtract-only": SubtractOnly(),
        "kd": KnowledgeDistillationUnlearning(KDConfig(seed=seed), unlabeled),
        "kd on noise": KnowledgeDistillationUnlearning(KDConfig(seed=seed), noise),
    }
    for name, method in methods.items():
        result = run_method(method, run, sc.request)
        rows.append({"seed": seed, "method": name, **evaluate(sc, result.state, run.model),
                     "client_steps": result.cost.client_steps,
                     "server_steps": result.cost.server_steps})
    # the repair as it proceeds: the same method with more and more distillation epochs
    for data_name, data in (("test half", unlabeled), ("noise", noise)):
        for epochs in EPOCH_GRID:
            method = (SubtractOnly() if epochs == 0 else
                      KnowledgeDistillationUnlearning(KDConfig(epochs=epochs, seed=seed), data))
            m = evaluate(sc, run_method(method, run, sc.request).state, run.model)
            curves.setdefault(data_name, []).append((seed, epochs, m["test_acc"], m["asr"]))
print(f"{len(SEEDS)} seed(s); evaluation on {len(sc.test['y'])} test images, "
      f"server holds {len(unlabeled['x'])} unlabeled ones")

# %% [markdown]
# One row per method (median over seeds; at smoke size, one seed). `ρ_steps` = client steps of
# the method over client steps of retraining.


# %%
def table(rows, names, metrics):
    retrain_steps = np.median([r["client_steps"] for r in rows if r["method"] == "retrain θr"])
    lines = ["| method | " + " | ".join(metrics) + " | client steps | ρ_steps | server steps |",
             "|---" * (len(metrics) + 4) + "|"]
    for name in names:
        mine = [r for r in rows if r["method"] == name]
        med = {k: float(np.median([r[k] for r in mine])) for k in [*metrics, "client_steps",
                                                                   "server_steps"]}
        cells = [f"{med[k]:.3f}" for k in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {med['client_steps']:.0f} | "
                     f"{med['client_steps'] / retrain_steps:.3f} | {med['server_steps']:.0f} |")
    return "\n".join(lines)


NAMES = ["θo (do nothing)", "retrain θr", "continue-fedavg", "kd-subtract-only", "kd", "kd on noise"]
display(Markdown(table(rows, NAMES, ["test_acc", "retain_acc", "forget_acc", "asr", "mia_auc"])))

# %% [markdown]
# ## The repair as it proceeds
#
# Test accuracy and attack success rate after 0 (subtraction only), 1, 2, 5, 10 and 20
# distillation epochs, distilling on the server's half of the test split or on uniform noise.
# Dashed lines: the retrained model $\theta_r$ (seed 0).

# %%
oracle = next(r for r in rows if r["method"] == "retrain θr" and r["seed"] == SEEDS[0])
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
for data_name, points in curves.items():
    points = np.array([p for p in points if p[0] == SEEDS[0]])
    axes[0].plot(points[:, 1], points[:, 2], "o-", label=f"distill on {data_name}")
    axes[1].plot(points[:, 1], points[:, 3], "o-", label=f"distill on {data_name}")
axes[0].axhline(oracle["test_acc"], color="grey", linestyle="--", label="θr")
axes[1].axhline(oracle["asr"], color="grey", linestyle="--", label="θr")
axes[0].set(xlabel="distillation epochs", ylabel="test accuracy", ylim=(0, 1))
axes[1].set(xlabel="distillation epochs", ylabel="backdoor ASR", ylim=(0, 1))
axes[0].legend(loc="lower right")
axes[1].legend(loc="upper left")
fig.tight_layout()
plt.show()

# %% [markdown]
# Why noise brings the backdoor back: the trigger is four bright pixels. Uniform noise in
# $[0, 1]$ has bright pixels there in a fair share of samples, the teacher $\theta_o$ (which
# carries the backdoor) answers "0" on those, and the student learns that answer. The share of
# noise images whose four trigger pixels are all above 0.5, versus digits images:

# %%
def trigger_like(x: torch.Tensor) -> float:
    return float((x[:, list(TRIGGER_PIXELS)] > 0.5).all(dim=1).float().mean())


print(f"noise: {trigger_like(noise['x']):.1%}   server digits: {trigger_like(unlabeled['x']):.1%}")

# %% [markdown]
# ## Reported vs reproduced

# %%
def paired(name: str, key: str) -> list[float]:
    return [next(r[key] for r in rows if r["method"] == name and r["seed"] == s)
            - next(r[key] for r in rows if r["method"] == "retrain θr" and r["seed"] == s)
            for s in SEEDS]


def span(values: list[float], scale: float = 100) -> str:
    v = [scale * x for x in values]
    if len(v) == 1:
        return f"{v[0]:+.1f}"
    return f"{np.median(v):+.1f} (min {min(v):+.1f}, max {max(v):+.1f})"


kd_steps = [r["client_steps"] for r in rows if r["method"] == "kd"]
asr_o = [r["asr"] for r in rows if r["method"] == "θo (do nothing)"]
lines = [
    "| criterion | reported | reproduced (digits-backdoor, paired with θr, points) |",
    "|---|---|---|",
    (f"| no client takes part | {claims[0].reported} "
    f"| client steps of `kd`: {max(kd_steps)}; server steps: "
    f"{int(np.median([r['server_steps'] for r in rows if r['method'] == 'kd']))} |"),
    (f"| backdoor removed (ASR in the retrain band, ±2 points) | {claims[1].reported} | θo ASR "
    f"{100 * np.median(asr_o):.1f}%; `kd` − θr: {span(paired('kd', 'asr'))} |"),
    (f"| accuracy restored (within 3 points of θr) | {claims[1].reported} | `kd` − θr test acc: "
    f"{span(paired('kd', 'test_acc'))} |"),
    (f"| subtraction alone loses much more | (the paper's motivation) | `kd-subtract-only` − θr "
    f"test acc: {span(paired('kd-subtract-only', 'test_acc'))} |"),
    (f"| (ours) distilling on noise | — | `kd on noise` − θr ASR: "
    f"{span(paired('kd on noise', 'asr'))}; test acc: {span(paired('kd on noise', 'test_acc'))} |"),
]
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## The same method on a federated LoRA language model (`profiles-client`)
#
# No paper in this family ran it there. Scenario `profiles-client`: a tiny Llama-style model
# (pretrained once on other fictitious people), 4 clients fine-tune LoRA adapters with FedAvg on
# question-answer records about their people (one canary secret each); forget client 0. The
# federated state is the adapters, so teacher and student are two adapter states on the same
# frozen base model. The server's unlabeled text: **the questions only (no answers) about 40
# fresh fictitious people** (ids disjoint from every federated, held-out and pretraining person;
# the held-out people used for evaluation are not among them). Distillation matches the next-token
# distribution of $\theta_o$ at every position of those questions, Adam lr $10^{-3}$, 5 epochs,
# $T = 2$ (chosen before looking at $\theta_r$). Kept small: one seed even with `FULL=1`.

# %%
lm = build_scenario("profiles-client", seed=0)
lm_run = train_federation(lm.task, lm.clients, dataclasses.replace(lm.config, record_every=1))
server_text = question_inputs(lm.task, people=40, seed=1234)


def canary_name(prompt: str) -> str:
    return prompt.split("secret code of ")[1].split("?")[0]


scenario_names = {canary_name(r.prompt) for r in lm.records.values() if r.kind == "canary"}
server_names = {p.name for p in make_profiles(40, seed=1234, first_id=2_000_000)}
lm_methods = {
    "θo (do nothing)": DoNothing(),
    "retrain θr": Retrain(),
    "kd-subtract-only": SubtractOnly(),
    "kd": KnowledgeDistillationUnlearning(
        KDConfig(optimizer="adam", lr=1e-3, epochs=5, batch_size=16), server_text),
}
lm_rows = []
for name, method in lm_methods.items():
    result = run_method(method, lm_run, lm.request)
    lm_rows.append({"seed": 0, "method": name, **evaluate(lm, result.state, lm_run.model),
                    "client_steps": result.cost.client_steps,
                    "server_steps": result.cost.server_steps})
LM_METRICS = ["test_logprob", "retain_logprob", "forget_logprob", "mia_auc_loss", "canary_exposure"]
display(Markdown(table(lm_rows, list(lm_methods), LM_METRICS)))
print(f"server text: {len(server_text['input_ids'])} questions about {len(server_names)} people; "
      f"names shared with federated or held-out people: {len(server_names & scenario_names)}")

# %% [markdown]
# Read the table against $\theta_r$, not against 0: `forget_logprob` and `canary_exposure` of a
# model that never saw client 0 are what forgetting should reach; `retain_logprob` and
# `test_logprob` are utility. Gaps to $\theta_r$ (method − θr):

# %%
lm_oracle = next(r for r in lm_rows if r["method"] == "retrain θr")
display(Markdown("\n".join(
    ["| method | " + " | ".join(LM_METRICS) + " |", "|---" * (len(LM_METRICS) + 1) + "|"]
    + [f"| {r['method']} | " + " | ".join(f"{r[k] - lm_oracle[k]:+.3f}" for k in LM_METRICS) + " |"
       for r in lm_rows if r["method"] != "retrain θr"])))

# %% [markdown]
# The same reading, computed from this run:

# %%
by_name = {r["method"]: r for r in lm_rows}


def side(name: str, key: str) -> str:
    gap = by_name[name][key] - lm_oracle[key]
    return f"{'above' if gap > 0 else 'below'} θr by {abs(gap):.3f}"


for name in ("kd-subtract-only", "kd"):
    print(f"{name}: forget_logprob {side(name, 'forget_logprob')}; "
          f"canary_exposure {side(name, 'canary_exposure')}; "
          f"retain_logprob {side(name, 'retain_logprob')}; test_logprob {side(name, 'test_logprob')}")

# %% [markdown]
# Questions about strangers never mention client 0's people, so distillation cannot hand their
# answers back from the teacher; they do not mention the retained clients' people either, so what
# the retained adapters knew about *them* can only come back in part, through what the teacher
# shares across people (answer format, general priors).
#
# ## What not to conclude
#
# - **Not the paper's setting.** 8x8 digits and a 64-unit MLP stand in for MNIST/CIFAR-10/GTSRB
#   and their CNNs; one trigger, one malicious client of ten. The paper's temperature, epochs and
#   learning rate are not sourced here; ours are a reasonable guess, not a reproduction of theirs.
# - **The server's data decides.** The repair works here because the server holds clean digits
#   from the task's own distribution (half the test split). Distilling on uniform noise repairs
#   accuracy less and carries the backdoor back: the teacher *is* the backdoored model, and any
#   unlabeled input resembling the trigger transfers it. A server whose unlabeled data may hold
#   triggered inputs cannot use this method to remove a backdoor.
# - **Retrain-equivalent on two metrics is not exact unlearning.** The student is trained to
#   imitate $\theta_o$, which knew client 0; on clean inputs that knowledge is mostly shared with
#   the other clients, so little of it is client-specific, but nothing here bounds what comes
#   back. Membership inference on client 0 is not informative in this scenario (θo and θr are
#   already close).
# - **Smoke size is one seed.** Run with `FULL=1` for three seeds before quoting a gap.
