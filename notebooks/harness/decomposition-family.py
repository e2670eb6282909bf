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
# # The model-decomposition family side by side
#
# Methods of the [model-decomposition family](../../taxonomy.md#decomposition) pay **up front**:
# they structure training so that a contribution lives in a part that can be dropped or retrained
# alone (a shard of clients, a cluster, a per-client adapter, an auxiliary head, prunable
# channels, a sparse adapter on a few layers). Forgetting is then exact, or cheap. This page puts
# both sides of that trade in one table, per method:
#
# - **Unlearning cost**: client steps of the unlearning itself, and ρ_steps, their ratio to the
#   retraining the method is judged against (for a method that trains its own way, that retraining
#   is *its* training without the forgotten data, marked † in the tables; otherwise θ_r, FedAvg
#   retrained from scratch).
# - **Exactness**: whether the method claims bit-for-bit equality with its retraining (its tests
#   assert it), and whether its forgetting metric lands in the retrain band.
# - **Up-front cost**: client steps of its training phase relative to FedAvg's, and the utility of
#   the model it serves *before any request* minus FedAvg's θ_o (what the structure costs).
# - **Storage**: what it keeps beyond the served model (shard checkpoints, adapters, training
#   history), in model sizes.
#
# Each method runs on the scenario its entry uses and with its entry's settings (KNOT with two
# clusters on the four-client language model).
#
# Beside them, the family's language-model baseline, **task-vector negation** (Ilharco et al.,
# ICLR 2023, in MUSE's unlearning form): fine-tune θ_o further on the forgotten data and subtract
# α times that step. It pays nothing up front and offers no exactness.
#
# Computed when the site is built, by the comparison engine of `fedunlearn bench`, each method with
# its entry's defaults; nothing here is typed in. Smoke size: seed 0 (the entries' own seed, so
# their runs are reused); `FULL=1` runs three seeds and the scenarios' full size.

# %% tags=["hide-input"]
import os
import statistics

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from fedunlearn import catalog
from fedunlearn.decomposition.task_vector import ALPHA_GRID
from fedunlearn.unlearning.compare import LM_HEADLINE_METRICS, compare
from fedunlearn.unlearning.registry import get_method, methods_serving
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

torch.set_num_threads(1)
FULL = os.environ.get("FULL") == "1"
FAMILY = "decomposition"
SEEDS = [0, 1, 2] if FULL else [0]
LM_SIZE = {} if FULL else LM_SMOKE

members = [name for entry in catalog.entries() if entry.family == FAMILY for name in entry.methods]
controls = list(catalog.family_controls().get(FAMILY, ()))
#: Each scenario of the page, the forgetting metric its summary judges, its utility metric, and the
#: family's methods compared there, as their entries run them (every member appears at least once).
SECTIONS = {
    "digits-backdoor": ("asr", "test_acc", ["sisa", "fused"]),
    "digits-client": ("forget_acc", "test_acc", ["knot"]),
    "digits-class-cnn": ("forget_acc", "test_acc", ["class-pruning", "class-pruning-finetune-only"]),
    "digits-class-aux": ("forget_acc", "test_acc", ["fedau"]),
    "profiles-client": ("canary_exposure", "model_utility", ["per-client-adapters", "fused", ("knot", {"clusters": 2}),
                                                              "task-vector-negation"]),
}


def method_name(spec) -> str:
    """The registered name of a method given by name or as (name, overrides)."""
    return spec if isinstance(spec, str) else spec[0]


placed = {method_name(m) for _, _, methods in SECTIONS.values() for m in methods}
missing = [m for m in members + controls if m not in placed]
assert not missing, f"family methods without a section on this page: {missing}"
print("family methods:", ", ".join(members), "| baseline:", ", ".join(controls))


def run_section(scenario):
    """The comparison of one section: its methods that serve the scenario, beside θ_o unchanged."""
    built = build_scenario(scenario, 0)
    methods = [m for m in SECTIONS[scenario][2] if method_name(m) in methods_serving(built)]
    size = LM_SIZE if built.kind == "language" else {}
    return compare(scenario, ["do-nothing", *methods], seeds=SEEDS, full=FULL, progress=False, **size)


def median(values):
    return statistics.median(values)


def trade_rows(scenario, cmp):
    """One summary row per family method of a comparison (medians over seeds)."""
    forgetting, utility, _ = SECTIONS[scenario]
    rows = []
    for label in cmp.methods:
        if label == "do-nothing":
            continue
        method = get_method(label.split("[")[0])  # the class's facets (exactness, history) do not depend on settings
        per = [row["methods"][label] for row in cmp.per_seed]
        own = "training_cost" in per[0]
        upfront = (median([p["training_cost"]["client_steps"] / r["original_cost"]["client_steps"]
                           for p, r in zip(per, cmp.per_seed, strict=True)]) if own else 1.0)
        utility_gap = (median([p["trained_metrics"][utility] - r["original"][utility]
                               for p, r in zip(per, cmp.per_seed, strict=True)]) if own else 0.0)
        storage = median([p.get("extras_storage_models", 0.0)
                          + (p["history_storage_models"] if method.history_interval() is not None else 0.0)
                          for p in per])
        rows.append(
            f"| `{label}` on `{scenario}` | {'exact' if method.exact else 'approx.'}; {forgetting} "
            f"{'✓' if cmp.equivalent(label, forgetting) else '✗'} | "
            f"{median([p['cost']['client_steps'] for p in per]):.0f} (ρ {cmp.rho(label):.2f}{' †' if own else ''}) | "
            f"{upfront:.2f}× | {utility_gap:+.3f} {utility} | {storage:.1f} |")
    return rows


