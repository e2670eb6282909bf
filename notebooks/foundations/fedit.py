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
# This notebook repeats the *shape* of that experiment at laptop scale. FedIT's claim is about
# what a client gains from the others' instructions, so it is measured where a client alone could
# gain something too: on **unseen people**, whom nobody trained on (answer log-probability, and
# whether the greedy answer has a plausible form). Other clients' people are shown as well, but a
# client alone can never know them, so they are no test of the claim; they show what the
# federation memorises, which the unlearning entries rely on. Last, the bytes that travel are the
# adapters only.
#
# Smoke size by default (about a minute on two CPU cores once the tiny base model is pretrained
# and the federation is trained; both are cached and shared with the profile unlearning
# scenarios); `FULL=1` in the environment runs four times as many people per client and twice the
# rounds, and adds the local-only baseline with the federation's total number of local steps.

# %% [markdown]
# ## The claim (reported)
#
# The claims as the entry records them (`fedunlearn.catalog`), not retyped:

# %%
import math
import os

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from fedunlearn import catalog
from fedunlearn.catalog import ReportedClaim
from fedunlearn.data.profiles import SECRET_DIGITS
from fedunlearn.federated.costs import state_bytes
from fedunlearn.foundations.fedit import (
    MEMBER_GAIN,
    MEMBER_MARGIN,
    TRANSFER_MARGIN,
    YEAR_RANGE,
    client_alone,
    greedy_answer,
    greedy_answers,
    record_logprobs,
    well_formed,
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
# | evaluation | GPT-4 scores of free-form answers | on **unseen people** (nobody trained on them): mean log-probability per answer token, share of well-formed greedy answers; on members: the same, and greedy extraction of the canaries |
#
# With private facts as the "instructions", the federated adapter can know every client's people
# and a client alone only its own; that difference is memorisation, not the claim. What a client
# *could* gain from the others is what transfers to people nobody trained on: the form of the
# answers (a year, a four-digit code, a city or job title) and how values are distributed. The
# scenario keeps such people apart: 20 **unseen** people (the reference of every evaluation) and
# 10 **validation** people (for choosing anything; nothing is chosen here, they give a second
# measurement of the same gap).
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
unseen = scenario.test
client_people = {cid: sorted(set(data.owner_ids.tolist())) for cid, data in clients.items()}
people_per_client = len(client_people[0])
unseen_people = len({r.owner_id for r in scenario.unseen_records})
validation_people = len({r.owner_id for r in scenario.validation_records})
print(config)
for cid, data in clients.items():
    print(f"client {cid}: {len(client_people[cid])} people, {data.num_samples} records")
print(f"unseen people: {unseen_people}, validation people: {validation_people}")
example_record = scenario.unseen_records[0]
print("example record:", repr(example_record.prompt + example_record.answer))
results.add(
    "setup",
    f"{len(clients)} clients of {people_per_client} people each "
    f"({clients[0].num_samples // people_per_client} records per person), {unseen_people} unseen "
    f"and {validation_people} validation people, {config.rounds} rounds of {config.local_epochs:g} local {config.optimizer.capitalize()} "
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
# of every round, as the history recorded it, on the federated people and on the unseen people.

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
    "unseen": [people_logprob(s, unseen) for s in round_states],
}
for name, key, index in (
    ("members_initial", "train", 0),
    ("members_final", "train", -1),
    ("unseen_initial", "unseen", 0),
    ("unseen_final", "unseen", -1),
):
    results.value(f"logprob_{name}", curve[key][index])
print(
    f"answer log-prob per token: federated people {curve['train'][-1]:.2f}, "
    f"unseen people {curve['unseen'][-1]:.2f} (initial adapter: {curve['train'][0]:.2f} / "
    f"{curve['unseen'][0]:.2f})"
)

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(range(len(round_states)), curve["train"], marker="o", label="people of the federation (members)")
ax.plot(range(len(round_states)), curve["unseen"], marker="s", label="unseen people (non-members)")
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
# alone with the same local recipe and **the same number of rounds**, so it does exactly the
# local work it did inside the federation (a quarter of the federation's client steps):
# `client_alone` cuts the scenario to client 0, and `trained_federation` trains it through the
# same round loop and caches it. With `FULL=1` a second baseline gets the federation's **total**
# local steps (four times the rounds).

# %%
alone_runs = {"client 0 alone (same rounds)": trained_federation(client_alone(scenario))}
if FULL:
    alone_runs["client 0 alone (same total steps)"] = trained_federation(
        client_alone(scenario, rounds=len(clients) * config.rounds)
    )
for name, alone_run in alone_runs.items():
    print(f"{name}: {alone_run.cost.client_steps} client steps")
LOCAL = "client 0 alone (same rounds)"
states = {
    "initial adapter": run.init_state,
    **{name: alone_run.final_state for name, alone_run in alone_runs.items()},
    "federated (FedIT)": federated_state,
}
local_steps = results.value("local_steps", alone_runs[LOCAL].cost.client_steps, "{:d}")
results.value("federated_steps", federated_cost.client_steps, "{:d}")

# %% [markdown]
# ## What transfers: people nobody trained on
#
# For each of the 20 unseen people (and, as a second measurement, the 10 validation people) and
# each kind of question, two read-outs:
#
# - **answer log-probability per token** of the true answer (end token included), a proper score:
#   it rewards putting mass on the right *kind* of value in the right proportions, and nothing
#   else can help for a person nobody saw. References: a model that knows only the form and the
#   generator's distribution scores $\ln 10^{-4}/5$ per token on a code (uniform over $10^4$
#   codes, 4 digits + end token) and $\ln(1/66)/5$ on a year (uniform on the 66 years of
#   `YEAR_RANGE`);
# - **well-formed greedy answers** (`well_formed`): the greedy answer (the project's one decoder,
#   `greedy_answers`) is a value the data generator could have produced for *some* person: exactly
#   four digits for a code, four digits within `YEAR_RANGE` for a year, a name of one of Faker's
#   city formats (prefix, first or last name, suffix) for a city, one of Faker's job titles for a
#   job.

# %%
kinds = ("city", "year", "job", "canary")
populations = {"unseen": scenario.unseen_records, "validation": scenario.validation_records}
encoded = {name: task.encode(records) for name, records in populations.items()}
transfer = {}  # (model, population) -> {"logprob", "form", "kinds": {kind: (logprob, form)}, "answers"}
for name, state in states.items():
    task.set_state(model, state)
    for population, records in populations.items():
        logprobs = record_logprobs(model, encoded[population])
        answers = greedy_answers(task, model, records)
        formed = torch.tensor([well_formed(r.kind, a) for r, a in zip(records, answers)], dtype=torch.float)
        by_kind = {}
        for kind in kinds:
            rows = torch.tensor([r.kind == kind for r in records])
            by_kind[kind] = (float(logprobs[rows].mean()), float(formed[rows].mean()))
        transfer[(name, population)] = {
            "logprob": float(logprobs.mean()),
            "form": float(formed.mean()),
            "kinds": by_kind,
            "answers": answers,
        }

uniform_code = math.log(10.0**-SECRET_DIGITS) / (SECRET_DIGITS + 1)
uniform_year = math.log(1 / (YEAR_RANGE[1] - YEAR_RANGE[0] + 1)) / 5
header = (
    "| model (unseen people) | all: log-prob/token | all: well-formed | "
    + " | ".join(f"{k}: log-prob / well-formed" for k in kinds)
    + " |"
)
rows = [header, "|---" * (3 + len(kinds)) + "|"]
for name in states:
    t = transfer[(name, "unseen")]
    cells = [f"{lp:.2f} / {form:.0%}" for lp, form in t["kinds"].values()]
    rows.append(f"| {name} | {t['logprob']:.2f} | {t['form']:.0%} | " + " | ".join(cells) + " |")
rows.append(
    "| *reference: form and distribution only* | | | | "
    f"{uniform_year:.2f} / 100% | | {uniform_code:.2f} / 100% |"
)
display(Markdown(results.add("transfer_table", "\n".join(rows))))

# %% [markdown]
# What the greedy answers look like: the distinct values each model gives for the unseen
# people's birth years and codes (20 people each), and one person's four answers.

# %%
unseen_records = scenario.unseen_records
distinct_rows = ["| model | distinct years | distinct codes | example person: city, year, job, code |", "|---|---|---|---|"]
person = unseen_records[0].owner_id
for name in states:
    answers = transfer[(name, "unseen")]["answers"]
    distinct = {
        kind: len({a for r, a in zip(unseen_records, answers) if r.kind == kind}) for kind in ("year", "canary")
    }
    example_answers = ", ".join(f"`{a}`" for r, a in zip(unseen_records, answers) if r.owner_id == person)
    distinct_rows.append(f"| {name} | {distinct['year']} | {distinct['canary']} | {example_answers} |")
truth = ", ".join(f"`{r.answer}`" for r in unseen_records if r.owner_id == person)
distinct_rows.append(f"| *true values* | | | {truth} |")
display(Markdown(results.add("answers_table", "\n".join(distinct_rows))))

# %% [markdown]
# ### What each group of people tells
#
# Answer log-probability per token on client 0's own people, the other clients' people (whom
# client 0 alone can never know: a comparison it cannot win, so no test of the claim) and the
# unseen people.

# %%
others = {k: torch.cat([clients[c].tensors[k] for c in clients if c != 0]) for k in clients[0].tensors}
groups = {
    "client 0's people": clients[0].tensors,
    "other clients' people": others,
    "unseen people": unseen,
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
    "unseen canaries": [r for r in scenario.unseen_records if r.kind == "canary"],
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
# Verdicts follow the criteria named in the entry module (`TRANSFER_MARGIN`, `MEMBER_GAIN`,
# `MEMBER_MARGIN`), the same ones `tests/foundations/test_fedit.py` asserts. FedIT's claim holds
# here when, on the unseen people, the federated adapter's answer log-probability per token is
# more than `TRANSFER_MARGIN` above client 0 alone's (same rounds) and the federated adapter did
# tune (its members gain more than `MEMBER_GAIN`). The controls below substitute another adapter
# for the federated one; each must fail the criterion.

# %%
member_tensors = {k: torch.cat([c.tensors[k] for c in clients.values()]) for k in clients[0].tensors}


def transfer_criterion(candidate: str) -> tuple[float, float, bool]:
    """(gap to client 0 alone on unseen people, members' gain over the initial adapter, passes)
    with ``candidate``'s adapter in the place of the federated one."""
    gap = transfer[(candidate, "unseen")]["logprob"] - transfer[(LOCAL, "unseen")]["logprob"]
    gain = people_logprob(states[candidate], member_tensors) - people_logprob(run.init_state, member_tensors)
    return gap, gain, gap > TRANSFER_MARGIN and gain > MEMBER_GAIN


FEDERATED = "federated (FedIT)"
criterion = {
    name: transfer_criterion(name) for name in (FEDERATED, LOCAL, "initial adapter")
}
control_rows = [
    "| in the place of the federated adapter | unseen people: gap to client 0 alone | members: gain over the initial adapter | criterion |",
    "|---|---|---|---|",
]
for name, label in (
    (FEDERATED, "the federated adapter (as run)"),
    (LOCAL, "control: client 0 alone (no federation)"),
    ("initial adapter", "control: the initial adapter (no tuning)"),
):
    gap, gain, passes = criterion[name]
    control_rows.append(f"| {label} | {gap:+.2f} | {gain:+.2f} | {'passes' if passes else 'fails'} |")
display(Markdown(results.add("controls_table", "\n".join(control_rows))))

transfer_gap, _, beats_local = criterion[FEDERATED]
validation_gap = transfer[(FEDERATED, "validation")]["logprob"] - transfer[(LOCAL, "validation")]["logprob"]
below_initial = transfer[(FEDERATED, "unseen")]["logprob"] - transfer[("initial adapter", "unseen")]["logprob"]
form_federated = transfer[(FEDERATED, "unseen")]["form"]
form_local = transfer[(LOCAL, "unseen")]["form"]
form_initial = transfer[("initial adapter", "unseen")]["form"]
results.value("transfer_gap", transfer_gap, "{:+.2f}")
results.value("validation_gap", validation_gap, "{:+.2f}")
results.value("below_initial", below_initial, "{:+.2f}")
results.add("form_federated", f"{form_federated:.0%}")
results.add("form_local", f"{form_local:.0%}")
results.add("form_initial", f"{form_initial:.0%}")
if beats_local and below_initial < 0:
    transfer_verdict = (
        "holds in direction, as less damage: federated tuning beats local-only tuning on unseen people "
        "but neither beats the untuned adapter (answer likelihood, not GPT-4-judged quality)"
    )
elif beats_local:
    transfer_verdict = "holds in direction (answer likelihood on unseen people, not GPT-4-judged quality)"
else:
    transfer_verdict = "does not reproduce at this scale"
form_text = (
    f"well-formed greedy answers {form_federated:.0%} federated vs {form_local:.0%} alone "
    f"({form_initial:.0%} initial)"
)
results.add("transfer_verdict", transfer_verdict)
member_gain = curve["train"][-1] - curve["train"][0]
member_gap = curve["train"][-1] - curve["unseen"][-1]
member_groups = ("client 0's canaries", "other clients' canaries")
member_canaries_hit = sum(canary_scores[(FEDERATED, g)][0] for g in member_groups)
member_canaries = sum(len(canary_sets[g]) for g in member_groups)
unseen_canaries_hit = canary_scores[(FEDERATED, "unseen canaries")][0]
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
            f"on unseen people (nobody trained on them) the federated adapter's answer log-probability "
            f"per token is {transfer_gap:+.2f} nats above client 0 alone's ({validation_gap:+.2f} on the "
            f"validation people) and {below_initial:+.2f} against the initial adapter; {form_text}",
            transfer_verdict,
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
            f"{member_gap:+.2f} above unseen people; {member_canaries_hit}/{member_canaries} member "
            f"canaries extracted exactly, {unseen_canaries_hit} unseen",
            "holds" if memorises else "does not hold",
        ),
    ],
)
results.value("member_gap", member_gap, "{:+.2f}")
results.add("member_canaries", f"{member_canaries_hit}/{member_canaries}")
results.add("unseen_canaries", f"{unseen_canaries_hit}/{len(canary_sets['unseen canaries'])}")
display(Markdown(table))

