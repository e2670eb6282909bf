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
# # Certified removal: Newton steps on a loss-perturbed linear head, federated
#
# Guo et al. (ICML 2020) train an L2-regularised linear model on a loss perturbed by a random
# linear term $b^\top w$, remove each record with one Newton step, and keep a data-dependent bound
# on the gradient residual the steps leave; while the bound stays below $\sigma\epsilon/c$ the
# model is $(\epsilon, \delta)$-certified, otherwise it is retrained. Here the head is trained and
# unlearned by a server that only asks clients for sums of gradients and Hessians. This notebook
# removes 100 records one by one and compares with $w_r$, the head retrained with the same $b$.
#
# Smoke size by default (seed 0, well under a minute on two CPU cores); `FULL=1` runs seeds 0, 1, 2.

# %% [markdown]
# ## The claims (reported)

# %%
import math
import os
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from fedunlearn import catalog
from fedunlearn.federated.costs import CostCounter
from fedunlearn.perturbation.certified_removal import (
    ACCURACY_POINTS,
    COST_SHARE,
    DISTANCE_SHARE,
    SIGMA_SWEEP,
    CertifiedRemoval,
    CertifiedRemovalConfig,
    retrain,
    serve_removals,
)
from fedunlearn.results import Results
from fedunlearn.unlearning import cache
from fedunlearn.unlearning.compare import compare
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.scenarios import build_scenario

entry = catalog.get("certified-removal")
claims = entry.claims
results = Results("certified-removal")
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# The paper's Table 1 (training and removal times) was not retrieved; its figures were not
# read either. The defaults below are checked against the released code
# (`facebookresearch/certified-removal`, `test_removal.py` and its README).
#
# ## Setup
#
# - **Data.** scikit-learn's 8x8 digits **stand in for MNIST**; features are the 64 pixels plus a
#   constant 1, L2-normalised (as the code normalises its features). Scenario `digits-records`:
#   10 IID clients (about 135 images each); forget 100 records drawn at random (seeded), removed
#   one by one in id order.
# - **Model.** One-vs-rest logistic regression (the code's `ovr` mode), trained by federated
#   Newton steps: each step the server sends $w$, every client replies sums of per-example
#   gradients and Hessians (the registered measure `certified-removal-newton`), the server solves.
# - **Hyperparameters.** $\sigma = 10$ and $\gamma = 1/4$: the code's defaults. $\lambda = 10^{-2}$:
#   the code's MNIST example uses $\lambda = 10^{-3}$ with about 12,000 training images; we keep
#   its total regularisation $\lambda n \approx 12$ for our 1,347 images. $(\epsilon, \delta) =
#   (1, 10^{-4})$: ours (the paper's values were not retrieved). All fixed before any comparison
#   with $w_r$.
# - **Hessian.** `anchor` (default, ours): the server keeps the Hessian of the last training and
#   asks only the record's owner for one gradient; `current` (the released code's): every client
#   sends the Hessian of its remaining data at the current $w$ before each removal.
# - **Referee.** $w_r$: Newton from $w = 0$ on the retained data with the same $b$ (the paper's
#   comparison). Cost: bytes exchanged with the clients, counted by the pool for every measure.

# %%
FULL = os.environ.get("FULL") == "1"
SEEDS = (0, 1, 2) if FULL else (0,)
torch.set_num_threads(1)
REGIMES = {"certified (anchor)": {}, "Newton steps only (anchor, ε = ∞)": {"epsilon": math.inf},
           "certified (current)": {"hessian": "current"},
           "Newton steps only (current, ε = ∞)": {"hessian": "current", "epsilon": math.inf}}
defaults = CertifiedRemovalConfig()
regime = (f"`digits-records` at seed(s) {', '.join(map(str, SEEDS))}; λ = {defaults.lam}, σ = {defaults.sigma}, "
          f"(ε, δ) = ({defaults.epsilon:g}, {defaults.delta:g}), budget σε/c = {defaults.budget:.2f}")
print(regime)


