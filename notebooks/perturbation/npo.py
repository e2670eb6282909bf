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
# # Negative Preference Optimization: gradient ascent collapses, NPO does not
#
# Zhang, Lin, Bai and Mei (COLM 2024) replace gradient ascent (GA) on the data to forget by a
# DPO-style loss against the frozen model before unlearning. Its gradient is GA's, reweighted per
# example by $2\sigma(\beta \log \pi_\theta/\pi_{\text{ref}})$: once an answer is unlikely, it stops
# pushing. The paper's claim: GA drifts into *catastrophic collapse* of the model's utility, NPO
# much more slowly. This notebook forgets one client of a federated LoRA language model by local
# NPO (then repair rounds), and runs GA through the same code path and budget.
#
# Smoke size by default: seed 0 at the shared smoke cut (its federation and oracles are shared
# with the other language-model entries). `FULL=1` runs five seeds, among them the claim's three;
# the test suite asserts the claim over those three at smoke size.

# %% [markdown]
# ## The claim (reported)

# %%
import os

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from fedunlearn import catalog
from fedunlearn.models.decoding import teacher_forced
from fedunlearn.perturbation.npo import (
    BUDGET_GRID,
    CLAIM_SEEDS,
    CLAIM_SEEDS_NEEDED,
    COLLAPSE_FRACTION,
    KEEP_FRACTION,
    NegativePreferenceOptimization,
    NPOConfig,
    collapse_budget,
    collapse_rows,
    mean_equivalent_beta,
)
from fedunlearn.results import Results
from fedunlearn.unlearning import cache
from fedunlearn.unlearning.compare import LM_HEADLINE_METRICS, compare
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

entry = catalog.get("npo")
claims = entry.claims
results = Results("npo")
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# The paper's TOFU tables were not retrieved; the third claim is open-unlearning's reproduction
# (a third party, not the authors).
#
# ## Setup
#
# - **Scenario** `profiles-client`: a tiny Llama-style model (pretrained once on public fictitious
#   people) with LoRA adapters trained by FedAvg on question-answer records about fictitious people,
#   4 clients of 5 people each, 4 records per person (birthplace, birth year, occupation, a canary
#   secret code). Forget client 0: **5 of the 20 people, a quarter of everyone**, the paper's "large
#   request" regime. The federation is cut to its first 6 rounds (`LM_SMOKE`, shared by every entry).
# - **Method** `npo`: client 0 runs NPO on its records from the global adapter $\theta_o$, with
#   $\theta_o$ frozen as the reference, for a fixed budget of local epochs (Adam, the federation's
#   batch size 10); the server applies its update; then 2 FedAvg repair rounds on the other clients.
#   **Baseline** `npo[objective=ascent]`: the same, with gradient ascent in place of the NPO loss.
# - **Hyperparameters.** $\beta = 0.1$ (paper, open-unlearning). Learning rate, epoch budget and
#   repair rounds are ours, for the tiny model (the paper's $10^{-5}$ on a 7B model does not
#   transfer), chosen on seed 0 without $\theta_r$: the budget by the rule below on **validation
#   people** (nobody trained on them; disjoint from the evaluation's unseen people).
# - **Referee.** $\theta_r$: FedAvg from the same initialisation without client 0, same seed. The
#   claim reads no retrain band, so no second retraining measures a noise floor here: the table's
#   bands are the tolerances. Forget quality is TOFU's KS p-value of the forget questions' truth
#   ratios against $\theta_r$'s.

# %%
FULL = os.environ.get("FULL") == "1"
SEEDS = (0, 1, 2, 3, 4) if FULL else (0,)  # the claim's seeds (CLAIM_SEEDS) need FULL=1 here; the tests assert them
torch.set_num_threads(1)
CONFIG = NPOConfig()
NPO, GA = "npo", "npo[objective=ascent]"
SIZE = "`FULL=1`" if FULL else "smoke size"
regime = (f"`profiles-client` cut to its first {LM_SMOKE['rounds']} rounds, seeds "
          f"{', '.join(map(str, SEEDS))}; β = {CONFIG.beta}, Adam lr {CONFIG.lr:g}, {CONFIG.epochs} local epochs, "
          f"{CONFIG.repair_rounds} repair rounds")
print(f"{SIZE}: {regime}")

# %% [markdown]
# ## The budget, chosen on validation people
#
# The paper's regime is a budget at which GA collapses. Rule (`collapse_budget`): the smallest
# number of local epochs in the grid at which GA, repair rounds included, brings the **validation
# people's** answer probability below `COLLAPSE_FRACTION` of $\theta_o$'s (seed 0; it stops at the
# first such budget). NPO is not looked at, nor is $\theta_r$.

