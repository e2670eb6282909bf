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
# # FedIT: federated instruction tuning through LoRA adapters
#
# Zhang et al. (FedIT, the *Shepherd* framework) let many clients instruction-tune one language
# model without pooling their instructions: every client trains LoRA adapters (Hu et al.) on its
# own data, sends only the adapters, and the server averages them with FedAvg. The paper's
# evidence is that the federated model answers better (judged by GPT-4) than a model tuned on one
# client's instructions alone.
#
# This notebook repeats the *shape* of that experiment at laptop scale and measures two things the
# rest of this knowledge base relies on: (1) the federated adapter absorbs every client's private
# facts, which a one-client model cannot know; (2) the bytes that travel are the adapters only.
#
# Smoke size by default (about a minute on two CPU cores, plus a one-time pretraining of the
# tiny base model of about half a minute that is cached afterwards); `FULL=1` in the environment
# runs twice as many people per client and twice the rounds.

# %% [markdown]
# ## The claim (reported)
#
# The claims as the entry records them (`fedunlearn.catalog`), not retyped:

# %%
import os
import time
import warnings
from dataclasses import replace

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from fedunlearn import catalog
from fedunlearn.federated.costs import CostCounter, state_bytes
from fedunlearn.federated.loop import run_federation
from fedunlearn.foundations.fedit import (
    PROFILES_FEDERATION,
    LoraCausalLMTask,
    greedy_answer,
    greedy_extracted,
    profile_clients,
    record_logprobs,
)
from fedunlearn.models.tiny_lm import load_base_model

entry = catalog.get("fedit")
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# ## Setup
#
# | | FedIT paper | here |
# |---|---|---|
# | base model | LLaMA-7B (Shepherd's default adapters: $r = 8$ on the attention projections) | a tiny Llama-style model (3 layers, width 128, byte tokenizer, ~0.6 M parameters) pretrained for a few hundred steps on *other* fictitious people, so it knows the question format but none of the clients' facts; LoRA $r = 16$ on every linear layer |
# | data | Databricks-Dolly-15k instructions spread over clients by category | **synthetic profiles stand in for Dolly**: fictitious people (Faker, seeded) rendered as question-answer records (birth city, birth year, job, and a planted six-digit secret code, the *canary*); each person lives on exactly one client |
# | evaluation | GPT-4 scores of free-form answers | mean log-probability per answer token; greedy extraction of the canaries |
#
# With private facts as the "instructions", *what the federation adds* is measurable: a client
# can only know its own people; the federated adapter can know everyone's.

# %%
# One thread: the model is so small that a second thread gains little, and on a busy machine
# two threads per process oversubscribe the cores and slow training down many times over.
torch.set_num_threads(1)
# peft calls a transformers property that transformers 5 marks as deprecated; not ours to fix.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
FULL = os.environ.get("FULL", "0") == "1"
SEED = 0
PEOPLE_PER_CLIENT = 10 if FULL else 5
config = replace(
    PROFILES_FEDERATION, seed=SEED, rounds=PROFILES_FEDERATION.rounds * (2 if FULL else 1)
)

start = time.perf_counter()
task = LoraCausalLMTask(init_seed=SEED)
load_base_model(task.lm)  # pretrains once and caches (~30 s on 2 cores the first time)
print(f"base model ready in {time.perf_counter() - start:.1f} s")

federation = profile_clients(task, people_per_client=PEOPLE_PER_CLIENT, seed=SEED)
clients = federation.clients
heldout = task.encode(federation.heldout)
print(config)
for cid, data in clients.items():
    print(f"client {cid}: {len(federation.client_people[cid])} people, {data.num_samples} records")
print(
    f"held-out people: {len({r.owner_id for r in federation.heldout})}, records: {len(federation.heldout)}"
)
print("example record:", repr(federation.heldout[0].prompt + federation.heldout[0].answer))

# %% [markdown]
# ## What travels: adapters, not the model
#
# The trainable state of the task is peft's adapter state dict: the $A$ and $B$ matrices of every
# adapted layer. The frozen base weights never leave the server's initial broadcast.

