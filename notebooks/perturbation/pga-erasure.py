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
# # Projected-gradient-ascent client erasure: ascend, stop early, repair in one round
#
# Halimi, Kadhe, Rawat and Baracaldo (2022) erase a client by letting it *reverse* its learning:
# starting from the average of the other clients' last local models $w_{\text{ref}}$, it
# maximises its own loss by projected gradient ascent inside an L2 ball around $w_{\text{ref}}$,
# stops early, and a few FedAvg rounds without it follow. The authors' notebook (MNIST, a
# backdoored client) reports the backdoor at 0 right after the ascent, with a dip in clean
# accuracy, and clean accuracy 96.9 % after one more round where retraining from scratch reaches
# 76.6 % after its own first round. This notebook checks those claims at laptop scale and runs the
# same method on a federated LoRA language model.
#
# Smoke size by default (one seed, about a minute and a half on two CPU cores, most of it the
# language model); `FULL=1` runs three seeds and the scenarios' larger configuration.

# %% [markdown]
# ## The claims (reported)

# %%
import os

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from fedunlearn import catalog
from fedunlearn.federated.costs import CostCounter
from fedunlearn.perturbation.pga_erasure import (
    AUTHORS_DIP,
    LM_RETAIN_FRACTION,
    MAX_RHO_STEPS,
    MIN_DAMAGE,
    MIN_DIP,
    REPAIR_ACCURACY_GAP,
    PGAConfig,
    PGAErasure,
    RetrainRounds,
    RetrainRoundsConfig,
    ascend,
    damages_retained,
    distance,
    erased_with_dip,
    repaired_in_one_round,
)
from fedunlearn.results import Results
from fedunlearn.unlearning import cache
from fedunlearn.unlearning.compare import LM_HEADLINE_METRICS, compare
from fedunlearn.unlearning.evaluate import evaluate
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

entry = catalog.get("pga-erasure")
claims = entry.claims
results = Results("pga-erasure")
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# The paper's own tables (EMNIST, CIFAR-10 in later versions) were not retrieved; the numbers above
# are the outputs saved in the authors' notebook (`IBM/federated-unlearning`), where the
# "backdoor accuracy" counts triggered non-9 test images predicted as 9 **plus** real 9s, so its
# floor is about 10 %, not 0.
#
# ## Setup
#
# - **Data.** scikit-learn's 8x8 digits **stand in for MNIST**, a 64-64 MLP for the notebook's
#   CNN. Scenario `digits-backdoor`: 10 IID clients, FedAvg for 20 rounds (40 with `FULL=1`),
#   every client in every round; client 0 adds triggered copies (a 2x2 patch) labelled 0 to half
#   of its images. Forget client 0. ASR counts triggered test images of the other classes
#   predicted as 0 (floor 0).
# - **Method** `pga-erasure`, default `PGAConfig`: $w_{\text{ref}}$ from $\theta_o$ and client 0's
#   last update; radius by the notebook's rule ($\delta^2$ = mean squared distance to 10 fresh
#   models / 3); SGD ascent at the notebook's lr 0.01 for at most its 5 epochs, one step per
#   check; after each step one retained client (client 1) reports the accuracy of the current
#   model on its data, and the ascent stops at the first step below $\tau$ = 0.669 times that of
#   $w_{\text{ref}}$ (the relative dip of the authors' run, 65.8 / 98.33; the paper leaves $\tau$
#   open); then one FedAvg round without client 0 with the federation's own schedule.
# - **Ablations** (config overrides): `repair_rounds=0` (the model right after the ascent),
#   `radius=inf` (no ball), `stop_ratio=0` (no early stop: the whole 5-epoch budget), and both.
# - **Controls.** $\theta_o$, `continue-fedavg` for one round, the paper's baseline
#   `retrain-rounds` (FedAvg from $w_0$ without client 0, stopped after $k$ rounds, same seeds),
#   and the referee $\theta_r$ (all 20 rounds). The comparison engine takes $\theta_o$, $\theta_r$
#   and a second retraining (the noise floor of each metric) from the shared cache.

