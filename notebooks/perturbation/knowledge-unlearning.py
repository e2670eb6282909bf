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
# # Knowledge unlearning by gradient ascent, federated
#
# Jang et al. (ACL 2023) make a language model forget target sequences by gradient *ascent* on
# them, one full-batch update per epoch, until their extraction likelihood (EL) and memorisation
# accuracy (MA) fall to the model's level on data it never saw. Federated here: the client that
# holds the sequences ascends on the global LoRA adapter, the server asks it for EL/MA after each
# epoch and stops at the threshold, then (optionally) repair rounds run without the forgotten data.
# This notebook checks, on the federated tiny language model: the threshold is reached and the
# forgotten canary's exposure falls to retraining's; what that costs the retained people; whether
# forgetting in sequential chunks costs less than all at once (the paper's claim); and what
# happens when ascent goes on past the threshold.
#
# Runs at smoke size by default (the shared `LM_SMOKE` cut, seed 0); `FULL=1` runs the scenarios'
# full size, three seeds for the ordering claim (the test suite asserts that claim over the three
# seeds at smoke size) and the learning-rate grid.

# %% [markdown]
# ## The claims (reported)

# %%
import os
import statistics

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from fedunlearn import catalog
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.requests import ForgetRequest
from fedunlearn.perturbation.knowledge_unlearning import (
    COLLAPSE_FRACTION,
    LR_GRID,
    ORDERING_PEOPLE,
    ORDERING_SEEDS,
    RETAIN_FRACTION,
    KnowledgeUnlearning,
    KnowledgeUnlearningConfig,
    answer_probability,
    ascend,
    validation_thresholds,
)
from fedunlearn.results import Results
from fedunlearn.unlearning import cache
from fedunlearn.unlearning.compare import LM_HEADLINE_METRICS, compare
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

entry = catalog.get("knowledge-unlearning")
claims = entry.claims
results = Results("knowledge-unlearning")
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# ## Setup
#
# - **Federation.** `profiles-client` / `profiles-person`: a tiny Llama-style model, pretrained
#   once on public fictitious people; 4 clients fine-tune LoRA adapters with FedAvg on
#   question-answer records about their 5 people each (one canary secret per person). Smoke size:
#   the first 6 rounds (`LM_SMOKE`). Requests: forget client 0 (all its people), or one person of
#   client 0.
# - **Threshold.** Jang's forgetting threshold is the model's mean EL and MA on data it never
#   saw. Here: $\theta_o$'s mean $\mathrm{EL}_4$ and MA on the **validation people**
#   (`scenario.validation_records`, nobody trained on them, disjoint from the evaluation's unseen
#   people). The server holds $\theta_o$ and can hold such public reference text; no client data is
#   involved. The values travel to the method in its Config, as in the authors' configs.
# - **Method.** `knowledge-ga`: the owning client takes one Adam step per epoch on all its
#   forgotten records (ascent), the server asks it for EL/MA, stop at the threshold (at most 20
#   epochs, the paper's budget), then `repair_rounds` FedAvg rounds without the forgotten data
#   (default 1; `repair_rounds=0` is the paper's method alone). Learning rate $5\cdot10^{-4}$,
#   chosen on the validation people (see the end of the notebook), not the paper's $5\cdot10^{-5}$.

# %%
FULL = os.environ.get("FULL") == "1"
torch.set_num_threads(1)
SIZE = {} if FULL else LM_SMOKE
SEED = 0


def smoke(name: str, seed: int):
    """The scenario at the notebook's size."""
    return build_scenario(name, seed, full=FULL).restricted(**({} if FULL else {"rounds": LM_SMOKE["rounds"]}))


def thresholds(scenario) -> tuple[float, float]:
    """θ_o's mean EL_4 and MA on the validation people (rounded as a config value)."""
    return validation_thresholds(scenario, cache.trained_federation(scenario))


scenario = smoke("profiles-person", SEED)
EL_T, MA_T = thresholds(scenario)  # profiles-client trains the same federation (the request is not part of it)
defaults = KnowledgeUnlearningConfig()
settings = {"el_threshold": EL_T, "ma_threshold": MA_T}
regime = (f"{'`FULL=1`' if FULL else 'smoke size'}: seed {SEED}, "
          f"{scenario.config.rounds} rounds, {len(scenario.clients)} clients")
