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
import torch
from IPython.display import Markdown, display

from fedunlearn import catalog
from fedunlearn.data.digits import TRIGGER_PIXELS
from fedunlearn.data.profiles import make_profiles
from fedunlearn.incremental.kd_unlearning import (
    REPAIR_MIN_GAIN,
    KDConfig,
    KnowledgeDistillationUnlearning,
)
from fedunlearn.results import Results
from fedunlearn.unlearning.compare import BACKDOOR_MARGIN, LM_HEADLINE_METRICS, compare
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

entry = catalog.get("kd-unlearning")
claims = entry.claims
results = Results("kd-unlearning")
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# The paper shows its results in figures (MNIST, CIFAR-10, GTSRB; backdoor accuracy and test
# accuracy before and after unlearning); no number is quoted here.
#
# ## Setup
#
# - **Data.** scikit-learn's 8x8 digits **stand in for MNIST**. Scenario `digits-backdoor`:
#   10 IID clients, FedAvg for 20 rounds (40 with `FULL=1`), every client in every round; client 0
#   adds triggered copies (a bright 2x2 patch bottom-right) labelled 0 to half of its images.
#   Forget client 0.
# - **Server's unlabeled data.** The paper's server uses unlabeled data of its own. Here the
#   digits test split is cut in two at random (seeded): **one half is the server's unlabeled
#   inputs (`Scenario.server_inputs`, labels dropped), the other half is the evaluation set of
#   every model in this notebook** (so test accuracy and ASR are measured on images the server
#   never saw). An ablation distills on **uniform noise** images instead, to show what the data
#   choice does.
# - **History.** Every round's client updates are kept (`record_every = 1`, required).
# - **Method.** `kd`: subtraction, then distillation with the default `KDConfig` ($T = 2$,
#   10 epochs, SGD lr 0.05, batch 32; not the paper's values, which are not sourced here; chosen
#   before looking at $\theta_r$). Distillation is the package's one training loop run on the
#   server with the `distillation` objective. Ablations: `kd-subtract-only` (subtraction alone),
#   `kd` with 1 to 20 distillation epochs, and `kd-on-noise` (below).
# - **Controls.** $\theta_o$ (do nothing), `continue-fedavg` (5 more rounds without client 0),
#   and the referee $\theta_r$: FedAvg from the same initialisation without client 0. The
#   comparison engine (`compare`) trains (or takes from the cache) $\theta_o$, $\theta_r$ and a
#   second retraining with another seed that sets the noise floor of each metric.

# %%
FULL = os.environ.get("FULL") == "1"
SEEDS = (0, 1, 2) if FULL else (0,)
torch.set_num_threads(1)  # tiny models: one thread is faster, and fair between methods
METRICS = ["test_acc", "retain_acc", "forget_acc", "asr", "mia_auc"]
EPOCHS = (1, 2, 5, 10, 20)  # distillation epochs of the repair curve (10 is KDConfig's default)


