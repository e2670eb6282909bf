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
# # The perturbation family side by side
#
# Every method of the [perturbation family](../../taxonomy.md#perturbation) — they change the
# trained weights directly (ascent on the forgotten data, a preference loss against the original
# model, subtraction plus noise, a Newton step) — and the family's control, the **negated client
# update** (`negated-update`, after Mora et al., arXiv 2504.05822: the forgetting client's ordinary
# update from θ_o, applied with a minus sign, then the same recovery rounds as `continue-fedavg`).
# A perturbation method that cannot beat that one-round, history-free step on forgetting or on
# cost has no case.
#
# This page is computed when the site is built, by the comparison engine of `fedunlearn bench`
# (see [Evaluating unlearning](../../evaluating.md)); every metric is judged against the model
# retrained from scratch **of the same seed**, and numbers are computed here, never typed in. Each
# method runs with its entry's defaults (hyperparameters from the paper or a validation split,
# see each entry page). The plots put utility against forgetting, one point per method (median over
# seeds), coloured by ρ_steps (client steps / retraining's); the green rectangle is the retrain
# band around θ_r: a point inside it is retrain-equivalent on both axes.

# %% tags=["hide-input"]
import os
import tempfile
from pathlib import Path

import torch
from IPython.display import Image, Markdown, display

from fedunlearn import catalog
from fedunlearn.unlearning.bench import tradeoff_plot
from fedunlearn.unlearning.compare import LM_HEADLINE_METRICS, compare
from fedunlearn.unlearning.registry import methods_serving
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

torch.set_num_threads(1)
FULL = os.environ.get("FULL") == "1"
FAMILY = "perturbation"
DIGITS_SEEDS = [0, 1, 2, 3, 4] if FULL else [0, 1, 2]
LM_SEEDS = [0, 1, 2] if FULL else [0]
PLOTS = Path(tempfile.mkdtemp())  # embedded in the page, not kept

members = [name for entry in catalog.entries() if entry.family == FAMILY for name in entry.methods]
controls = list(catalog.family_controls().get(FAMILY, ()))


def methods_for(scenario_name):
    """The family's methods and control that serve the scenario's request, with the harness's
    controls (θ_o unchanged, and continue-FedAvg)."""
    serving = methods_serving(build_scenario(scenario_name, 0))
    return ["do-nothing", "continue-fedavg", *(m for m in members + controls if m in serving)]


print("family methods:", ", ".join(members), "| family control:", ", ".join(controls))

# %% [markdown]
# ## Backdoored client (digits-backdoor)
#
# Client 0 of 10 adds triggered copies of half its images labelled 0; the request forgets client 0.
# The attack success rate (ASR) is the forgetting signal (θ_o keeps the backdoor, θ_r has none);
# test accuracy is the utility. ✓ marks a metric within the retrain band max(tolerance, 2σ_r).
# Methods that do not serve this scenario (certified removal forgets records; knowledge unlearning
# measures text memorisation) are compared on their own pages.

# %% tags=["hide-input"]
digits = compare("digits-backdoor", methods_for("digits-backdoor"), seeds=DIGITS_SEEDS, progress=False)
display(Markdown(digits.table(["test_acc", "retain_acc", "asr", "trigger_margin", "forget_quality"])))
display(Image(str(tradeoff_plot(digits, PLOTS / "digits.png", forgetting="asr", utility="test_acc",
                                title="digits-backdoor: test accuracy vs ASR"))))

# %% [markdown]
# ## Federated LoRA language model (profiles-client)
#
# Four clients fine-tune LoRA adapters of a tiny causal LM on question–answer records about
# fictitious people; the request forgets client 0 and its five people (a quarter of all people).
# Forgetting is TOFU's forget quality (the KS-test p-value between the forgotten people's
# truth ratios under the model and under θ_r: 1 means indistinguishable from retraining) and the
# canaries' exposure; utility is model utility (harmonic mean of the retained and public people's
# answer probability, ROUGE-L and truth ratio). Definitions:
# [Evaluating unlearning](../../evaluating.md#language-model-metrics). Smoke size: the federation's
# first 6 rounds (`LM_SMOKE`, the cut the entries' notebooks share), one seed; `FULL=1` runs three.

# %% tags=["hide-input"]
language = compare("profiles-client", methods_for("profiles-client"), seeds=LM_SEEDS, progress=False, **LM_SMOKE)
display(Markdown(language.table(LM_HEADLINE_METRICS)))
display(Image(str(tradeoff_plot(language, PLOTS / "language.png", forgetting="forget_quality",
                                utility="model_utility",
                                title="profiles-client: model utility vs forget quality"))))

# %% [markdown]
# ## One person's records (profiles-person)
#
# The same federation; the request forgets one person's records (canary included) from client 0,
# which keeps its other people. Only the methods that serve record requests take part.

# %% tags=["hide-input"]
person = compare("profiles-person", methods_for("profiles-person"), seeds=LM_SEEDS, progress=False, **LM_SMOKE)
display(Markdown(person.table(LM_HEADLINE_METRICS)))

# %% [markdown]
# ## Records spread over the clients (digits-records)
#
# 100 seeded records of the digits federation, spread over its 10 clients. Certified removal
# trains its own model (a loss-perturbed linear head) and is judged against that model retrained
# without the records (its row "θ_r of certified-removal", marked †); the others against the MLP
# retrained by FedAvg. Forgetting 100 of 1,347 records barely moves these metrics, so read the
# table for cost and for what the methods do to utility. No plot: the two referees differ.

# %% tags=["hide-input"]
records = compare("digits-records", methods_for("digits-records"), seeds=DIGITS_SEEDS, progress=False)
display(Markdown(records.table(["test_acc", "forget_acc", "forget_loss", "mia_auc", "forget_quality"],
                               costs=("steps", "comm"))))

# %% [markdown]
# ## What not to conclude
#
# - Each method runs with its entry's defaults; an entry page may show a regime where the same
#   method does better or worse (e.g. another radius, budget or noise scale). Read this page as
#   "the defaults side by side", not as a ranking of the ideas.
# - The language-model row rests on one smoke seed (no spread): the band then comes from one pair
#   of oracles. Run `FULL=1` (or `fedunlearn bench --seeds 3`) before quoting a verdict.
# - Digits and a 0.6 M-parameter model are stand-ins: they show whether a mechanism works, not how
#   it scales.
