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
# # Compare: every method, every scenario
#
# Every method the catalog registers, on every scenario whose request it can serve, each judged
# against the model retrained from scratch **of the same seed** ($\theta_r$). The page is computed
# when the site is built, by the one comparison engine of `fedunlearn bench` (see
# [Evaluating unlearning](../../evaluating.md)); federations, oracles and method runs come from the
# shared cache, so the entry pages and this one train each of them once. Every method runs with
# its registered defaults (the paper's, or a validation split's; see each entry page), so read a
# row as "this method, as configured by its entry", not as the best the idea can do.
#
# **How to read a table.** Columns are grouped: *forgetting* metrics, *utility* metrics, and
# *cost* as ratios to retraining ($\rho_\text{steps}$: client steps; $\rho_\text{comm}$: bytes
# exchanged). Each cell holds the median over seeds; its second line the gap to $\theta_r$ and,
# where several seeds ran, the range [min, max] over them. ✓ marks a median gap within the retrain
# band $\max(\text{tol}, 2\sigma_r)$ ($\sigma_r$: the spread between two retrainings), ✗ one
# outside it. Rows are grouped by the survey's families, after the harness's controls
# (`do-nothing` serves $\theta_o$ unchanged; `continue-fedavg` drops the client and keeps
# training). Hover a column heading for its definition.
#
# **How to read a plot.** One point per method: cost on the horizontal axis (symmetric log: 0 is
# "no client work", 1 is retraining's), distance to $\theta_r$ on the vertical axis; the dashed
# line is the retrain band. Good methods sit low and to the left. Colour tells methods apart, the
# marker its family (○ control, △ perturbation, □ decomposition, ◇ incremental).
#
# Smoke size (what the site build runs): the backdoor scenario on three seeds, the other digits
# scenarios on seed 0, the language-model scenarios on seed 0 at the federation's first 6 rounds
# (the cut every entry page shares). `FULL=1` runs three seeds everywhere and the language
# scenarios' full 15 rounds.

# %% tags=["hide-input"]
import os
import tempfile
from pathlib import Path

import torch
from IPython.display import HTML, Image, Markdown, display

from fedunlearn import catalog
from fedunlearn.unlearning.bench import pareto_plot
from fedunlearn.unlearning.compare import compare, compare_sequential
from fedunlearn.unlearning.registry import CONTROLS, available_methods, methods_serving
from fedunlearn.unlearning.report import grouped_table
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

torch.set_num_threads(1)
FULL = os.environ.get("FULL") == "1"
BACKDOOR_SEEDS = [0, 1, 2]  # shared with the perturbation family's page
DIGITS_SEEDS = [0, 1, 2] if FULL else [0]
LM_SEEDS = [0, 1, 2] if FULL else [0]
LM_SIZE = {} if FULL else LM_SMOKE
PLOTS = Path(tempfile.mkdtemp())  # embedded in the page, not kept

DIGITS_UTILITY = ("test_acc", "retain_acc")
LM_FORGETTING = ("forget_quality", "privleak", "forget_el", "canary_exposure")
LM_UTILITY = ("model_utility", "test_logprob")


def serving(scenario_name):
    """Every registered method that serves the scenario with its defaults (the oracle aside)."""
    return methods_serving(build_scenario(scenario_name, 0))


def show(result, forgetting, utility, plot_metric=None, plot_utility=None):
    """The grouped table, then (given a metric) the Pareto plot of cost against distance to θ_r."""
    display(HTML(grouped_table(result, forgetting, utility)))
    if plot_metric:
        path = PLOTS / f"{result.scenario.replace(' ', '').replace('#', '-')}.png"
        display(Image(str(pareto_plot(result, path, metric=plot_metric, utility=plot_utility))))


def run(scenario_name, seeds=DIGITS_SEEDS, lm=False):
    methods = serving(scenario_name)
    return compare(scenario_name, methods, seeds=LM_SEEDS if lm else seeds, full=FULL, progress=False,
                   **(LM_SIZE if lm else {}))


# %% [markdown]
# ## Forget a backdoored client (digits-backdoor)
#
# Ten clients train a small network on scikit-learn's 8×8 digits; client 0 adds triggered copies
# of half its images labelled 0. The request forgets client 0. The attack success rate (ASR) is
# the clearest forgetting signal: $\theta_o$ keeps the backdoor, $\theta_r$ has none.

# %% tags=["hide-input"]
backdoor = run("digits-backdoor", BACKDOOR_SEEDS)
show(backdoor, ("asr", "forget_acc", "mia_auc", "forget_quality"), DIGITS_UTILITY, "asr", "test_acc")

# %% [markdown]
# ## Forget a client whose data the model memorised (digits-client)
#
# Small clients trained for many local epochs, so the model tells members from non-members; the
# request forgets client 0. Forgetting shows in the membership AUC and in the forget-set loss
# distribution (forget quality).

# %% tags=["hide-input"]
client = run("digits-client")
show(client, ("forget_acc", "forget_loss", "mia_auc", "forget_quality"), DIGITS_UTILITY, "mia_auc", "test_acc")

# %% [markdown]
# ## Forget a class (digits-class)
#
# Class 3 is forgotten from every client. $\theta_r$ never saw a 3, so its accuracy on them is 0;
# a method forgets when its forget accuracy falls to that level, and keeps utility when the other
# classes' accuracy holds.

# %% tags=["hide-input"]
klass = run("digits-class")
show(klass, ("forget_acc", "forget_loss", "mia_auc"), DIGITS_UTILITY, "forget_acc", "test_acc")