def noise_like(inputs: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform noise images in [0, 1], as many as ``inputs`` (seeded)."""
    return torch.rand(inputs.shape, generator=torch.Generator().manual_seed(seed))


class KDOnNoise(KnowledgeDistillationUnlearning):
    """`kd`, with the server's digits replaced by as many uniform noise images (this notebook's
    ablation of the server's data; not a registered method)."""

    name = "kd-on-noise"

    def unlearn(self, run, request, counter):
        noise = {"x": noise_like(run.server_inputs["x"], run.config.seed)}
        return super().unlearn(dataclasses.replace(run, server_inputs=noise), request, counter)


def kd(epochs: int, on_noise: bool = False) -> KnowledgeDistillationUnlearning:
    """`kd` (or `kd-on-noise`) with ``epochs`` distillation epochs."""
    return (KDOnNoise if on_noise else KnowledgeDistillationUnlearning)(KDConfig(epochs=epochs))


scenario = build_scenario("digits-backdoor", seed=SEEDS[0], full=FULL)  # for the setup facts below
SIZE = "`FULL=1`" if FULL else "smoke size"
regime = f"`digits-backdoor` at seed(s) {', '.join(map(str, SEEDS))}, {scenario.config.rounds} rounds"
print(f"{SIZE}: {regime}; evaluation on {len(scenario.test['y'])} test images, "
      f"the server holds {len(scenario.server_inputs['x'])} unlabeled ones")

# %% [markdown]
# ## Run
#
# One comparison: the controls, the subtraction, `kd` with each number of distillation epochs
# and the same on noise, every model evaluated once and paired with $\theta_r$ of the same seed.

# %%
cmp = compare("digits-backdoor",
              ["continue-fedavg", "kd-subtract-only", *(kd(e) for e in EPOCHS), *(kd(e, True) for e in EPOCHS)],
              seeds=SEEDS, full=FULL, progress=False)
SHOWN = ["continue-fedavg", "kd-subtract-only", "kd", "kd-on-noise"]
display(Markdown(results.add("table", cmp.table(METRICS, SHOWN))))

# %% [markdown]
# What each method cost: `kd` works on the server only (`server_steps`: the subtraction, then one
# per distillation mini-batch).

# %%
kd_costs = [row["methods"]["kd"]["cost"] for row in cmp.per_seed]
server_steps = max(c["server_steps"] for c in kd_costs)
client_steps = max(c["client_steps"] for c in kd_costs)
client_bytes = max(c["bytes_communicated"] for c in kd_costs)
print(f"kd: {client_steps} client steps, {client_bytes} bytes exchanged, {server_steps} server steps")

# %% [markdown]
# ## The repair as it proceeds
#
# Test accuracy and attack success rate after 0 (subtraction only), 1, 2, 5, 10 and 20
# distillation epochs, distilling on the server's half of the test split or on uniform noise
# (median over seeds). Dashed lines: the retrained model $\theta_r$.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
for on_noise, data_name in ((False, "test half"), (True, "noise")):
    labels = ["kd-subtract-only"] + [kd(e, on_noise).label for e in EPOCHS]
    for ax, metric in zip(axes, ("test_acc", "asr"), strict=True):
        ax.plot((0, *EPOCHS), [cmp.value(label, metric) for label in labels], "o-", label=f"distill on {data_name}")
for ax, metric, name in ((axes[0], "test_acc", "test accuracy"), (axes[1], "asr", "backdoor ASR")):
    ax.axhline(cmp.value("retrain", metric), color="grey", linestyle="--", label="θr")
    ax.set(xlabel="distillation epochs", ylabel=name, ylim=(0, 1))
axes[0].legend(loc="lower right")
axes[1].legend(loc="upper left")
fig.tight_layout()
plt.show()

# %% [markdown]
# Why noise brings the backdoor back: the trigger is four bright pixels. Uniform noise in
# $[0, 1]$ has bright pixels there in a fair share of samples, the teacher $\theta_o$ (which
# carries the backdoor) answers "0" on those, and the student learns that answer. The share of
# noise images whose four trigger pixels are all above 0.5, versus the server's digits
# (seed of the first run):


# %%
def trigger_like(x: torch.Tensor) -> float:
    """Share of images whose four trigger pixels are all above 0.5."""
    return float((x[:, list(TRIGGER_PIXELS)] > 0.5).all(dim=1).float().mean())


server_x = scenario.server_inputs["x"]
noise_share = trigger_like(noise_like(server_x, scenario.config.seed))
digits_share = trigger_like(server_x)
print(f"noise: {noise_share:.1%}   server digits: {digits_share:.1%}")
display(Markdown(results.add("noise", (
    f"Distilling on uniform noise instead, {noise_share:.1%} of the inputs look like the trigger (all four "
    f"trigger pixels above 0.5; {digits_share:.1%} of the server's digits do). The ASR of `kd-on-noise` is "
    f"{cmp.value('kd-on-noise', 'asr'):.1%} (θ_r: {cmp.value('retrain', 'asr'):.1%}) and its test accuracy "
    f"{cmp.value('kd-on-noise', 'test_acc'):.1%}, against {cmp.value('kd', 'test_acc'):.1%} when distilling "
    f"on digits"))))

# %% [markdown]
# ## Reported vs reproduced
#
# Pass rules: the retrain band of each metric (`Comparison.equivalent`: the gap to $\theta_r$
# within max(tolerance, 2σ_r)), and for the repair, `kd`'s test accuracy at least
# `REPAIR_MIN_GAIN` above that of the subtraction alone (our criterion; the paper shows figures).
# The backdoor comparison counts only if $\theta_o$'s ASR is more than `BACKDOOR_MARGIN` above
# $\theta_r$'s.


# %%
def points(value: float) -> str:
    """An accuracy difference in points."""
    return f"{100 * value:+.1f} points"


def verdict(holds: bool, informative: bool = True) -> str:
    return "not informative here" if not informative else ("holds" if holds else "does not hold")


no_clients = client_steps == 0 and client_bytes == 0
carries_backdoor = (cmp.informative("asr")
                    and cmp.value("original", "asr") - cmp.value("retrain", "asr") > BACKDOOR_MARGIN)
backdoor_removed = cmp.equivalent("kd", "asr")
accuracy_restored = cmp.equivalent("kd", "test_acc")
gain = cmp.gap("kd", "test_acc") - cmp.gap("kd-subtract-only", "test_acc")
repair_needed = gain >= REPAIR_MIN_GAIN
band = cmp.aggregate["band"]
criteria = [
    ("no client takes part", "0 client steps and 0 bytes exchanged",
     f"{client_steps} client steps, {client_bytes} bytes; {server_steps} server steps (1 subtraction + "
     f"{server_steps - 1} distillation mini-batches)", verdict(no_clients)),
    ("backdoor removed", f"ASR within ±{100 * band['asr']:.1f} points of θ_r (θ_o more than "
     f"{100 * BACKDOOR_MARGIN:.0f} points above)",
     f"`kd` {cmp.value('kd', 'asr'):.1%}, θ_r {cmp.value('retrain', 'asr'):.1%}, "
     f"θ_o {cmp.value('original', 'asr'):.1%}", verdict(backdoor_removed, carries_backdoor)),
    ("accuracy restored", f"test accuracy within ±{100 * band['test_acc']:.1f} points of θ_r",
     f"`kd` {cmp.value('kd', 'test_acc'):.1%} vs θ_r {cmp.value('retrain', 'test_acc'):.1%} "
     f"({points(cmp.gap('kd', 'test_acc'))})", verdict(accuracy_restored)),
    ("subtraction alone loses much more", f"`kd` at least {100 * REPAIR_MIN_GAIN:.0f} points above "
     "`kd-subtract-only`", f"`kd-subtract-only` {cmp.value('kd-subtract-only', 'test_acc'):.1%} "
     f"({points(cmp.gap('kd-subtract-only', 'test_acc'))} from θ_r); `kd` gains {points(gain)}; the "
     f"subtraction's ASR: {cmp.value('kd-subtract-only', 'asr'):.1%}", verdict(repair_needed)),
]
display(Markdown(results.add("criteria", "\n".join(
    ["| criterion | pass rule | reproduced | verdict |", "|---|---|---|---|"]
    + [f"| {' | '.join(row)} |" for row in criteria]))))
display(Markdown(results.claims("claims", [
    (claims[0], criteria[0][2], criteria[0][3]),
    (claims[1], f"ASR {criteria[1][2]}; test accuracy {criteria[2][2]}; subtraction alone: {criteria[3][2]}",
     verdict(backdoor_removed and accuracy_restored and repair_needed, carries_backdoor)),
])))

# %% [markdown]
# The controls: continuing FedAvg without client 0 should *not* remove the backdoor, and
# membership inference on client 0 separates $\theta_o$ from $\theta_r$ only if the scenario lets it.

# %%
mia_note = "informative" if cmp.informative("mia_auc") else "not informative"
display(Markdown(results.add("controls", (
    f"`continue-fedavg` (5 more rounds without client 0) keeps an ASR of {cmp.value('continue-fedavg', 'asr'):.1%}"
    f" ({'within' if cmp.equivalent('continue-fedavg', 'asr') else 'outside'} the retrain band). Membership "
    f"inference on client 0 is {mia_note} in this scenario: θ_o and θ_r have LOSS AUCs of "
    f"{cmp.value('original', 'mia_auc'):.2f} and {cmp.value('retrain', 'mia_auc'):.2f}"))))

# %% [markdown]
# ## The same method on a federated LoRA language model (profiles-client)
#
# No paper in this family ran it there. Scenario `profiles-client`: a tiny Llama-style model
# (pretrained once on other fictitious people); clients fine-tune LoRA adapters with FedAvg on
# question-answer records about their people (one canary secret each); forget client 0. At smoke
# size the federation is cut to its first 6 rounds, the smoke cut every entry notebook shares
# (`LM_SMOKE`; `FULL=1`: the scenario's 4 clients and 15 rounds); one seed either way. The
# federated state is the adapters, so teacher and student are two adapter states on the same
# frozen base model. The server's unlabeled text
# (`Scenario.server_inputs`): **the questions only (no answers) about 40 fresh fictitious people**
# (ids disjoint from every federated, held-out and pretraining person). Distillation matches the
# next-token distribution of $\theta_o$ at every position of those questions, Adam lr $10^{-3}$,
# 5 epochs, batch 16, $T = 2$ (chosen before looking at $\theta_r$).

# %%
LM_KD = {"optimizer": "adam", "lr": 1e-3, "epochs": 5, "batch_size": 16}
LM_SIZE = {} if FULL else LM_SMOKE
LM_METRICS = [*LM_HEADLINE_METRICS, "retain_logprob", "forget_logprob"]
lm = compare("profiles-client", ["kd-subtract-only", ("kd", LM_KD)], seeds=(0,), progress=False, **LM_SIZE)
lm_kd = lm.methods[1]
display(Markdown(results.add("lm_table", lm.table(LM_METRICS))))
lm_scenario = build_scenario("profiles-client", seed=0)


def canary_name(prompt: str) -> str:
    return prompt.split("secret code of ")[1].split("?")[0]


scenario_names = {canary_name(r.prompt) for r in lm_scenario.records.values() if r.kind == "canary"}
server_names = {p.name for p in make_profiles(40, seed=1234, first_id=2_000_000)}  # as Scenario.server_inputs
lm_regime = ("`profiles-client` at seed 0, " + ("the scenario's 4 clients and 15 rounds" if FULL
                                                else f"its 4 clients and first {LM_SMOKE['rounds']} rounds"))
results.add("lm_server", (
    f"The server's text: {len(lm_scenario.server_inputs['input_ids'])} questions about {len(server_names)} people; "
    f"names shared with federated or held-out people by chance: {len(server_names & scenario_names)}"))
print(results.items["lm_server"])

# %% [markdown]
# Read the table against $\theta_r$, not against 0: `forget_logprob`, `canary_exposure` and
# `forget_el` of a model that never saw client 0 are what forgetting should reach (beside them, the
# same measures on unseen people: the reference); forget quality is TOFU's KS p-value against
# $\theta_r$ (≥ 0.05 reads as forgotten) and PrivLeak is MUSE's relative membership gap (0 =
# retraining's); `model_utility`, `retain_logprob` and `test_logprob` are utility (see
# [Evaluating unlearning](../../evaluating.md)). The same reading, computed from this run:


# %%
def side(label: str, metric: str) -> str:
    gap = lm.gap(label, metric)
    return f"{'above' if gap > 0 else 'below'} θ_r by {abs(gap):.3f}"


reading = [f"- `{name}`: forget_logprob {side(label, 'forget_logprob')}; canary_exposure "
           f"{side(label, 'canary_exposure')}; forget_el {side(label, 'forget_el')}; forget quality "
           f"{lm.value(label, 'forget_quality'):.3f}; PrivLeak {lm.value(label, 'privleak'):+.1f}; model_utility "
           f"{side(label, 'model_utility')}; test_logprob {side(label, 'test_logprob')}."
           for name, label in (("kd-subtract-only", "kd-subtract-only"), ("kd", lm_kd))]
display(Markdown(results.add("lm_reading", "\n".join(reading))))
display(Markdown("Regime of every number above: " + results.add("regime", f"{SIZE} ({regime}; the language "
                                                                      f"model: {lm_regime})")))

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
#   from the task's own distribution (half the test split). Distilling on uniform noise shows
#   what a poor choice does: the teacher *is* the backdoored model, and any unlabeled input
#   resembling the trigger transfers it. A server whose unlabeled data may hold triggered inputs
#   cannot use this method to remove a backdoor.
# - **Retrain-equivalent on two metrics is not exact unlearning.** The student is trained to
#   imitate $\theta_o$, which knew client 0; on clean inputs that knowledge is mostly shared with
#   the other clients, so little of it is client-specific, but nothing here bounds what comes
#   back.
# - **Smoke size is one seed.** Run with `FULL=1` for three seeds before quoting a gap.

# %%
print(f"saved {len(results.items)} results to {results.save()}")
