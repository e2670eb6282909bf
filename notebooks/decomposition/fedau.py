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
# # FedAU: unlearning during learning with an auxiliary head
#
# Gu et al. (IJCAI 2024) pay for unlearning while the federation trains: beside the main head
# $W_1$, an auxiliary head $W_2$ on the same features learns *unlearning labels* (the class to
# forget on every example, or random wrong labels on the examples to forget). Forgetting is then a
# linear combination of the two heads, with no training. This notebook measures both sides of that
# trade on the digits: what the unlearning operation costs against one training round, whether the
# class or the backdoored records are forgotten, and what the auxiliary head costs up front.
#
# Runs at smoke size by default (one seed, about a minute on two CPU cores); `FULL=1` runs three
# seeds and the scenarios' larger configuration.

# %% [markdown]
# ## The claim (reported)

# %%
import os
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from fedunlearn import catalog
from fedunlearn.decomposition.fedau import (
    ACCURACY_POINTS,
    AUX_HEAD,
    OPERATION_SHARE,
    OTHER_CLASSES_POINTS,
    TARGET_CLASS_ACCURACY,
    case_states,
    class_accuracies,
    combine_heads,
    operation_flops,
    round_flops,
)
from fedunlearn.results import Results
from fedunlearn.unlearning.compare import compare, tolerance
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.scenarios import build_scenario

entry = catalog.get("fedau")
claims = entry.claims
results = Results("fedau")
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# The paper's tables (MNIST/LeNet, CIFAR-10/AlexNet, CIFAR-100/ResNet18) were not retrieved; only
# the abstract's claims and the released code's defaults (`Liar-Mask/FedAU`: `main_zgx.py`,
# `experiments/trainer_private.py`, `utils/args.py`) are checked here.
#
# ## Setup
#
# - **Data.** scikit-learn's 8x8 digits **stand in for MNIST**; 10 IID clients, FedAvg for 20
#   rounds (40 with `FULL=1`), every client every round, SGD lr 0.1, momentum 0.5, batch 16.
# - **Model.** The package's 64-64 MLP with an auxiliary linear head on its last hidden layer
#   (`AuxHeadMLP`): the released code's "last layer as the auxiliary module". Under plain FedAvg the
#   auxiliary head is idle, so the scenario's FedAvg model and its retraining $\theta_r$ are the
#   plain MLP's (the tests check this bit for bit).
# - **Class mode.** Scenario `digits-class-aux` (= `digits-class` on that model): forget class 3.
#   $W_2$ learns class 3 on every example; unlearning is $W \leftarrow W_1 - W_2$.
# - **Sample mode.** Scenario `digits-backdoor-records`: client 0 adds triggered copies (a bright
#   2x2 patch) labelled 0 to half of its images; forget those triggered records, keep its clean
#   ones. $W_2$ learns a random wrong label on each triggered record and the true label elsewhere;
#   unlearning is $W \leftarrow (1-\alpha) W_1 + \alpha W_2$ with the code's $\alpha = 0.9$.
# - **Referees.** Each claim says which: **FedAU's own oracle** (FedAU's training on the retained
#   data only, same seed: the retraining of FedAU's own model) and the **monolithic $\theta_r$**
#   (FedAvg retrained without the forgotten data), the common referee of every entry, for the
#   utility cost.

# %%
FULL = os.environ.get("FULL") == "1"
SEEDS = (0, 1, 2) if FULL else (0,)
torch.set_num_threads(1)
ALPHAS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
SPREAD_SEEDS = (0, 1, 2)  # the sample-mode check is repeated on three seeds (see below)
scenario = build_scenario("digits-class-aux", seed=SEEDS[0], full=FULL)
regime = (f"{'`FULL=1`' if FULL else 'smoke size'}: seed(s) {', '.join(map(str, SEEDS))}, "
          f"{scenario.config.rounds} rounds, {len(scenario.clients)} clients")
print(regime)

# %% [markdown]
# ## Run: the comparison engine
#
# `compare` trains (or takes from the cache) FedAU's federation and its own oracle, the scenario's
# FedAvg federation, $\theta_r$ and a second retraining that sets the noise floor, and judges
# FedAU against its own oracle (row "θ_r of fedau †"); the "θ_r (retrain)" row is the monolithic
# referee.

# %%
class_cmp = compare("digits-class-aux", ["fedau"], seeds=SEEDS, full=FULL, progress=False)
display(Markdown(results.add("class_table", class_cmp.table(["test_acc", "retain_acc", "forget_acc", "mia_auc"]))))
backdoor_cmp = compare("digits-backdoor-records", ["fedau"], seeds=SEEDS, full=FULL, progress=False)
display(Markdown(results.add("backdoor_table", backdoor_cmp.table(["test_acc", "retain_acc", "asr",
                                                                   "trigger_margin"]))))

