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
# # Sequential requests: forgetting one client after another
#
# MUSE's sixth criterion (sustainability; Shi et al. 2025) asks whether a method keeps working when
# requests arrive one after another. This page is computed when the site is built, by the same
# engine as `fedunlearn bench --scenario profiles-sequential` (see
# [Evaluating unlearning](../../evaluating.md#language-model-metrics) for every metric). Smoke size:
# one seed, the first 6 rounds of federated training, the first two requests, the two controls;
# `FULL=1` runs three seeds, the scenario's 15 rounds, all four requests and every method that
# serves client requests. The [Compare](compare.ipynb) page puts the last request's results beside
# every other scenario's, with the families' controls too.

# %% tags=["hide-input"]
import os
import tempfile
from pathlib import Path

import torch
from IPython.display import Image, Markdown, display

from fedunlearn.unlearning.bench import sequence_plot
from fedunlearn.unlearning.compare import LM_HEADLINE_METRICS, compare_sequential
from fedunlearn.unlearning.registry import methods_serving
from fedunlearn.unlearning.scenarios import LM_SMOKE, build_scenario

torch.set_num_threads(1)
FULL = os.environ.get("FULL") == "1"
SEEDS = [0, 1, 2] if FULL else [0]
#: Methods at smoke size (FULL=1 runs every one that serves client requests).
SEQUENCE_SMOKE = ("do-nothing", "continue-fedavg")
#: Requests served at smoke size (each one retrains θ_r without every client forgotten so far; the
#: second oracle that measures the noise floor runs with FULL=1 only, so the smoke bands are the tolerances).
REQUESTS = 0 if FULL else 2


def methods_for(scenario_name):
    """Every registered method that serves the scenario (its request and kind), not the oracle."""
    return methods_serving(build_scenario(scenario_name, 0))


# %% [markdown]
# ## The scenario
#
# `profiles-sequential`: eight clients of three people; clients 0, 1, 2 and 3 ask to be forgotten one after another
# (at smoke size the first two requests are served).
# Each request is judged against θ_r retrained without every client forgotten so far, with the cost
# of that step alone. A method starts each request from the model it served after the previous one;
# methods that subtract from or measure against θ_o start from θ_o with the cumulative request. The
# panels follow the main metrics per request, θ_r dashed.

# %% tags=["hide-input"]
sequence_methods = [m for m in methods_for("profiles-sequential") if FULL or m in SEQUENCE_SMOKE]
steps = compare_sequential("profiles-sequential", sequence_methods, seeds=SEEDS, full=FULL, progress=False,
                           requests=REQUESTS, noise_floor=FULL, **({} if FULL else LM_SMOKE))
sequence_path = Path(tempfile.mkdtemp()) / "profiles-sequential.png"
display(Image(str(sequence_plot(steps, sequence_path))))
columns = list(LM_HEADLINE_METRICS)
for k, step in enumerate(steps):
    display(Markdown(f"**Request {k + 1}** (clients {step.per_seed[0]['forgotten']} forgotten)\n\n"
                     + step.table(metrics=columns)))

# %% [markdown]
# ## What not to conclude
#
# - One smoke seed gives no spread, and the controls only show that the metrics track the growing
#   request; run `FULL=1` (or `fedunlearn bench --scenario profiles-sequential --methods all --seeds 3`)
#   to compare methods.
# - A method marked "starts from θ_o" keeps θ_o and its history after serving a request; its good
#   numbers here rest on a server that still holds the forgotten clients' contributions.