# %% [markdown]
# ## What not to conclude
#
# - **Not FedIT's mechanism.** In the paper the base model (LLaMA-7B) is not instruction-tuned,
#   so the form of a good response is what tuning teaches, and Dolly-15k's categories share
#   skills a client can borrow from the others. Here the base model was pretrained on the very
#   question templates (200 public people), so it already answers in the right form and with
#   roughly the generator's distribution of years and codes, and the "instructions" are facts
#   about single people, which share nothing but that form. What federation buys in this regime
#   is averaging over four clients' people, which over-fits less to any handful of them than one
#   client alone; a result in which the federated adapter also beat the initial one would need
#   shared skills to learn.
# - **Not a quality result.** FedIT's evidence is GPT-4-judged helpfulness of free-form answers
#   by a 7B model; ours is answer likelihood and answer form under a 0.6 M-parameter model. The
#   direction of the comparison is what carries over; no number is comparable.
# - **The well-formed share is coarse.** With 20 people per kind it moves in steps of 5 %, years
#   and codes are well formed for nearly every model, and the byte-level model garbles many city
#   and job names; the share is reported, the criterion is the log-probability.
# - **Memorisation is the point of the regime, not a flaw of FedIT.** Many local epochs on few
#   records make the adapter *remember* its clients' people, because the unlearning entries need
#   something to remove; it is also what pushes every tuned adapter below the initial one on
#   unseen people. A realistic instruction-tuning run memorises far less.
# - **The adapter ratio is not LoRA's 10,000x.** That figure is for GPT-3 175B with
#   $r$ small against width 12,288; in a width-128 model, rank 16 on every linear layer is a
#   sizeable fraction.
# - **One seed, a handful of people.** The notebook and the tests run seed 0; the same verdict
#   was checked by hand on seeds they never use. Each model's log-probability on unseen people
#   moves by about a tenth between seeds; the gap to client 0 alone is several times that.

# %%
saved = results.save()