# %% [markdown]
# ## Class mode, per class
#
# Test accuracy on class 3 and on the other classes, per model and seed (the engine's `forget_acc`
# is measured on the clients' class-3 training images; these are held-out images).

# %%
cases = {}
for seed in SEEDS:
    cases[("class", seed)] = case_states(build_scenario("digits-class-aux", seed=seed, full=FULL))
    cases[("backdoor", seed)] = case_states(build_scenario("digits-backdoor-records", seed=seed, full=FULL))

class_rows, class_checks = [], []
for seed in SEEDS:
    sc = build_scenario("digits-class-aux", seed=seed, full=FULL)
    case = cases[("class", seed)]
    models = {"θ_o (FedAvg)": (case.fedavg.final_state, case.fedavg.model),
              "θ_r (monolithic referee)": (case.retrain, case.fedavg.model),
              "FedAU θ_o (heads not combined)": (case.fedau.final_state, case.fedau.model),
              "FedAU's own oracle": (case.own_oracle.final_state, case.fedau.model),
              "FedAU θ_u = W_1 − W_2": (case.unlearned, case.fedau.model)}
    split = {name: class_accuracies(sc.task, model, state, sc.test, sc.request.label)
             for name, (state, model) in models.items()}
    class_rows += [f"| {seed} | {name} | {s.target:.3f} | {s.others:.3f} |" for name, s in split.items()]
    u, r, own = split["FedAU θ_u = W_1 − W_2"], split["θ_r (monolithic referee)"], split["FedAU's own oracle"]
    class_checks.append({"target": u.target, "others_gap_r": u.others - r.others, "others_gap_own": u.others - own.others,
                         "control_target": split["FedAU θ_o (heads not combined)"].target})
display(Markdown(results.add("class_split", "| seed | model | class-3 accuracy | other classes |\n|---|---|---|---|\n"
                             + "\n".join(class_rows))))

# %% [markdown]
# ## Sample mode: the backdoor as $\alpha$ moves
#
# $W = (1-\alpha) W_1 + \alpha W_2$ for $\alpha$ from 0 ($\theta_o$) to 1 ($W_2$ alone), seed
# (the first seed): attack success rate and test accuracy; dashed: FedAU's own oracle, dotted: the
# monolithic $\theta_r$. The code's default is $\alpha = 0.9$.

# %%
sc = build_scenario("digits-backdoor-records", seed=SEEDS[0], full=FULL)
case = cases[("backdoor", SEEDS[0])]
sweep = [evaluate(sc, combine_heads(case.fedau.final_state, "random", a) if a > 0 else case.fedau.final_state,
                  case.fedau.model) for a in ALPHAS]
own = evaluate(sc, case.own_oracle.final_state, case.fedau.model)
mono = evaluate(sc, case.retrain, case.fedavg.model)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharex=True)
for ax, metric, label in ((axes[0], "asr", "attack success rate"), (axes[1], "test_acc", "test accuracy")):
    ax.plot(ALPHAS, [m[metric] for m in sweep], "o-", label="FedAU")
    ax.axhline(own[metric], color="grey", linestyle="--", label="FedAU's own oracle")
    ax.axhline(mono[metric], color="black", linestyle=":", label="monolithic θ_r")
    ax.set(xlabel="α", ylabel=label)
axes[0].legend()
fig.tight_layout()
plt.show()
display(Markdown(results.add("alpha_sweep", "| α | " + " | ".join(f"{a:g}" for a in ALPHAS) + " |\n|---|"
                             + "---|" * len(ALPHAS) + "\n| ASR | " + " | ".join(f"{m['asr']:.3f}" for m in sweep)
                             + " |\n| test accuracy | " + " | ".join(f"{m['test_acc']:.3f}" for m in sweep) + " |")))

backdoor_checks = []
for seed in SEEDS:
    sc = build_scenario("digits-backdoor-records", seed=seed, full=FULL)
    case = cases[("backdoor", seed)]
    u = evaluate(sc, case.unlearned, case.fedau.model)
    own = evaluate(sc, case.own_oracle.final_state, case.fedau.model)
    mono = evaluate(sc, case.retrain, case.fedavg.model)
    original = evaluate(sc, case.fedau.final_state, case.fedau.model)
    backdoor_checks.append({"asr": u["asr"], "asr_own": own["asr"], "asr_mono": mono["asr"], "asr_o": original["asr"],
                            "acc": u["test_acc"], "acc_mono": mono["test_acc"], "margin": u["trigger_margin"],
                            "margin_own": own["trigger_margin"], "margin_o": original["trigger_margin"]})