# %%
FULL = os.environ.get("FULL") == "1"
SEEDS = (0, 1, 2) if FULL else (0,)
torch.set_num_threads(1)
INF = float("inf")
METRICS = ["test_acc", "retain_acc", "forget_acc", "asr"]
ROUNDS = (1, 2, 3, 5, 10)
AFTER = "pga-erasure[repair_rounds=0]"
NO_BALL = "pga-erasure[radius=inf,repair_rounds=0]"
BALL_ONLY = "pga-erasure[stop_ratio=0.0,repair_rounds=0]"
UNCONSTRAINED = "pga-erasure[radius=inf,stop_ratio=0.0,repair_rounds=0]"
UNCONSTRAINED_REPAIRED = "pga-erasure[radius=inf,stop_ratio=0.0]"
CONTINUE = "continue-fedavg[rounds=1]"
scenario = build_scenario("digits-backdoor", seed=SEEDS[0], full=FULL)
SIZE = "`FULL=1`" if FULL else "smoke size"
regime = f"`digits-backdoor` at seed(s) {', '.join(map(str, SEEDS))}, {scenario.config.rounds} rounds"
print(f"{SIZE}: {regime}")

# %% [markdown]
# ## Run

# %%
methods = ["pga-erasure", ("pga-erasure", {"repair_rounds": 0}), ("pga-erasure", {"radius": INF, "repair_rounds": 0}),
           ("pga-erasure", {"stop_ratio": 0.0, "repair_rounds": 0}),
           ("pga-erasure", {"radius": INF, "stop_ratio": 0.0, "repair_rounds": 0}),
           ("pga-erasure", {"radius": INF, "stop_ratio": 0.0}), ("continue-fedavg", {"rounds": 1}),
           *(("pga-erasure", {"repair_rounds": r}) for r in ROUNDS[1:]),
           *(RetrainRounds(RetrainRoundsConfig(r)) for r in ROUNDS)]
cmp = compare("digits-backdoor", methods, seeds=SEEDS, full=FULL, progress=False)
SHOWN = [AFTER, "pga-erasure", NO_BALL, BALL_ONLY, UNCONSTRAINED, UNCONSTRAINED_REPAIRED, CONTINUE, "retrain-rounds"]
display(Markdown(results.add("table", cmp.table(METRICS, SHOWN, costs=("steps", "comm")))))

# %% [markdown]
# ## The ascent step by step
#
# The same ascent replayed on the first seed's federation, every model evaluated (test accuracy,
# ASR) beside the accuracy the validating client reported: the method, the ball without the
# early stop, and neither (the 5-epoch budget).

# %%
run = cache.trained_federation(scenario)
method = PGAErasure()
reference = method.reference(run, scenario.request)
radius = method.radius(run, reference)
last = run.history.rounds[-1]
own = {k: last.global_state[k] + last.client_updates[0][k] for k in reference}


def trajectory(config: PGAConfig, ball: float) -> list[dict]:
    """Every check of one ascent: step, validation accuracy, test accuracy, ASR, distance."""
    rows = []

    def record(step, state, accuracy):
        metrics = evaluate(scenario, state, run.model)
        rows.append({"step": step, "validation": accuracy, "test_acc": metrics["test_acc"], "asr": metrics["asr"],
                     "distance": distance(state, reference)})

    ascend(run, reference, scenario.request, config, ball, CostCounter(), on_check=record)
    return rows