# %% [markdown]
# ## Forget records spread over the clients (digits-records)
#
# 100 seeded records of the `digits-class` federation, spread over its ten clients. Certified
# removal trains its own model (a loss-perturbed linear head) and is judged against that model
# retrained without the records (†). Forgetting 100 of 1,347 records barely moves these metrics:
# read this table mostly for cost and for what the methods do to utility.

# %% tags=["hide-input"]
records = run("digits-records")
show(records, ("forget_acc", "forget_loss", "mia_auc", "forget_quality"), ("test_acc",), "forget_loss", "test_acc")

# %% [markdown]
# ## Methods that need their own model
#
# Two entries change the model itself, so they run on a variant of `digits-class` built for them,
# beside the harness's controls on the same variant: class-discriminative pruning on a small CNN
# (`digits-class-cnn`), FedAU on a network with an auxiliary linear head (`digits-class-aux`).
# Methods already shown on `digits-class` are not repeated here.

# %% tags=["hide-input"]
shown_above = {label for result in (backdoor, client, klass, records) for label in result.methods}
own_model = []
for name in ("digits-class-cnn", "digits-class-aux"):
    display(Markdown(f"**{name}**"))
    methods = [m for m in serving(name) if m in CONTROLS or m not in shown_above]
    own_model.append(compare(name, methods, seeds=DIGITS_SEEDS, full=FULL, progress=False))
    show(own_model[-1], ("forget_acc", "forget_loss", "mia_auc"), DIGITS_UTILITY)

# %% [markdown]
# ## Forget a client of a federated LoRA language model (profiles-client)
#
# Four clients fine-tune LoRA adapters of a tiny Llama-style model on question–answer records
# about fictitious people, each with a planted four-digit secret; the request forgets client 0 and
# its five people. Forgetting: TOFU's forget quality (KS-test p-value of the forgotten people's
# truth ratios against $\theta_r$'s; 1 = indistinguishable), MUSE's PrivLeak, Jang et al.'s
# extraction likelihood $\mathrm{EL}_4$, and the canaries' exposure over all $10^4$ codes. Utility:
# model utility (harmonic mean of answer probability, ROUGE-L and truth score on retained and
# public people) and unseen people's answer log-probability. Definitions:
# [Evaluating unlearning](../../evaluating.md#language-model-metrics).

# %% tags=["hide-input"]
language = run("profiles-client", lm=True)
show(language, LM_FORGETTING, LM_UTILITY, "canary_exposure", "model_utility")

# %% [markdown]
# ## Forget one person (profiles-person)
#
# The same federation; the request forgets one person's records (canary included) from client 0,
# which keeps its other people. Only methods that serve record requests take part.

# %% tags=["hide-input"]
person = run("profiles-person", lm=True)
show(person, LM_FORGETTING, LM_UTILITY, "canary_exposure", "model_utility")

# %% [markdown]
# ## Serve requests one after another (profiles-sequential)
#
# Eight clients of three people each; clients 0, 1, 2 and 3 ask to be forgotten one after another
# (MUSE's sustainability criterion). Each method starts each request from what it served after
# the previous one (or from $\theta_o$ with the cumulative request, when it subtracts from or
# measures against $\theta_o$); each request is judged against $\theta_r$ retrained without every
# client forgotten so far, with the cost of that step alone. The table shows the last request
# served; the [Sequential requests](sequential-requests.ipynb) page follows each metric request by
# request.
#
# At smoke size this section serves the first two requests, retrains no second oracle (the bands
# are the tolerances), and runs the harness's controls and each family's control — the baselines
# every method of a family must beat — rather than all methods: two requests served by every
# method would add several CPU-minutes to the site's build, which has no room for them. The cell
# below says which methods ran and which wait for `FULL=1` (every method that serves client
# requests, on all four requests).

# %% tags=["hide-input"]
family_controls = [name for names in catalog.family_controls().values() for name in names]
sequence_methods = [m for m in serving("profiles-sequential") if FULL or m in (*CONTROLS, *family_controls)]
if not FULL:
    waiting = [m for m in serving("profiles-sequential") if m not in sequence_methods]
    display(Markdown(f"Run here: {', '.join(sequence_methods)}. With `FULL=1` also: {', '.join(waiting)}."))
steps = compare_sequential("profiles-sequential", sequence_methods, seeds=LM_SEEDS, full=FULL, progress=False,
                           requests=0 if FULL else 2, noise_floor=FULL, **LM_SIZE)
show(steps[-1], LM_FORGETTING, LM_UTILITY, "canary_exposure", "model_utility")

# %% [markdown]
# ## Coverage
#
# The build fails if a registered method is served by none of the scenarios above (a new entry
# then adds its scenario here, or names one of them among the scenarios it serves).

# %% tags=["hide-input"]
shown = {label.split("(")[0] for result in (backdoor, client, klass, records, *own_model, language, person, steps[-1])
         for label in result.methods}
registered = [name for name in available_methods() if name != "retrain"]
missing = [name for name in registered if name not in shown]
assert not missing, f"registered methods that no scenario of this page serves: {missing}"
display(Markdown(f"All {len(registered)} registered methods appear above (the oracle `retrain` is the referee)."))

# %% [markdown]
# ## What not to conclude
#
# - Defaults side by side are not a ranking of ideas: an entry page may show a regime where the
#   same method does better or worse (another budget, radius or noise scale).
# - The language-model tables rest on one smoke seed (no spread; the band then comes from one pair
#   of oracles). Run `FULL=1`, or `fedunlearn bench --scenario profiles-client --methods all
#   --seeds 3`, before quoting a verdict.
# - Digits and a 0.6 M-parameter model are stand-ins: they show whether a mechanism works, not how
#   it scales to CIFAR or to a 7 B model.
