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
# Smoke size by default (about a minute on two CPU cores once the tiny base model is pretrained
# and the federation is trained; both are cached and shared with the profile unlearning
# scenarios); `FULL=1` in the environment runs four times as many people per client and twice the
# rounds.

# %% [markdown]
# ## The claim (reported)
#
# The claims as the entry records them (`fedunlearn.catalog`), not retyped:

# %%
import os

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from fedunlearn import catalog
from fedunlearn.catalog import ReportedClaim
from fedunlearn.federated.costs import CostCounter, state_bytes
from fedunlearn.federated.loop import run_rounds
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.foundations.fedit import (
    MEMBER_GAIN,
    MEMBER_MARGIN,
    greedy_answer,
    record_logprobs,
)
from fedunlearn.models.decoding import greedy_reproduces
from fedunlearn.results import Results
from fedunlearn.unlearning.cache import trained_federation
from fedunlearn.unlearning.scenarios import build_scenario

entry = catalog.get("fedit")
results = Results("fedit")
display(Markdown(entry.claims_markdown()))

# %% [markdown]
# ## Setup
#
# | | FedIT paper | here |
# |---|---|---|
# | base model | LLaMA-7B (Shepherd's default adapters: $r = 8$ on the attention projections) | a tiny Llama-style model (3 layers, width 128, byte tokenizer, ~0.6 M parameters) pretrained for a few hundred steps on *other* fictitious people, so it knows the question format but none of the clients' facts; LoRA $r = 16$ on every linear layer |
# | data | Databricks-Dolly-15k instructions spread over clients by category | **synthetic profiles stand in for Dolly**: fictitious people (Faker, seeded) rendered as question-answer records (birth city, birth year, job, and a planted four-digit secret code, the *canary*); each person lives on exactly one client |
# | evaluation | GPT-4 scores of free-form answers | mean log-probability per answer token; greedy extraction of the canaries |
#
# With private facts as the "instructions", *what the federation adds* is measurable: a client
# can only know its own people; the federated adapter can know everyone's.
#
# The federation is the one of the `profiles-client` scenario (its forget request plays no role
# here): `LoraCausalLMTask` from the substrate (`fedunlearn.federated.lora_task`), people spread
# over clients by owner (`profile_clients`), `PROFILES_FEDERATION` as the recipe.

# %%
# One thread: the model is so small that a second thread gains little, and on a busy machine
# two threads per process oversubscribe the cores and slow training down many times over.
torch.set_num_threads(1)
# peft calls a transformers property that transformers 5 marks as deprecated; not ours to fix.
FULL = os.environ.get("FULL", "0") == "1"
SEED = 0
# Pass criteria (MEMBER_GAIN, MEMBER_MARGIN) come from the entry module, as in the claim tests.

scenario = build_scenario("profiles-client", SEED, full=FULL)
task, clients, config = scenario.task, scenario.clients, scenario.config
heldout = scenario.test
client_people = {cid: sorted(set(data.owner_ids.tolist())) for cid, data in clients.items()}
people_per_client = len(client_people[0])
heldout_people = len({r.owner_id for r in scenario.unseen_records})
print(config)
for cid, data in clients.items():
    print(f"client {cid}: {len(client_people[cid])} people, {data.num_samples} records")
print(f"held-out people: {heldout_people}, records: {len(scenario.unseen_records)}")
example_record = scenario.unseen_records[0]
print("example record:", repr(example_record.prompt + example_record.answer))
results.add(
    "setup",
    f"{len(clients)} clients of {people_per_client} people each "
    f"({clients[0].num_samples // people_per_client} records per person), {heldout_people} held-out "
    f"people, {config.rounds} rounds of {config.local_epochs:g} local {config.optimizer.capitalize()} "
    f"epochs (batch {config.batch_size}, seed {SEED})",
)

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
only_adapters = bool(init_state) and all("lora_" in k for k in init_state)
print(f"adapter tensors: {len(init_state)}, all named lora_: {only_adapters}")
print(
    f"adapter: {adapter_bytes / 1e3:.0f} kB; full model: {base_bytes / 1e3:.0f} kB "
    f"({adapter_bytes / base_bytes:.1%} of it)"
)
adapter_share = results.value("adapter_share", adapter_bytes / base_bytes, "{:.1%}")

# %% [markdown]
# ## Run: federated LoRA instruction tuning
#
# Every client takes part in every round; each runs local Adam on its records for a few epochs
# and returns its adapter update; the server averages them (FedAvg, weights = record counts).
# `trained_federation` (`fedunlearn.unlearning.cache`) trains it through the
# shared round loop (`run_rounds` over an `InProcessPool`) with the history kept every round, or
# takes it from the cache where the profile scenarios left it. We then score the global adapter
# of every round, as the history recorded it, on the federated people and on held-out people.