# %%
model = task.build_model()
init_state = task.get_state(model)
adapter_bytes = state_bytes(init_state)
# named_parameters counts the tied input/output embedding once
base_bytes = state_bytes({k: v for k, v in model.named_parameters() if "lora_" not in k})
print(
    f"adapter tensors: {len(init_state)}, all named lora_: {all('lora_' in k for k in init_state)}"
)
print(
    f"adapter: {adapter_bytes / 1e3:.0f} kB; full model: {base_bytes / 1e3:.0f} kB "
    f"({adapter_bytes / base_bytes:.1%} of it)"
)

# %% [markdown]
# ## Run: federated LoRA instruction tuning
#
# Every client takes part in every round; each runs local Adam on its records for a few epochs
# and returns its adapter update; the server averages them (FedAvg, weights = record counts).
# After every round we score the global adapter on the federated people and on held-out people.


# %%
def people_logprob(state, tensors):
    """Mean answer log-probability per token of the records, under adapter ``state``."""
    task.set_state(model, state)
    return float(record_logprobs(model, tensors).mean())


train_all = {k: torch.cat([c.tensors[k] for c in clients.values()]) for k in clients[0].tensors}
curve = {
    "round": [0],
    "train": [people_logprob(init_state, train_all)],
    "heldout": [people_logprob(init_state, heldout)],
}


def on_round(round_index, state):
    curve["round"].append(round_index + 1)
    curve["train"].append(people_logprob(state, train_all))
    curve["heldout"].append(people_logprob(state, heldout))


federated_cost = CostCounter()
federated_state = run_federation(
    task, clients, init_state, config, model=model, counter=federated_cost, on_round=on_round
)
print(
    f"federated training: {federated_cost.client_steps} client steps, "
    f"{federated_cost.wall_time_s:.1f} s (evaluation included)"
)
print(
    f"answer log-prob per token: federated people {curve['train'][-1]:.2f}, "
    f"held-out people {curve['heldout'][-1]:.2f} (initial adapter: {curve['train'][0]:.2f} / "
    f"{curve['heldout'][0]:.2f})"
)

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(curve["round"], curve["train"], marker="o", label="people of the federation (members)")
ax.plot(curve["round"], curve["heldout"], marker="s", label="held-out people (non-members)")
ax.set_xlabel("round")
ax.set_ylabel("answer log-prob per token")
ax.set_title("Federated LoRA memorises the clients' facts")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Baseline: one client alone
#
# FedIT's comparison point is a model tuned only on one client's instructions. Client 0 trains
# alone with the same local recipe and the same number of rounds.