stopped = trajectory(method.config, radius)
ball_only = trajectory(PGAConfig(stop_ratio=0.0), radius)
free = trajectory(PGAConfig(stop_ratio=0.0, radius=INF), INF)
panels = ((stopped, "the method (early stop, ball)"), (ball_only, "ball, no stop"), (free, "no stop, no ball"))
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
for ax, (rows, title) in zip(axes, panels, strict=True):
    steps = [r["step"] for r in rows]
    for key, style in (("validation", "o-"), ("test_acc", "s--"), ("asr", "^-")):
        ax.plot(steps, [r[key] for r in rows], style, label=key.replace("_", " "), markersize=3)
    ax.axhline(AUTHORS_DIP * stopped[0]["validation"], color="grey", linestyle=":", label="τ")
    ax.set(title=title, xlabel="ascent steps", ylim=(-0.02, 1.02))
axes[0].legend(loc="center left")
fig.tight_layout()
plt.show()
stop = stopped[-1]
edge = next((r["step"] for r in ball_only if r["distance"] >= 0.999 * radius), None)
results.add("geometry", (
    f"δ = {radius:.2f} by the notebook's rule, while client 0's last local model lies {distance(reference, own):.2f} "
    f"from w_ref. The early stop fired after {stop['step']} steps at distance {stop['distance']:.2f} from w_ref "
    f"({stop['distance'] / radius:.0%} of δ): the projection never acted. Without the stop the ascent "
    + (f"reaches the ball's edge after {edge} steps, with test accuracy {ball_only[-1]['test_acc']:.1%} at the end of "
       f"its {ball_only[-1]['step']}-step budget" if edge is not None else "never reaches the ball's edge")))
print(results.items["geometry"])

# %% [markdown]
# ## After the ascent: rounds of FedAvg without client 0
#
# The paper's figure: the unlearned model and retraining from scratch, each followed over rounds
# without the target (median over seeds; dashed: $\theta_r$).

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
pga_labels = ["pga-erasure", *(f"pga-erasure[repair_rounds={r}]" for r in ROUNDS[1:])]
retrain_labels = ["retrain-rounds", *(f"retrain-rounds[rounds={r}]" for r in ROUNDS[1:])]
for ax, metric, name in ((axes[0], "test_acc", "test accuracy"), (axes[1], "asr", "backdoor ASR")):
    ax.plot(ROUNDS, [cmp.value(label, metric) for label in pga_labels], "o-", label="pga-erasure + rounds")
    ax.plot(ROUNDS, [cmp.value(label, metric) for label in retrain_labels], "s-", label="retraining from w0")
    ax.axhline(cmp.value("retrain", metric), color="grey", linestyle="--", label="θr (20 rounds)")
    ax.axhline(cmp.value("original", metric), color="black", linestyle=":", label="θo")
    ax.set(xlabel="FedAvg rounds without client 0", ylabel=name, ylim=(0, 1))
axes[0].legend(loc="lower right")
fig.tight_layout()
plt.show()
results.add("rounds", "; ".join(
    f"{r} round(s): pga-erasure {cmp.value(p, 'test_acc'):.1%} / ASR {cmp.value(p, 'asr'):.1%}, retraining "
    f"{cmp.value(q, 'test_acc'):.1%} / {cmp.value(q, 'asr'):.1%}"
    for r, p, q in zip(ROUNDS, pga_labels, retrain_labels, strict=True)))
print(results.items["rounds"])

# %% [markdown]
# ## Reported vs reproduced
#
# Pass rules (constants of the module, shared with the tests): right after the ascent, ASR in the
# retrain band and test accuracy at least `MIN_DIP` below $\theta_o$'s; after one round, test
# accuracy at least retraining's after its first round and no more than `REPAIR_ACCURACY_GAP`
# below $\theta_r$, at ρ_steps ≤ `MAX_RHO_STEPS`; unconstrained ascent leaves retained accuracy at
# least `MIN_DAMAGE` below the method's right after its ascent. Medians over the seeds.


# %%
def verdict(holds: bool) -> str:
    return "holds" if holds else "does not hold"


def pct(label: str, metric: str) -> str:
    return f"{cmp.value(label, metric):.1%}"