display(Markdown(results.add("thresholds", (
    f"Threshold of this run (θ_o on {len({r.owner_id for r in scenario.validation_records})} validation people): "
    f"EL₄ ≤ {EL_T:.3f} and MA ≤ {MA_T:.3f} (the Config defaults, {defaults.el_threshold:.3f} and "
    f"{defaults.ma_threshold:.3f}, were computed the same way at smoke size, seed 0)"))))

# %% [markdown]
# ## Run
#
# One comparison per scenario: the method with one repair round and without, every model
# evaluated once and paired with $\theta_r$ of the same seed.

# %%
METRICS = ["forget_el", "forget_ma", "unseen_ma", "canary_exposure", "retain_answer_prob", "forget_quality",
           "model_utility"]
METHODS = [("knowledge-ga", settings), ("knowledge-ga", {**settings, "repair_rounds": 0})]
runs = {name: compare(name, METHODS, seeds=(SEED,), progress=False, **SIZE)
        for name in ("profiles-person", "profiles-client")}
repaired, ascent_only = runs["profiles-person"].methods
for name, cmp in runs.items():
    display(Markdown(results.add(f"table_{name.split('-')[1]}", cmp.table(METRICS))))

# %% [markdown]
# The full set of language-model columns (`LM_HEADLINE_METRICS`) for `profiles-client`:

# %%
display(Markdown(results.add("headline", runs["profiles-client"].table(list(LM_HEADLINE_METRICS)))))


# %% [markdown]
# ## Pass criteria
#
# Forgotten records' EL and MA at or below the threshold; canary exposure within the retrain band
# of $\theta_r$ (`Comparison.equivalent`); retained people's answer probability at least
# `RETAIN_FRACTION` of $\theta_o$'s.


# %%
def criteria(cmp, label: str) -> dict[str, bool]:
    """Each pass criterion of one method in one comparison."""
    return {"threshold": cmp.value(label, "forget_el") <= EL_T and cmp.value(label, "forget_ma") <= MA_T,
            "canary": cmp.equivalent(label, "canary_exposure"),
            "utility": cmp.value(label, "retain_answer_prob") >= RETAIN_FRACTION * cmp.value("original", "retain_answer_prob")}


def mark(ok: bool) -> str:
    return "holds" if ok else "does not hold"


rows = ["| scenario | method | EL₄ / MA ≤ threshold | canary exposure in band | retained ≥ 0.9× θ_o |", "|---|---|---|---|---|"]
passes = {}
for name, cmp in runs.items():
    base = cmp.value("original", "retain_answer_prob")
    for label in cmp.methods:
        ok = criteria(cmp, label)
        passes[(name, label)] = ok
        rows.append(f"| `{name}` | `{label}` | {cmp.value(label, 'forget_el'):.3f} / {cmp.value(label, 'forget_ma'):.3f}: "
                    f"{mark(ok['threshold'])} | {cmp.value(label, 'canary_exposure'):.2f} bits vs θ_r "
                    f"{cmp.value('retrain', 'canary_exposure'):.2f}: {mark(ok['canary'])} | "
                    f"{cmp.value(label, 'retain_answer_prob') / base:.2f}× θ_o: {mark(ok['utility'])} |")
display(Markdown(results.add("criteria", "\n".join(rows))))

# %% [markdown]
# ## Past the threshold
#
# The paper stops at the threshold because ascent does not stop on its own. Ascent on the
# forgotten person of `profiles-person` for all 20 epochs, without stopping: EL and MA of the
# forgotten records (asked of the client, as the method does) and the answer probability of every
# retained record, relative to $\theta_o$.

# %%
run = cache.trained_federation(scenario)
forgotten_ids = set(scenario.request.record_ids)
retained = scenario.task.encode([r for cid in sorted(scenario.clients) for r in
                                 (scenario.records[int(i)] for i in scenario.clients[cid].record_ids)
                                 if r.record_id not in forgotten_ids])
curve = []


def record(epoch, state, el, ma):
    curve.append((epoch, el, ma, answer_probability(scenario.task, run.model, state, retained)))