# %%
run = trained_federation(scenario)
federated_state, federated_cost = run.final_state, run.cost
print(
    f"federated training: {federated_cost.client_steps} client steps, "
    f"{federated_cost.client_rounds} client-rounds"
)


def people_logprob(state, tensors):
    """Mean answer log-probability per token of the records, under adapter ``state``."""
    task.set_state(model, state)
    return float(record_logprobs(model, tensors).mean())


train_all = {k: torch.cat([c.tensors[k] for c in clients.values()]) for k in clients[0].tensors}
round_states = [r.global_state for r in run.history.rounds] + [run.final_state]  # w_0 ... w_T
curve = {
    "train": [people_logprob(s, train_all) for s in round_states],
    "heldout": [people_logprob(s, heldout) for s in round_states],
}
for name, key, index in (
    ("members_initial", "train", 0),
    ("members_final", "train", -1),
    ("heldout_initial", "heldout", 0),
    ("heldout_final", "heldout", -1),
):
    results.value(f"logprob_{name}", curve[key][index])
print(
    f"answer log-prob per token: federated people {curve['train'][-1]:.2f}, "
    f"held-out people {curve['heldout'][-1]:.2f} (initial adapter: {curve['train'][0]:.2f} / "
    f"{curve['heldout'][0]:.2f})"
)

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(range(len(round_states)), curve["train"], marker="o", label="people of the federation (members)")
ax.plot(range(len(round_states)), curve["heldout"], marker="s", label="held-out people (non-members)")
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
# alone with the same local recipe and the same number of rounds: the same round loop over a pool
# that holds client 0 only.