# %%
scenario = build_scenario("profiles-client", seed=0).restricted(**LM_SMOKE)
run = cache.trained_federation(scenario)
validation = scenario.task.encode(scenario.validation_records)


def validation_probability(state) -> float:
    """Mean answer probability (exp of the mean answer-token log-prob) on the validation people."""
    scenario.task.set_state(run.model, state)
    logprobs, _, mask = teacher_forced(run.model, validation)
    return float((logprobs.sum(-1) / mask.sum(-1)).exp().mean())


def unlearned(method):
    """The method's unlearned state, from the method cache (the test suite asks the same runs)."""
    return cache.unlearned(scenario, run, method, scenario.request).state


chosen, tried = collapse_budget(run, scenario.request, validation_probability, CONFIG, unlearn=unlearned)
npo_at_budget = (validation_probability(unlearned(NegativePreferenceOptimization(CONFIG)))
                 / validation_probability(run.final_state))
display(Markdown(results.add("selection", "\n".join(
    ["| local epochs | GA, validation answer probability / θ_o's |", "|---|---|"]
    + [f"| {e} | {r:.3f}{' (collapsed: chosen)' if e == chosen else ''} |" for e, r in tried]
    + ["", f"Grid {list(BUDGET_GRID)}, seed 0, {CONFIG.repair_rounds} repair rounds, lr {CONFIG.lr:g}. The "
       f"default budget is {CONFIG.epochs} epochs ({'the rule agrees' if chosen == CONFIG.epochs else 'THE RULE DISAGREES'}). "
       f"NPO at that budget, for comparison only: {npo_at_budget:.3f} of θ_o's."]))))

# %% [markdown]
# ## Run
#
# One comparison over the seeds: $\theta_o$, $\theta_r$, NPO and GA with the same budget, every
# model evaluated once, gaps paired with $\theta_r$ of the same seed.

# %%
# the claim reads no retrain band: no second oracle is retrained (bands are the tolerances)
cmp = compare("profiles-client", [NPO, (NPO, {"objective": "ascent"})], seeds=SEEDS, progress=False, noise_floor=False,
              **LM_SMOKE)
METRICS = ["retain_answer_prob", "forget_quality", "model_utility", *[m for m in LM_HEADLINE_METRICS
                                                                      if m not in ("forget_quality", "model_utility")]]
display(Markdown(results.add("table", cmp.table(METRICS))))

# %% [markdown]
# ## Per seed: retained answer probability and forget quality
#
# The claim is judged per seed: GA's retained answer probability below `COLLAPSE_FRACTION` of
# $\theta_o$'s, NPO's at least `KEEP_FRACTION` of it, and NPO's forget quality above GA's.

# %%
rows = collapse_rows(cmp, NPO, GA)


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


display(Markdown(results.add("per_seed", "\n".join(
    ["| seed | retained answer prob. / θ_o's: NPO | GA | forget quality: NPO | GA | θ_o | GA collapses | "
     "NPO survives | NPO keeps | NPO forgets better | issue's rule |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    + [f"| {r['seed']} | {r['npo']:.2f} | {r['ascent']:.2f} | {r['fq_npo']:.2g} | {r['fq_ascent']:.2g} | "
       f"{r['fq_original']:.2g} | {mark(r['collapses'])} | {mark(r['survives'])} | {mark(r['keeps'])} | "
       f"{mark(r['forgets_better'])} | {'holds' if r['holds'] else 'does not hold'} |" for r in rows]
    + ["", f"GA collapses: below {COLLAPSE_FRACTION} of θ_o's; NPO survives: not below it; NPO keeps: at least "
       f"{KEEP_FRACTION} of θ_o's; the issue's rule: GA collapses, NPO keeps and forgets better."]))))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
x = torch.arange(len(rows)).float()
axes[0].bar(x - 0.2, [r["npo"] for r in rows], 0.4, label="NPO")
axes[0].bar(x + 0.2, [r["ascent"] for r in rows], 0.4, label="GA, same budget")
axes[0].axhline(KEEP_FRACTION, color="tab:blue", linestyle="--", linewidth=1, label="keep line")
axes[0].axhline(COLLAPSE_FRACTION, color="tab:orange", linestyle="--", linewidth=1, label="collapse line")
axes[0].set(xticks=x, xticklabels=[f"seed {r['seed']}" for r in rows], ylabel="retained answer prob. / θo's")
axes[0].legend(fontsize=8)
for key, label in (("fq_npo", "NPO"), ("fq_ascent", "GA"), ("fq_original", "θo (no unlearning)")):
    axes[1].semilogy(x, [max(r[key], 1e-300) for r in rows], "o", label=label)
