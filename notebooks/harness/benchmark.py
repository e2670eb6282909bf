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
# # Benchmark: every method against the retrain oracle
#
# This page is computed when the site is built, by the same harness as
# `fedunlearn bench` (see [Evaluating unlearning](../../evaluating.md)). Every method the catalog
# registers is run on the same scenarios and seeds, evaluated by the one evaluation function and
# compared with the model retrained from scratch **of the same seed**. Numbers below are computed
# here, never typed in. Smoke size: one seed (medians of one value — read the gaps as indicative);
# `FULL=1` runs three seeds and the larger scenarios.
#
# Data stand-ins: scikit-learn's bundled 8×8 digits for the MNIST/CIFAR case studies of the
# papers; a tiny Llama-style model with LoRA adapters on fictitious people for a federated LLM.

# %%
import os
import tempfile
from pathlib import Path

import torch
from IPython.display import Image, Markdown, display

from fedunlearn.unlearning.bench import pareto_plot
from fedunlearn.unlearning.compare import LM_HEADLINE_METRICS, compare
from fedunlearn.unlearning.registry import methods_serving
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

torch.set_num_threads(1)
FULL = os.environ.get("FULL") == "1"
SEEDS = [0, 1, 2] if FULL else [0]


def methods_for(scenario_name):
    """Every registered method that serves the scenario (its request and kind), not the oracle."""
    return methods_serving(build_scenario(scenario_name, 0))


# %% [markdown]
# ## Backdoored client (digits-backdoor)
#
# Client 0 of 10 adds triggered copies of half its images labelled 0; the request forgets client 0.
# The attack success rate (ASR) is the forgetting signal here: θ_o keeps the backdoor, θ_r has
# none. ✓ marks a metric within the retrain band max(tolerance, 2σ_r).

# %%
methods = methods_for("digits-backdoor")
print("methods:", ", ".join(methods))
backdoor = compare("digits-backdoor", methods, seeds=SEEDS, full=FULL, progress=False)
display(Markdown(backdoor.table()))

# %%
plot_path = Path(tempfile.mkdtemp()) / "digits-backdoor.png"  # embedded in the page, not kept
display(Image(str(pareto_plot(backdoor, plot_path, metric="asr"))))

# %% [markdown]
# ## Federated LoRA language model (profiles-client)
#
# Four clients fine-tune LoRA adapters of a tiny causal LM on question–answer records about
# fictitious people (each with a planted four-digit secret); the request forgets client 0 and its
# people. Forgetting shows in TOFU's forget quality, MUSE's PrivLeak, Jang et al.'s EL/MA (beside
# their unseen-people thresholds) and the canaries' exposure over all 10⁴ codes (beside the
# exposure of unseen people's canaries); every metric is defined on
# [Evaluating unlearning](../../evaluating.md#language-model-metrics). At smoke size
# the federation trains its first 6 rounds (`LM_SMOKE`, the cut the entries' notebooks share);
# `FULL=1` runs the scenario's 15 rounds and every method.

# %%
lm_methods = [m for m in methods_for("profiles-client") if FULL or m in ("do-nothing", "continue-fedavg")]
language = compare("profiles-client", lm_methods, seeds=SEEDS, full=FULL, progress=False,
                   **({} if FULL else LM_SMOKE))
display(Markdown(language.table([*LM_HEADLINE_METRICS, "forget_ma", "unseen_ma", "canary_extraction",
                                 "mia_auc_loss", "forget_logprob", "retain_logprob"])))

# %% [markdown]
# The sequential-requests scenario (MUSE's sustainability criterion) has its own page:
# [Sequential requests](sequential-requests.ipynb).

# %% [markdown]
# ## What not to conclude
#
# - One smoke seed gives no spread; the retrain band then rests on one pair of oracles. Run
#   `FULL=1` (or `fedunlearn bench --seeds 3`) before quoting a verdict.
# - Digits and a 0.6 M-parameter model are stand-ins: they show whether a mechanism works, not how
#   it scales to CIFAR or to a 7 B model.
# - In the smoke run only the controls run on the language scenario; the entries' notebooks run
#   each method there.