def removal(seed: int, **settings) -> dict:
    """Train (cached), remove the 100 records, retrain w_r with the same b; numbers of one run."""
    sc = build_scenario("digits-records", seed)
    config = CertifiedRemovalConfig(**settings)
    run = cache.trained_federation(sc, method=CertifiedRemoval(config))
    cost, referee_cost = CostCounter(), CostCounter()
    start = time.perf_counter()
    state, trace = serve_removals(run, sc.request, config, cost)
    unlearn_time = time.perf_counter() - start
    start = time.perf_counter()
    referee = retrain(run, sc.request, config, referee_cost)
    retrain_time = time.perf_counter() - start
    w_o, w_u, w_r = run.final_state["weight"], state["weight"], referee["weight"]
    acc = {k: evaluate(sc, s, run.model)["test_acc"] for k, s in (("o", run.final_state), ("u", state), ("r", referee))}
    return {"rho_bytes": cost.bytes_communicated / referee_cost.bytes_communicated,
            "rho_time": unlearn_time / retrain_time, "distance": float((w_u - w_r).norm() / (w_o - w_r).norm()),
            "acc": acc, "trace": trace, "retrains": sum(not r.certified for r in trace),
            "certified_first": next((i for i, r in enumerate(trace) if not r.certified), len(trace)),
            "retrain_steps": referee_cost.server_steps}


runs = {name: [removal(seed, **settings) for seed in SEEDS] for name, settings in REGIMES.items()}

# %% [markdown]
# ## Removing 100 records one by one
#
# Per regime (median over seeds): cost relative to one retraining (bytes; wall time in this
# process, a benchmark figure only), removals certified before the first retraining, retrainings
# the budget triggered, $\lVert w_u - w_r \rVert / \lVert w_o - w_r \rVert$ and test accuracies.