config = KnowledgeUnlearningConfig(**settings, stop_at_threshold=False)
ascend(run, dict(run.final_state), scenario.request, config, CostCounter(), record)
start = curve[0][3]
stop = next(e for e, el, ma, _ in curve if el <= EL_T and ma <= MA_T)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
axes[0].plot([c[0] for c in curve], [c[2] for c in curve], "o-", label="MA")
axes[0].plot([c[0] for c in curve], [c[1] for c in curve], "s-", label="EL₄")
axes[0].axhline(MA_T, color="C0", linestyle="--", label="MA threshold")
axes[0].axhline(EL_T, color="C1", linestyle="--", label="EL threshold")
axes[0].set(xlabel="ascent epochs", ylabel="forgotten records", ylim=(0, 1))
axes[1].plot([c[0] for c in curve], [c[3] / start for c in curve], "o-", color="C2")
axes[1].axhline(RETAIN_FRACTION, color="grey", linestyle="--", label=f"{RETAIN_FRACTION}× θ_o")
axes[1].axhline(COLLAPSE_FRACTION, color="grey", linestyle=":", label=f"{COLLAPSE_FRACTION}× θ_o")
axes[1].set(xlabel="ascent epochs", ylabel="retained answer prob / θ_o", ylim=(0, 1.1))
for ax in axes:
    ax.axvline(stop, color="black", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
fig.tight_layout()
plt.show()
at_stop, at_end = curve[stop][3] / start, curve[-1][3] / start
collapses = at_end < COLLAPSE_FRACTION
display(Markdown(results.add("collapse_text", (
    f"The threshold is reached after {stop} epochs, where the retained records keep {at_stop:.2f}× θ_o's "
    f"answer probability; after {curve[-1][0]} epochs they keep {at_end:.2f}× (collapse line "
    f"{COLLAPSE_FRACTION}×): continuing past the threshold {'collapses' if collapses else 'does not collapse'} "
    "utility here"))))

# %% [markdown]
# ## All at once, or one person at a time
#
# The paper forgets 128 sequences at once or in 4 sequential chunks of 32, each chunk to the
# threshold, and reports that chunks cost less. Here: the first `ORDERING_PEOPLE` people of
# client 0 (all their records) forgotten at once (one request, one chunk) or one person per chunk,
# ascent only (no repair, as in the paper), thresholds from each seed's validation people; the
# cost is the retained records' answer probability relative to $\theta_o$ (every other client's
# records).

# %%
order_rows = ["| seed | θ_o answer prob | at once: kept (epochs) | one person per chunk: kept (epochs) |",
              "|---|---|---|---|"]
kept = {"batch": [], "chunks": []}
ORDER_SEEDS = ORDERING_SEEDS if FULL else (SEED,)  # three seeds need FULL=1 here; the tests assert them
for seed in ORDER_SEEDS:
    sc = smoke("profiles-client", seed)
    seed_run = cache.trained_federation(sc)
    el_t, ma_t = thresholds(sc)
    people = sorted({int(o) for o in sc.clients[0].owner_ids})[:ORDERING_PEOPLE]
    request = ForgetRequest.forget_records(int(r) for r, o in zip(sc.clients[0].record_ids, sc.clients[0].owner_ids)
                                           if int(o) in people)
    others = sc.task.encode([sc.records[int(i)] for cid in sorted(sc.clients) if cid != 0
                             for i in sc.clients[cid].record_ids])
    before = answer_probability(sc.task, seed_run.model, seed_run.final_state, others)
    cells = []
    for key, chunks in (("batch", 1), ("chunks", ORDERING_PEOPLE)):
        method = KnowledgeUnlearning(KnowledgeUnlearningConfig(el_threshold=el_t, ma_threshold=ma_t, chunks=chunks,
                                                               repair_rounds=0))
        result = cache.unlearned(sc, seed_run, method, request)  # shared with the test suite
        kept[key].append(answer_probability(sc.task, seed_run.model, result.state, others) / before)
        cells.append(f"{kept[key][-1]:.2f}× ({result.cost.client_steps})")
    order_rows.append(f"| {seed} | {before:.3f} | {cells[0]} | {cells[1]} |")
median_batch, median_chunks = statistics.median(kept["batch"]), statistics.median(kept["chunks"])
ordering_holds = median_chunks > median_batch
order_rows += ["", f"Median kept: at once {median_batch:.2f}×, one person per chunk {median_chunks:.2f}× θ_o; "
               f"epochs = client steps (one per epoch)."]
display(Markdown(results.add("ordering", "\n".join(order_rows))))

# %% [markdown]
# ## Choosing the learning rate
#
# Rule (fixed before any run was compared with $\theta_r$): on seed 0 at smoke size, forget
# client 0 with each rate of `LR_GRID` (the paper's $5\cdot10^{-5}$ first) and take the smallest
# that reaches the validation threshold within the paper's 20 epochs (smaller steps overshoot the
# threshold least). Also shown: the validation people's answer probability at the stop (what the
# server can check without any client data). The grid runs with `FULL=1` (about 3 minutes).

# %%
if FULL:
    grid_scenario = build_scenario("profiles-client", 0).restricted(rounds=LM_SMOKE["rounds"])
    grid_run = cache.trained_federation(grid_scenario)
    grid_el, grid_ma = thresholds(grid_scenario)
    validation = grid_scenario.task.encode(grid_scenario.validation_records)
    grid_rows = ["| lr | epochs | EL₄ / MA at the stop | validation answer prob / θ_o |", "|---|---|---|---|"]
    base_val = answer_probability(grid_scenario.task, grid_run.model, grid_run.final_state, validation)
    for lr in LR_GRID:
        trace = []
        state, epochs = ascend(grid_run, dict(grid_run.final_state), grid_scenario.request,
                               KnowledgeUnlearningConfig(lr=lr, el_threshold=grid_el, ma_threshold=grid_ma),
                               CostCounter(), lambda e, s, el, ma: trace.append((el, ma)))
        val = answer_probability(grid_scenario.task, grid_run.model, state, validation) / base_val
        grid_rows.append(f"| {lr:g} | {epochs} | {trace[-1][0]:.3f} / {trace[-1][1]:.3f} | {val:.2f} |")
    lr_text = "\n".join(grid_rows)
else:
    lr_text = f"(the grid {', '.join(f'{lr:g}' for lr in LR_GRID)} runs with `FULL=1`)"
display(Markdown(results.add("lr_grid", lr_text)))

# %% [markdown]
# ## Reported vs reproduced

# %%
person, client = runs["profiles-person"], runs["profiles-client"]
ascent_ok = all(passes[(n, ascent_only)]["threshold"] for n in runs)
repair_ok = all(passes[(n, repaired)]["utility"] for n in runs)
every = any(all(all(passes[(n, label)].values()) for n in runs) for label in (repaired, ascent_only))
first_verdict = "holds" if every else ("holds in part (see the criteria table)" if ascent_ok or repair_ok
                                       else "does not hold")
display(Markdown(results.claims("claims", [
    (claims[0], f"ascent alone reaches the threshold in both scenarios: {mark(ascent_ok)}; with one repair round the "
     f"retained people keep ≥ {RETAIN_FRACTION}× θ_o: {mark(repair_ok)}, but the forgotten records' MA climbs back to "
     f"{person.value(repaired, 'forget_ma'):.3f} (person) and {client.value(repaired, 'forget_ma'):.3f} (client)",
     first_verdict),
    (claims[1], f"retained answer probability kept, median of {len(ORDER_SEEDS)} seed(s): at once "
     f"{median_batch:.2f}×, one person per chunk {median_chunks:.2f}× θ_o"
     + ("" if FULL else f" (seed {SEED} only at smoke size; the median over seeds "
                        f"{', '.join(map(str, ORDERING_SEEDS))} runs with `FULL=1` and in the test suite, which asserts it)"),
     mark(ordering_holds)),
    (claims[2], f"retained answer probability {at_stop:.2f}× θ_o at the threshold, {at_end:.2f}× after "
     f"{curve[-1][0]} epochs", mark(collapses)),
])))
display(Markdown("Regime of every number above: " + results.add("regime", regime)))

# %% [markdown]
# ## What not to conclude
#
# - **Not the paper's scale.** A tiny Llama-style model with LoRA adapters and answers of a few
#   tokens stand in for GPT-Neo 125M-2.7B on 200-token Pile sequences; $n = 4$ for EL, not 10.
# - **Adam restarts every epoch.** Each epoch is one call of the client seam, so every ascent step
#   is Adam's first: a step of about the learning rate on every coordinate, whatever the chunk's
#   size. A chunk of one person therefore moves the adapter as far per epoch as the whole forget
#   set does; the paper's optimiser keeps its moments across epochs.
# - **The threshold is not removal.** Repair rounds on other people's records bring the forgotten
#   records' memorisation back: ascent to the threshold hid the facts more than it erased them.
# - **One seed** at smoke size; three for the ordering claim with `FULL=1` (and in the tests).

# %%
print(f"saved {len(results.items)} results to {results.save()}")