band = cmp.aggregate["band"]
dip = cmp.value("original", "test_acc") - cmp.value(AFTER, "test_acc")
erased = erased_with_dip(cmp, AFTER) and cmp.informative("asr")
repaired = repaired_in_one_round(cmp, "pga-erasure", "retrain-rounds")
asr_after_round = cmp.equivalent("pga-erasure", "asr")
damage = damages_retained(cmp, UNCONSTRAINED, AFTER)
ball_keeps = not damages_retained(cmp, BALL_ONLY, AFTER)
criteria = [
    ("backdoor gone right after the ascent, with a dip",
     f"ASR within ±{100 * band['asr']:.0f} points of θ_r; test accuracy ≥ {100 * MIN_DIP:.0f} points below θ_o",
     f"ASR {pct(AFTER, 'asr')} (θ_r {pct('retrain', 'asr')}, θ_o {pct('original', 'asr')}); test accuracy "
     f"{pct(AFTER, 'test_acc')}, {100 * dip:.1f} points below θ_o", verdict(erased)),
    ("one round repairs accuracy, cheaply",
     f"test accuracy ≥ retraining's first round and ≥ θ_r − {100 * REPAIR_ACCURACY_GAP:.0f} points; "
     f"ρ_steps ≤ {MAX_RHO_STEPS}",
     f"{pct('pga-erasure', 'test_acc')} vs {pct('retrain-rounds', 'test_acc')} (retraining, 1 round) and "
     f"{pct('retrain', 'test_acc')} (θ_r); ρ_steps {cmp.rho('pga-erasure'):.2f}", verdict(repaired)),
    ("backdoor stays out after that round", f"ASR within ±{100 * band['asr']:.0f} points of θ_r",
     f"ASR {pct('pga-erasure', 'asr')} (θ_r {pct('retrain', 'asr')}; continue-fedavg {pct(CONTINUE, 'asr')})",
     verdict(asr_after_round)),
    ("unconstrained ascent damages retained classes",
     f"retained accuracy ≥ {100 * MIN_DAMAGE:.0f} points below the method's after its ascent",
     f"no ball, no stop: {pct(UNCONSTRAINED, 'retain_acc')}; the method: {pct(AFTER, 'retain_acc')}; "
     f"no ball, stop on: {pct(NO_BALL, 'retain_acc')}; ball, no stop: {pct(BALL_ONLY, 'retain_acc')}",
     verdict(damage)),
    ("the ball alone keeps the model", f"ball without early stop: retained accuracy less than {100 * MIN_DAMAGE:.0f} "
     "points below the method's after its ascent",
     f"ball, no stop: {pct(BALL_ONLY, 'retain_acc')} (test {pct(BALL_ONLY, 'test_acc')}); δ = ∞ with the stop on: "
     f"{pct(NO_BALL, 'retain_acc')}, the method's own model", verdict(ball_keeps)),
]
display(Markdown(results.add("criteria", "\n".join(
    ["| criterion | pass rule | reproduced | verdict |", "|---|---|---|---|"]
    + [f"| {' | '.join(row)} |" for row in criteria]))))
display(Markdown(results.claims("claims", [
    (claims[0], criteria[0][2], criteria[0][3]),
    (claims[1], f"{criteria[1][2]}; backdoor after that round: {criteria[2][2]}",
     f"{criteria[1][3]} for accuracy; {criteria[2][3]} for the backdoor"),
    (claims[2], f"{criteria[4][2]}; no ball and no stop: {pct(UNCONSTRAINED, 'retain_acc')}", criteria[4][3]),
])))

# %% [markdown]
# ## The same method on a federated LoRA language model (profiles-client)
#
# Scenario `profiles-client`: a tiny Llama-style model (pretrained once on other fictitious
# people); 4 clients fine-tune LoRA adapters with FedAvg on question-answer records about their
# people (one canary secret each); forget client 0. At smoke size the federation is cut to its
# first 6 rounds (`LM_SMOKE`, shared by every entry notebook; `FULL=1`: 15 rounds); one seed. The
# state is the adapters, so $w_{\text{ref}}$, the ball, the projection and the fresh models of
# the radius rule (new adapters: $A$ random, $B = 0$) live in adapter space. The validation
# accuracy is client 1's teacher-forced answer-token accuracy on its records. Same default config
# as on digits (nothing tuned for the language model).