# %%
def median(values):
    values = sorted(values)
    return values[len(values) // 2]


rows = ["| regime | ρ bytes | ρ time | certified before 1st retraining | retrainings | ‖w_u−w_r‖/‖w_o−w_r‖ "
        "| acc w_u | acc w_r | acc w_o |", "|---|---|---|---|---|---|---|---|---|"]
for name, per_seed in runs.items():
    m = {k: median([r[k] for r in per_seed]) for k in ("rho_bytes", "rho_time", "distance", "retrains",
                                                        "certified_first")}
    accs = {k: median([r["acc"][k] for r in per_seed]) for k in "uro"}
    rows.append(f"| {name} | {m['rho_bytes']:.3f} | {m['rho_time']:.2f} | {m['certified_first']} | {m['retrains']} "
                f"| {m['distance']:.4f} | {accs['u']:.3f} | {accs['r']:.3f} | {accs['o']:.3f} |")
display(Markdown(results.add("removals", "\n".join(rows) + f"\n\n{regime}; one retraining takes "
                             f"{runs['certified (anchor)'][0]['retrain_steps']} Newton steps.")))

# %% [markdown]
# The running bound $\beta$ over the removals (seed 0), with the budget: with the anchor Hessian
# the bound grows with the drift from $w_a$ and the records removed since; with the current
# Hessian (every client asked each time) it grows slowly. Each drop is a retraining.

# %%
fig, ax = plt.subplots(figsize=(7, 3.4))
for name in ("certified (anchor)", "certified (current)"):
    ax.plot(range(1, 101), [r.bound for r in runs[name][0]["trace"]], label=name)
ax.axhline(defaults.budget, color="grey", linestyle="--", label="budget σε/c")
ax.set(xlabel="records removed", ylabel="running residual bound β")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The σ sweep
#
# For each $\sigma$ (anchor Hessian, $(\epsilon, \delta) = (1, 10^{-4})$): removals certified
# before the first retraining, and the test accuracy of $w_o$ (seed 0).

# %%
sweep = [removal(SEEDS[0], sigma=s) for s in SIGMA_SWEEP]
fits = [r["certified_first"] for r in sweep]
accuracies = [r["acc"]["o"] for r in sweep]
fig, ax = plt.subplots(figsize=(7, 3.4))
ax.semilogx(SIGMA_SWEEP, fits, "o-", color="C0")
ax.set(xlabel="σ", ylabel="removals certified before retraining")
twin = ax.twinx()
twin.semilogx(SIGMA_SWEEP, accuracies, "s--", color="C1")
twin.set_ylabel("test accuracy of w_o", color="C1")
fig.tight_layout()
plt.show()
display(Markdown(results.add("sweep", "| σ | " + " | ".join(f"{s:g}" for s in SIGMA_SWEEP) + " |\n|---|"
                             + "---|" * len(SIGMA_SWEEP) + "\n| certified before retraining | "
                             + " | ".join(map(str, fits)) + " |\n| test accuracy of w_o | "
                             + " | ".join(f"{a:.3f}" for a in accuracies) + " |")))

# %% [markdown]
# The comparison engine's view (seed 0), as `fedunlearn bench` prints it: a method that trains
# its own kind of model is judged against that model retrained from scratch without the records
# ($w_r$, row "θ_r of certified-removal"), beside the federation's usual MLP referee and θ_o for
# context. Forget quality is the KS p-value between the forgotten records' losses under $w_u$
# and under $w_r$.

# %%
cmp = compare("digits-records", ["certified-removal"], seeds=SEEDS[:1], progress=False)
display(Markdown(results.add("engine", cmp.table(["test_acc", "forget_acc", "forget_loss", "mia_auc", "forget_quality"],
                                              costs=("comm",)))))

# %% [markdown]
# ## Reported vs reproduced


# %%
def verdict(holds: bool) -> str:
    return "holds" if holds else "does not hold"


newton, certified, current = (runs["Newton steps only (anchor, ε = ∞)"], runs["certified (anchor)"],
                              runs["Newton steps only (current, ε = ∞)"])
cheap = all(r["rho_bytes"] <= COST_SHARE for r in newton)
cheap_certified = all(r["rho_bytes"] <= COST_SHARE for r in certified)
close = all(r["distance"] <= DISTANCE_SHARE for rs in (newton, certified) for r in rs)
accurate = all(abs(r["acc"]["u"] - r["acc"]["r"]) <= ACCURACY_POINTS for rs in (newton, certified) for r in rs)
peak = fits.index(max(fits))
trade_off = fits[: peak + 1] == sorted(fits[: peak + 1]) and accuracies == sorted(accuracies, reverse=True)
cost_text = (f"100 Newton removals: ρ_bytes {median([r['rho_bytes'] for r in newton]):.3f} (pass ≤ {COST_SHARE:g}); "
             f"with the released code's per-removal Hessian {median([r['rho_bytes'] for r in current]):.1f}; "
             f"certified at (ε, δ) = (1, 1e-4), σ = 10 the budget triggers "
             f"{median([r['retrains'] for r in certified])} retrainings: ρ_bytes "
             f"{median([r['rho_bytes'] for r in certified]):.1f}")
close_text = (f"‖w_u−w_r‖/‖w_o−w_r‖ ≤ {max(r['distance'] for rs in (newton, certified) for r in rs):.4f} "
              f"(pass ≤ {DISTANCE_SHARE:g}); test accuracy of w_u within "
              f"{100 * max(abs(r['acc']['u'] - r['acc']['r']) for rs in (newton, certified) for r in rs):.1f} points "
              f"of w_r (pass ≤ {100 * ACCURACY_POINTS:g}); w_o is "
              f"{100 * median([abs(r['acc']['o'] - r['acc']['r']) for r in certified]):.1f} points away")
sweep_text = (f"σ = {SIGMA_SWEEP[0]:g} → {SIGMA_SWEEP[peak]:g}: certified removals {fits[0]} → {fits[peak]}; "
              f"at σ = {SIGMA_SWEEP[-1]:g}: {fits[-1]}; test accuracy {accuracies[0]:.3f} → {accuracies[-1]:.3f}")
display(Markdown(results.claims("claims", [
    (claims[0], cost_text, f"{verdict(cheap)} for the Newton steps; {verdict(cheap_certified)} under the "
     "certificate at this scale"),
    (claims[1], close_text, verdict(close and accurate)),
    (claims[2], sweep_text, f"{verdict(trade_off)} up to σ = {SIGMA_SWEEP[peak]:g}"
     + ("" if peak == len(SIGMA_SWEEP) - 1 else "; beyond it fewer removals fit (w is mostly b)")),
])))
results.add("regime", regime)

# %% [markdown]
# ## What not to conclude
#
# - **Not the paper's setting.** 1,347 digits images, not MNIST's 12,000 or LSUN's millions: the
#   residual bound shrinks with more data, so the paper's budgets cover many more removals than
#   ours. $\lambda$ is scaled from the code's MNIST example, $(\epsilon, \delta)$ is ours.
# - **Cost is bytes.** The anchor Hessian makes a removal one client's single gradient, but the
#   server still solves a $65 \times 65$ system per class per removal; wall time in this process
#   (shown above) is dominated by per-request overhead and is not the claim.
# - **The certificate is the bound's.** A looser bound (anchor) spends the budget sooner; the
#   model is equally close to $w_r$ either way.

# %%
print(f"saved {len(results.items)} results to {results.save()}")