axes[1].axhline(0.05, color="grey", linestyle=":", linewidth=1)
axes[1].set(xticks=x, xticklabels=[f"seed {r['seed']}" for r in rows], ylabel="forget quality (KS p vs θr)")
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Sum or mean over answer tokens
#
# Our loss sums the answer tokens' log-probabilities, as open-unlearning does; the package's
# generic `npo` objective averages them. For an answer of $T$ tokens the mean form at $\beta$ is the
# summed form at $\beta / T$ (scaled by $1/T$), so its weight fades $T$ times more slowly: much
# closer to GA. Client 0's answers (reading its records here only to report their length):

# %%
tokens = (scenario.clients[0].tensors["labels"][:, 1:] != -100).sum(-1).float()
typical = round(float(tokens.mean()))
display(Markdown(results.add("tokens", (
    f"client 0's answers have {tokens.mean():.1f} tokens on average (from {int(tokens.min())} to "
    f"{int(tokens.max())}, end token included): averaging over tokens at β = {CONFIG.beta} acts like summing at "
    f"β ≈ {CONFIG.beta / typical:.3f}, and summing at β = {CONFIG.beta} like averaging at β ≈ "
    f"{mean_equivalent_beta(CONFIG.beta, typical):.1f}"))))

# %% [markdown]
# ## Reported vs reproduced


# %%
def verdict(holds: bool) -> str:
    return "holds" if holds else "does not hold"


held = sum(r["holds"] for r in rows)
separated = sum(r["collapses"] and r["survives"] for r in rows)
needed = CLAIM_SEEDS_NEEDED if tuple(SEEDS) == CLAIM_SEEDS else len(SEEDS)
scope = ("" if len(SEEDS) >= len(CLAIM_SEEDS) else
         f" (smoke size runs seed {SEEDS[0]} only; the rule over seeds {', '.join(map(str, CLAIM_SEEDS))} runs with "
         "`FULL=1` and in the test suite, which asserts the verdict)")
utility_order = sum(row["methods"][NPO]["metrics"]["model_utility"] > row["methods"][GA]["metrics"]["model_utility"]
                    for row in cmp.per_seed)
collapse_text = (f"GA collapses the retained people's answer probability (below {COLLAPSE_FRACTION} of θ_o's) while NPO "
                 f"does not in {separated} of {len(rows)} seeds; the issue's stricter rule (NPO keeps at least "
                 f"{KEEP_FRACTION} of θ_o's and forgets better) holds in {held} of {len(rows)} (needed: {needed}): NPO keeps "
                 f"in {sum(r['keeps'] for r in rows)}, forgets better in {sum(r['forgets_better'] for r in rows)}")
display(Markdown(results.add("criteria", collapse_text)))
display(Markdown(results.claims("claims", [
    (claims[0], collapse_text,
     f"GA collapses and NPO does not: {verdict(separated == len(rows))}; issue's rule: {verdict(held >= needed)}{scope}"),
    (claims[1], "not run: no TOFU here; our request is a quarter of the people of one small federation",
     "not run here"),
    (claims[2], f"model utility (TOFU-style, retained and public people) NPO {cmp.value(NPO, 'model_utility'):.3f}, "
     f"GA {cmp.value(GA, 'model_utility'):.3f}, θ_o {cmp.value('original', 'model_utility'):.3f} (medians; NPO above GA "
     f"in {utility_order} of {len(rows)} seeds); forget quality NPO {cmp.value(NPO, 'forget_quality'):.2g}, GA "
     f"{cmp.value(GA, 'forget_quality'):.2g}",
     f"utility ordering {verdict(utility_order == len(rows))}; forget-quality ordering "
     f"{verdict(sum(r['forgets_better'] for r in rows) == len(rows))}"),
])))
display(Markdown("Regime of every number above: " + results.add("regime", f"{SIZE} ({regime})")))

# %% [markdown]
# ## What not to conclude
#
# - **Not the paper's scale.** A width-128 model with LoRA adapters and four-fact people stands in for
#   Llama-2-7B on TOFU; forget quality here is a KS test over 20 truth ratios (a quarter of 20 people
#   times four questions), far coarser than TOFU's.
# - **The repair rounds matter.** Right after local forgetting, at this budget, both objectives have
#   driven every answer down (the tiny model's answers share templates and tokens). What separates
#   them is how far the adapter drifted: NPO's update stops growing once the forget answers are
#   unlikely, GA's does not, and two FedAvg rounds repair the first but not the second. The paper
#   has no repair step.
# - **One budget.** Learning rate, budget and repair rounds were fixed on seed 0 (the budget by the
#   rule above); a longer or shorter budget moves both methods.

# %%
print(f"saved {len(results.items)} results to {results.save()}")