# %%
local_cost = CostCounter()
local_state = run_federation(
    task, {0: clients[0]}, init_state, config, model=model, counter=local_cost
)
others = {
    k: torch.cat([clients[c].tensors[k] for c in clients if c != 0]) for k in clients[0].tensors
}
groups = {
    "client 0's people": clients[0].tensors,
    "other clients' people": others,
    "held-out people": heldout,
}
states = {
    "initial adapter": init_state,
    "client 0 alone": local_state,
    "federated (FedIT)": federated_state,
}
scores = {name: {g: people_logprob(s, t) for g, t in groups.items()} for name, s in states.items()}
display(
    Markdown(
        "\n".join(
            ["| model | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
            + [
                f"| {name} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |"
                for name, row in scores.items()
            ]
        )
    )
)

# %% [markdown]
# ## Canaries: can the secret codes be extracted?
#
# A canary counts as *extracted* when greedy decoding of "What is the secret code of <name>?"
# returns exactly the planted six digits (checked in one teacher-forced pass by
# `greedy_extracted`). A model that never saw a person can only guess (chance $10^{-6}$). Short of
# exact extraction, the canary's log-probability per token shows how much of it was memorised.

# %%
people_of = {cid: set(ids) for cid, ids in federation.client_people.items()}
canary_sets = {
    "client 0's canaries": [
        r for r in federation.records.values() if r.kind == "canary" and r.owner_id in people_of[0]
    ],
    "other clients' canaries": [
        r
        for r in federation.records.values()
        if r.kind == "canary" and any(r.owner_id in people_of[c] for c in people_of if c != 0)
    ],
    "held-out canaries": [r for r in federation.heldout if r.kind == "canary"],
}
canary_tensors = {name: task.encode(records) for name, records in canary_sets.items()}
rows = []
canary_scores = {}
for name, state in states.items():
    task.set_state(model, state)
    cells = []
    for group, tensors in canary_tensors.items():
        hits = int(greedy_extracted(model, tensors).sum())
        logprob = float(record_logprobs(model, tensors).mean())
        canary_scores[(name, group)] = (hits, logprob)
        cells.append(f"{hits}/{len(canary_sets[group])} ({logprob:.2f})")
    rows.append(f"| {name} | " + " | ".join(cells) + " |")
display(
    Markdown(
        "\n".join(
            [
                "| model | "
                + " | ".join(f"{g}: extracted (log-prob/token)" for g in canary_sets)
                + " |",
                "|---" * (len(canary_sets) + 1) + "|",
            ]
            + rows
        )
    )
)
task.set_state(model, federated_state)
example = canary_sets["client 0's canaries"][0]
print(
    f"{example.prompt!r} -> federated model says {greedy_answer(task, model, example)!r}; "
    f"planted secret {example.answer!r}"
)

# %% [markdown]
# ## Communication

# %%
rounds = config.rounds
per_round = federated_cost.bytes_communicated / rounds
full_per_round = 2 * len(clients) * base_bytes
display(
    Markdown(
        "\n".join(
            [
                "| per round, all clients, both directions | bytes |",
                "|---|---|",
                f"| LoRA adapters (measured by the loop) | {per_round / 1e6:.2f} MB |",
                f"| full model (FedAvg of every weight) | {full_per_round / 1e6:.2f} MB |",
                f"| ratio | {per_round / full_per_round:.1%} |",
            ]
        )
    )
)

# %% [markdown]
# ## Reported vs reproduced

# %%
federated_gain = (
    scores["federated (FedIT)"]["other clients' people"]
    - scores["client 0 alone"]["other clients' people"]
)
member_gap = curve["train"][-1] - curve["heldout"][-1]
own_local = scores["client 0 alone"]["client 0's people"]
own_federated = scores["federated (FedIT)"]["client 0's people"]
member_groups = ("client 0's canaries", "other clients' canaries")
member_canaries_hit = sum(canary_scores[("federated (FedIT)", g)][0] for g in member_groups)
member_canaries = sum(len(canary_sets[g]) for g in member_groups)
heldout_canaries_hit = canary_scores[("federated (FedIT)", "held-out canaries")][0]
rows = [
    (
        f"| {entry.claims[0].claim} | {entry.claims[0].reported} | yes, qualitatively: on the other "
        f"clients' people the federated adapter scores {federated_gain:+.2f} nats per answer token "
        "above client 0 alone; on client 0's own people client 0 alone is ahead "
        f"({own_local:.2f} vs {own_federated:.2f}): its adapter is not averaged with others |"
    ),
    (
        f"| {entry.claims[1].claim} | {entry.claims[1].reported} | adapters are "
        f"{adapter_bytes / base_bytes:.1%} of the tiny model's bytes (the ratio shrinks with model "
        "size: an adapter grows with the width, a weight matrix with its square) |"
    ),
    (
        "| (this knowledge base) the federated adapter memorises its members | — | members "
        f"{member_gap:+.2f} nats per answer token above held-out people; "
        f"{member_canaries_hit}/{member_canaries} member canaries extracted exactly, "
        f"{heldout_canaries_hit} held-out |"
    ),
]
display(Markdown("\n".join(["| claim | reported | reproduced here |", "|---|---|---|", *rows])))


# %% [markdown]
# ## What not to conclude
#
# - **Not a quality result.** FedIT's evidence is GPT-4-judged helpfulness of free-form answers
#   by a 7B model; ours is the likelihood of memorised facts under a 0.6 M-parameter model. The
#   direction (federation beats one client) matches; no number is comparable.
# - **Memorisation is the point here, not a flaw of FedIT.** The regime (many local epochs on
#   few records) is chosen so that the adapter *remembers* its clients' people, because the
#   unlearning entries need something to remove. A realistic instruction-tuning run memorises
#   far less, but canary extraction from fine-tuned LLMs is a documented risk.
# - **The adapter ratio is not LoRA's 10,000x.** That figure is for GPT-3 175B with
#   $r$ small against width 12,288; in a width-128 model, rank 16 on every linear layer is a
#   sizeable fraction.
# - **One seed, a handful of people.** At smoke size the log-probabilities move by a few tenths
#   between seeds; the gaps shown are much larger than that, the exact values are not.