# %%
local_cost = CostCounter()
local_state = run_rounds(
    InProcessPool(task, {0: clients[0]}, model), run.init_state, config, range(config.rounds), counter=local_cost
)
others = {k: torch.cat([clients[c].tensors[k] for c in clients if c != 0]) for k in clients[0].tensors}
groups = {
    "client 0's people": clients[0].tensors,
    "other clients' people": others,
    "held-out people": heldout,
}
states = {
    "initial adapter": run.init_state,
    "client 0 alone": local_state,
    "federated (FedIT)": federated_state,
}
scores = {name: {g: people_logprob(s, t) for g, t in groups.items()} for name, s in states.items()}
knowledge_table = "\n".join(
    ["| model | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    + [f"| {name} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |" for name, row in scores.items()]
)
display(Markdown(results.add("knowledge_table", knowledge_table)))

# %% [markdown]
# ## Canaries: can the secret codes be extracted?
#
# A canary counts as *extracted* when greedy decoding of "What is the secret code of <name>?"
# returns exactly the planted four digits and stops (checked in one teacher-forced pass by
# `greedy_reproduces`, the same check the evaluation uses). A model that never saw a person can
# only guess (chance $10^{-4}$ per canary). Short of
# exact extraction, the canary's log-probability per token shows how much of it was memorised.

# %%
owner_client = {person: cid for cid, people in client_people.items() for person in people}
canaries = [r for r in scenario.records.values() if r.kind == "canary" and r.owner_id in owner_client]
canary_sets = {
    "client 0's canaries": [r for r in canaries if owner_client[r.owner_id] == 0],
    "other clients' canaries": [r for r in canaries if owner_client[r.owner_id] != 0],
    "held-out canaries": [r for r in scenario.unseen_records if r.kind == "canary"],
}
canary_tensors = {name: task.encode(records) for name, records in canary_sets.items()}
rows = []
canary_scores = {}
for name, state in states.items():
    task.set_state(model, state)
    cells = []
    for group, tensors in canary_tensors.items():
        hits = int(greedy_reproduces(model, tensors).sum())
        logprob = float(record_logprobs(model, tensors).mean())
        canary_scores[(name, group)] = (hits, logprob)
        cells.append(f"{hits}/{len(canary_sets[group])} ({logprob:.2f})")
    rows.append(f"| {name} | " + " | ".join(cells) + " |")
canary_table = "\n".join(
    [
        "| model | " + " | ".join(f"{g}: extracted (log-prob/token)" for g in canary_sets) + " |",
        "|---" * (len(canary_sets) + 1) + "|",
    ]
    + rows
)
display(Markdown(results.add("canary_table", canary_table)))
task.set_state(model, federated_state)
example = canary_sets["client 0's canaries"][0]
print(
    f"{example.prompt!r} -> federated model says {greedy_answer(task, model, example)!r}; "
    f"planted secret {example.answer!r}"
)

# %% [markdown]
# ## Communication
#
# Bytes as the pool counted them while the federation trained (every participant, both
# directions), against what FedAvg of every weight would have moved.

# %%
per_round = federated_cost.bytes_communicated / config.rounds
full_per_round = 2 * len(clients) * base_bytes
# Every byte that travelled is an adapter: K clients x T rounds x 2 directions.
adapters_only = federated_cost.bytes_communicated == 2 * federated_cost.client_rounds * adapter_bytes
communication_table = "\n".join(
    [
        "| per round, all clients, both directions | bytes |",
        "|---|---|",
        f"| LoRA adapters (measured by the pool) | {per_round / 1e6:.2f} MB |",
        f"| full model (FedAvg of every weight) | {full_per_round / 1e6:.2f} MB |",
        f"| ratio | {per_round / full_per_round:.1%} |",
    ]
)
display(Markdown(results.add("communication_table", communication_table)))
print(f"every byte counted is an adapter byte: {adapters_only}")
results.add("traffic", "only adapters" if adapters_only else "more than the adapters")

# %% [markdown]
# ## Reported vs reproduced
#
# Verdicts follow the criteria named in the setup (`MEMBER_GAIN`, `MEMBER_MARGIN`), the same
# ones `tests/foundations/test_fedit.py` asserts.

# %%
others_federated = scores["federated (FedIT)"]["other clients' people"]
federated_gain = others_federated - scores["client 0 alone"]["other clients' people"]
others_learned = others_federated - scores["initial adapter"]["other clients' people"]
own_local = scores["client 0 alone"]["client 0's people"]
own_federated = scores["federated (FedIT)"]["client 0's people"]
own_text = (
    f"on client 0's own people client 0 alone is ahead ({own_local:.2f} vs {own_federated:.2f}): "
    "its adapter is not averaged with others"
    if own_local > own_federated
    else f"on client 0's own people the federated adapter is ahead too ({own_federated:.2f} vs {own_local:.2f})"
)
member_gain = curve["train"][-1] - curve["train"][0]
member_gap = curve["train"][-1] - curve["heldout"][-1]
member_groups = ("client 0's canaries", "other clients' canaries")
member_canaries_hit = sum(canary_scores[("federated (FedIT)", g)][0] for g in member_groups)
member_canaries = sum(len(canary_sets[g]) for g in member_groups)
heldout_canaries_hit = canary_scores[("federated (FedIT)", "held-out canaries")][0]

beats_local = others_learned > MEMBER_GAIN and federated_gain > MEMBER_MARGIN
memorises = member_gain > MEMBER_GAIN and member_gap > MEMBER_MARGIN
memorisation_claim = ReportedClaim(
    claim="(this knowledge base) the federated adapter memorises its members",
    reported="—",
    where="this entry's regime (`PROFILES_FEDERATION`)",
)
table = results.claims(
    "claims",
    [
        (
            entry.claims[0],
            f"on the other clients' people the federated adapter scores {federated_gain:+.2f} nats per "
            f"answer token above client 0 alone ({others_learned:+.2f} above the initial adapter); {own_text}",
            "holds in direction (likelihood of memorised facts, not GPT-4-judged quality)"
            if beats_local
            else "does not hold",
        ),
        (
            entry.claims[1],
            f"adapters are {adapter_share} of the tiny model's bytes and the only tensors that travel "
            "(the ratio shrinks with model size: an adapter grows with the width, a weight matrix with "
            "its square)",
            "holds in kind (not the 10,000x of a 175B model)"
            if adapters_only and only_adapters and adapter_bytes < base_bytes
            else "does not hold",
        ),
        (
            memorisation_claim,
            f"members {member_gain:+.2f} nats per answer token above the initial adapter and "
            f"{member_gap:+.2f} above held-out people; {member_canaries_hit}/{member_canaries} member "
            f"canaries extracted exactly, {heldout_canaries_hit} held-out",
            "holds" if memorises else "does not hold",
        ),
    ],
)
results.value("federated_gain", federated_gain, "{:+.2f}")
results.value("member_gap", member_gap, "{:+.2f}")
results.add("member_canaries", f"{member_canaries_hit}/{member_canaries}")
results.add("heldout_canaries", f"{heldout_canaries_hit}/{len(canary_sets['held-out canaries'])}")
display(Markdown(table))

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

# %%
saved = results.save()