margin_gap = max(b["margin"] - b["margin_own"] for b in backdoor_checks)
results.add("margin", f"after the combination it is {max(b['margin'] for b in backdoor_checks):.2f} (FedAU's θ_o "
            f"{min(b['margin_o'] for b in backdoor_checks):.2f}, FedAU's own oracle "
            f"{max(b['margin_own'] for b in backdoor_checks):.2f}), so the trigger is "
            + ("suppressed less than retraining suppresses it" if margin_gap > 0 else "suppressed at least as much as "
               "retraining suppresses it") + " even where the attack no longer succeeds")

# %% [markdown]
# ## Sample mode over three seeds
#
# At $\alpha = 0.9$ the served last layer is mostly $W_2$, the head of the one client that holds the
# triggered records, trained on that client's data alone. Its accuracy depends on that client's
# data, so the sample-mode check is repeated on seeds 0, 1 and 2 (the federation is small enough to
# train three times here).

# %%
spread_cmp = backdoor_cmp if len(SEEDS) >= 3 else compare("digits-backdoor-records", ["fedau"], seeds=SPREAD_SEEDS,
                                                              full=FULL, progress=False)
spread = [{"seed": r["seed"], "acc": r["methods"]["fedau"]["metrics"]["test_acc"], "acc_mono": r["oracle"]["test_acc"],
           "asr": r["methods"]["fedau"]["metrics"]["asr"], "asr_own": r["methods"]["fedau"]["own_oracle"]["asr"]}
          for r in spread_cmp.per_seed]
display(Markdown(results.add("spread", "| seed | ASR (FedAU θ_u) | ASR (own oracle) | test accuracy (FedAU θ_u) | "
                             "test accuracy (monolithic θ_r) |\n|---|---|---|---|---|\n" + "\n".join(
                                 f"| {r['seed']} | {r['asr']:.3f} | {r['asr_own']:.3f} | {r['acc']:.3f} | {r['acc_mono']:.3f} |"
                                 for r in spread))))
spread_asr = all(abs(r["asr"] - r["asr_own"]) <= tolerance("asr") for r in spread)
spread_acc = [r["seed"] for r in spread if r["acc"] < r["acc_mono"] - ACCURACY_POINTS]

# %% [markdown]
# ## Cost: the unlearning operation against one round, and the up-front price
#
# Counted, not timed: the operation's floating-point operations (one per head entry for
# $W_1 - W_2$, three for the $\alpha$ mix) against one training round's client FLOPs (client steps
# of a round × batch × 6 FLOPs per weight for a forward and backward pass): the pass criterion.
# For context, its one server operation against the round's client steps (a linear combination
# counted as one step, like an SGD step of a whole batch). Timings in this process are shown as a
# benchmark figure only. Up front: FedAU trains the same steps as FedAvg, plus the auxiliary head in each
# (FLOPs counted), exchanges the same bytes (the idle head travels in FedAvg's state too), and
# stores one extra head.

# %%
cost_rows, shares = [], []
for (mode, seed), case in sorted(cases.items()):
    run = case.fedau
    steps_per_round = run.cost.client_steps / run.config.rounds
    kind = "class" if mode == "class" else "random"
    flops_share = operation_flops(case.unlearned, kind) / round_flops(run.final_state, steps_per_round,
                                                                     run.config.batch_size)
    step_share = case.unlearning_cost.server_steps / steps_per_round
    start = time.perf_counter()
    for _ in range(100):
        combine_heads(run.final_state, kind, 0.9)
    op_time = (time.perf_counter() - start) / 100
    time_share = op_time / (run.cost.wall_time_s / run.config.rounds)
    extra_flops = (round_flops(run.final_state, 1, 1) / round_flops(run.final_state, 1, 1, aux=False)) - 1
    head = sum(run.final_state[k].numel() for k in AUX_HEAD)
    params = sum(v.numel() for k, v in run.final_state.items() if k not in AUX_HEAD)
    wall_ratio = run.cost.wall_time_s / case.fedavg.cost.wall_time_s
    shares.append((flops_share, step_share, case.unlearning_cost.client_steps))
    cost_rows.append(f"| {mode} | {seed} | {flops_share:.1e} | {step_share:.4f} | {time_share:.1e} | "
                     f"+{100 * extra_flops:.1f} % | {wall_ratio:.2f} | "
                     f"{run.cost.bytes_communicated / case.fedavg.cost.bytes_communicated:.2f} | {head} ({100 * head / params:.1f} %) |")