comparisons = {}

# %% [markdown]
# ## A backdoored client (digits-backdoor)
#
# Client 0 of 10 adds triggered copies of half its images labelled 0; the request forgets client
# 0. The attack success rate (ASR) is the forgetting signal; test accuracy the utility. ✓ marks a
# metric within the band of the method's referee († rows: the method's own retraining).

# %% tags=["hide-input"]
comparisons["digits-backdoor"] = run_section("digits-backdoor")
display(Markdown(comparisons["digits-backdoor"].table(["test_acc", "asr", "retain_acc", "forget_quality"])))

# %% [markdown]
# ## A client's own data (digits-client)
#
# KNOT runs here rather than on `digits-backdoor`: its vote of five cluster models already outvotes
# the backdoored client before any request, so the attack success rate cannot show forgetting.
# Forgetting is the forgotten client's accuracy on its own (clean) examples.

# %% tags=["hide-input"]
comparisons["digits-client"] = run_section("digits-client")
display(Markdown(comparisons["digits-client"].table(["test_acc", "forget_acc", "mia_auc", "retain_acc"])))

# %% [markdown]
# ## A whole class (digits-class-cnn, digits-class-aux)
#
# The request forgets digit class 3 from every client. Class-discriminative pruning needs a small
# CNN (channels to prune), FedAU an auxiliary head trained during federation, so each runs on the
# scenario whose model has that part; forgetting is the forgotten class's test accuracy.

# %% tags=["hide-input"]
for scenario in ("digits-class-cnn", "digits-class-aux"):
    comparisons[scenario] = run_section(scenario)
    display(Markdown(f"`{scenario}`:\n\n" + comparisons[scenario].table(["test_acc", "forget_acc", "retain_acc"])))

# %% [markdown]
# ## Federated LoRA language model (profiles-client)
#
# Four clients fine-tune LoRA adapters of a tiny causal LM on question–answer records about
# fictitious people; the request forgets client 0 and its five people. Definitions of the columns:
# [Evaluating unlearning](../../evaluating.md#language-model-metrics).

# %% tags=["hide-input"]
comparisons["profiles-client"] = run_section("profiles-client")
display(Markdown(comparisons["profiles-client"].table(LM_HEADLINE_METRICS)))

# %% [markdown]
# ## The trade, in one table
#
# Per method: the unlearning's client steps and ρ_steps (against θ_r, or † its own retraining);
# exactness as the method claims it, and whether its forgetting metric lands in its referee's band;
# the up-front training in client steps relative to FedAvg's θ_o; the utility of the model it serves
# before any request, minus FedAvg's θ_o; what it stores beyond the served model, in model sizes
# (history only for methods that read it).

# %% tags=["hide-input"]
summary = ["| method on scenario | exactness; forgetting in band | unlearning: client steps (ρ_steps) | "
           "up-front training | up-front utility | storage (models) |", "|---|---|---|---|---|---|"]
for scenario, cmp in comparisons.items():
    summary += trade_rows(scenario, cmp)
display(Markdown("\n".join(summary)))

# %% [markdown]
# ## Task-vector negation: forgetting and utility as α grows
#
# The baseline's one knob. Each α subtracts α times the same reinforcement step (5 local epochs of
# the forgetting client on its own records, from θ_o); dashed lines are θ_r's values, dotted θ_o's.

# %% tags=["hide-input"]
sweep = compare("profiles-client", [("task-vector-negation", {"alpha": a}) for a in ALPHA_GRID] + ["do-nothing"],
                seeds=SEEDS, full=FULL, progress=False, **LM_SIZE)
labels = [get_method("task-vector-negation", alpha=a).label for a in ALPHA_GRID]
panels = [("forget_logprob", "forgotten records: mean log-prob"), ("canary_exposure", "canary exposure (bits)"),
          ("retain_answer_prob", "retained people: answer prob.")]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
for ax, (metric, title) in zip(axes, panels, strict=True):
    ax.plot(ALPHA_GRID, [sweep.value(label, metric) for label in labels], "o-")
    ax.axhline(sweep.value("retrain", metric), color="green", linestyle="--", label="θ_r")
    ax.axhline(sweep.value("original", metric), color="grey", linestyle=":", label="θ_o")
    ax.set_xscale("log", base=2)
    ax.set(xticks=ALPHA_GRID, xticklabels=[f"{a:g}" for a in ALPHA_GRID], xlabel="α", title=title)
    ax.minorticks_off()
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()
display(Markdown(sweep.table(["forget_logprob", "canary_exposure", "retain_answer_prob", "forget_quality",
                              "model_utility"])))

# %% [markdown]
# ## What not to conclude
#
# - Each method runs on the scenario its entry uses, so rows from different scenarios share no
#   referee: compare a row's cost and exactness with the others, not its utility.
# - "Exact" is the method's claim, asserted bit for bit by its tests against its own retraining;
#   its utility can still differ from FedAvg's θ_o (that difference is the up-front utility column).
# - One smoke seed (no spread) and tiny models: run `FULL=1` before quoting a number.