# %%
LM_SIZE = {} if FULL else LM_SMOKE
LM_METRICS = [*LM_HEADLINE_METRICS, "forget_ma", "unseen_ma", "retain_answer_prob"]
lm = compare("profiles-client", [("pga-erasure", {"repair_rounds": 0}), "pga-erasure"], seeds=(0,), progress=False,
             **LM_SIZE)
display(Markdown(results.add("lm_table", lm.table(LM_METRICS, costs=("steps", "comm")))))
lm_regime = ("`profiles-client` at seed 0, " + ("15 rounds" if FULL else f"its first {LM_SMOKE['rounds']} rounds"))


def lm_reading(label: str) -> tuple[str, bool]:
    """The dossier's LM criterion for one model, and whether it holds."""
    forgets = {m: lm.equivalent(label, f"forget_{m}") or lm.value(label, f"forget_{m}") <= lm.value(label, f"unseen_{m}")
               for m in ("el", "ma")}
    exposure = lm.equivalent(label, "canary_exposure")
    kept = lm.value(label, "retain_answer_prob") / lm.value("original", "retain_answer_prob")
    holds = all(forgets.values()) and exposure and kept >= LM_RETAIN_FRACTION
    text = (f"`{label}`: forget EL {lm.value(label, 'forget_el'):.3f} (θ_r {lm.value('retrain', 'forget_el'):.3f}, "
            f"unseen {lm.value(label, 'unseen_el'):.3f}); forget MA {lm.value(label, 'forget_ma'):.3f} (θ_r "
            f"{lm.value('retrain', 'forget_ma'):.3f}, unseen {lm.value(label, 'unseen_ma'):.3f}); canary exposure "
            f"{lm.value(label, 'canary_exposure'):.2f} bits (θ_r {lm.value('retrain', 'canary_exposure'):.2f}, "
            f"{'in' if exposure else 'outside'} the band); retained answer probability {kept:.2f}× θ_o's; forget "
            f"quality {lm.value(label, 'forget_quality'):.3f} — {verdict(holds)}")
    return text, holds


lm_rows = [lm_reading(label) for label in lm.methods]
display(Markdown(results.add("lm_reading", "\n".join(f"- {text}" for text, _ in lm_rows))))
display(Markdown("Regime of every number above: " + results.add("regime", f"{SIZE} ({regime}; the language "
                                                                      f"model: {lm_regime})")))

# %% [markdown]
# ## What not to conclude
#
# - **Not the paper's setting.** 8x8 digits and an MLP stand in for MNIST and a CNN; our trigger
#   sends every class to 0 (the authors': 80 % of the target's non-9 images relabelled 9); the
#   stop rule is the paper's (validation accuracy below $\tau$) with a $\tau$ taken from the
#   authors' run, not their code's rule (squared distance to the target's own model above 2.2);
#   no gradient clipping; the repair round uses the federation's schedule (one local epoch, lr
#   0.1), not the notebook's 50 steps at lr 0.01.
# - **The ball is not what protects here.** At the notebook's radius the early stop fires long
#   before the projection acts (as in the authors' own run, where the stop fired at squared
#   distance about 2.9 from the target's model and $\delta^2 = 152$). Remove the stop and the ball
#   alone lets the ascent wreck the model.
# - **Accuracy after one round is not forgetting.** Doing nothing or continuing FedAvg for a round
#   passes the utility rule too; the backdoor's ASR is the forgetting evidence, and after the
#   repair round it is partly back.
# - **Smoke size is one seed.** Run with `FULL=1` for three seeds before quoting a gap.

# %%
print(f"saved {len(results.items)} results to {results.save()}")