display(Markdown(results.add("costs", "| mode | seed | operation / round (FLOPs) | server ops / round's client steps "
                             "| operation / round (time, benchmark) | extra training FLOPs | training wall time "
                             "FedAU / FedAvg (benchmark) | bytes FedAU / FedAvg | extra parameters stored |\n"
                             "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(cost_rows))))

# %% [markdown]
# ## Reported vs reproduced

# %%
def verdict(holds: bool) -> str:
    return "holds" if holds else "does not hold"


cheap = all(f <= OPERATION_SHARE and c == 0 for f, _, c in shares)
cheap_text = (f"unlearning: 0 client steps, 0 bytes; ≤ {max(f for f, _, _ in shares):.1e} of one round's client "
              f"FLOPs (pass ≤ {OPERATION_SHARE:g}, against a round of FedAU's own training); counted in steps, its one "
              f"server operation is {max(s for _, s, _ in shares):.4f} of a round's client steps, but it is a single "
              "linear combination of two heads, not an SGD step")
class_ok = all(c["target"] <= TARGET_CLASS_ACCURACY and abs(c["others_gap_r"]) <= OTHER_CLASSES_POINTS
               for c in class_checks)
class_control = all(c["control_target"] > TARGET_CLASS_ACCURACY for c in class_checks)
backdoor_ok = all(abs(b["asr"] - b["asr_own"]) <= tolerance("asr") and b["asr"] <= b["asr_mono"] + tolerance("asr")
                  and b["acc"] >= b["acc_mono"] - ACCURACY_POINTS for b in backdoor_checks)
backdoor_control = all(abs(b["asr_o"] - b["asr_own"]) > tolerance("asr") for b in backdoor_checks)
effect_text = (
    f"class mode: class-3 test accuracy {max(c['target'] for c in class_checks):.3f} (pass ≤ {TARGET_CLASS_ACCURACY:g}; "
    f"θ_o of FedAU {min(c['control_target'] for c in class_checks):.3f}), other classes "
    f"{100 * max(abs(c['others_gap_r']) for c in class_checks):.1f} points from the monolithic θ_r "
    f"({100 * max(abs(c['others_gap_own']) for c in class_checks):.1f} from FedAU's own oracle; pass ≤ "
    f"{100 * OTHER_CLASSES_POINTS:g}); sample mode: ASR {max(b['asr'] for b in backdoor_checks):.3f} (FedAU's own "
    f"oracle {max(b['asr_own'] for b in backdoor_checks):.3f}, monolithic θ_r {max(b['asr_mono'] for b in backdoor_checks):.3f}, "
    f"FedAU θ_o {min(b['asr_o'] for b in backdoor_checks):.3f}; band {tolerance('asr'):g}), test accuracy "
    f"{min(b['acc'] - b['acc_mono'] for b in backdoor_checks):+.3f} against the monolithic θ_r (pass ≥ −{ACCURACY_POINTS:g})")
first = cases[("class", SEEDS[0])].fedau.final_state
extra = round_flops(first, 1, 1) / round_flops(first, 1, 1, aux=False) - 1
light_text = (f"the same client steps and bytes as FedAvg; +{100 * extra:.1f} % client FLOPs per step (one more "
              "last layer); one extra head stored; see the cost table for the measured wall time")
display(Markdown(results.claims("claims", [
    (claims[0], cheap_text, verdict(cheap)),
    (claims[1], effect_text, f"{verdict(class_ok)} in class mode (control: θ_o of FedAU "
     f"{'keeps' if class_control else 'does not keep'} the class); {verdict(backdoor_ok)} in sample mode "
     f"(control: do-nothing {'outside' if backdoor_control else 'inside'} the ASR band) at seed(s) "
     f"{', '.join(map(str, SEEDS))}; over seeds {', '.join(map(str, SPREAD_SEEDS))} the ASR stays in the band "
     f"{'at every seed' if spread_asr else 'not at every seed'} and test accuracy falls below θ_r − "
     f"{100 * ACCURACY_POINTS:g} points " + (f"at seed(s) {', '.join(map(str, spread_acc))} (down to "
     f"{100 * max(r['acc_mono'] - r['acc'] for r in spread):.1f} points)" if spread_acc else "at no seed")
     + "; client mode not run here"),
    (claims[2], light_text, verdict(extra <= 1.0)),
])))
results.add("regime", regime)

# %% [markdown]
# ## What not to conclude
#
# - **Not the paper's setting.** Digits and a 64-64 MLP, not MNIST/LeNet or CIFAR; 20 rounds, not
#   200; one seed at smoke size. The paper's own numbers were not retrieved.
# - **The request is declared before training.** FedAU forgets only what its auxiliary head was
#   trained for: the class or the records named before the federation trained. A request that
#   arrives later needs another training (or another head), which this entry refuses rather than
#   approximates.
# - **$W_2$ is federated here.** Every client trains it and FedAvg averages it, where the released
#   code keeps one per unlearning client; how much that changes the result was not measured.
# - **Cheap is by construction.** The operation touches one layer; the claim that matters is
#   whether the combined head forgets and keeps utility, judged against the referees above.

# %%
print(f"saved {len(results.items)} results to {results.save()}")
