r"""Federated instruction tuning over LoRA adapters (FedIT / Shepherd).

Zhang et al. (ICASSP 2024, key ``zhang2024towards``) fine-tune a language model on clients'
private instructions with FedAvg, where each client trains and sends only LoRA adapters
(Hu et al., ICLR 2022, key ``hu2022lora``). LoRA freezes a weight matrix $W_0 \in \mathbb{R}^{d\times k}$
and learns a low-rank correction

$$ W = W_0 + \frac{\alpha}{r} B A, \qquad B \in \mathbb{R}^{d \times r},\; A \in \mathbb{R}^{r \times k},\; r \ll \min(d,k), $$

with $B = 0$ at the start. The federated state is the set of $(A, B)$ pairs; the server averages
them with FedAvg ([`fedavg`][fedunlearn.federated.aggregation.fedavg]) exactly as it would average
full weights.

The substrate owns the pieces (this entry cites and explains them):
[`LoraCausalLMTask`][fedunlearn.federated.lora_task.LoraCausalLMTask], the task whose trainable
state is the adapter; [`profile_clients`][fedunlearn.data.federated_profiles.profile_clients],
which spreads fictitious people over clients by owner; and
[`PROFILES_FEDERATION`][fedunlearn.unlearning.scenarios.PROFILES_FEDERATION], the federated recipe
of the profile scenarios. This module adds the read-outs of what an adapter knows,
[`record_logprobs`][fedunlearn.foundations.fedit.record_logprobs],
[`greedy_answers`][fedunlearn.foundations.fedit.greedy_answers] (the project's one greedy decoder;
exact extraction is [`greedy_reproduces`][fedunlearn.models.decoding.greedy_reproduces], shared
with the evaluation) and [`well_formed`][fedunlearn.foundations.fedit.well_formed], and the
local-only baseline [`client_alone`][fedunlearn.foundations.fedit.client_alone]. Deviations: a tiny
Llama-style model and byte tokenizer instead of LLaMA-7B, synthetic question-answer records
instead of Databricks-Dolly-15k, no GPT-4 judging.

The entry's claim is checked on what can transfer between people: the answers about the
*unseen* people (``scenario.unseen_records``, never trained by anyone) of the federated adapter,
of client 0 tuned alone and of the initial adapter: answer log-probability per token and whether the greedy answer has the form of
a value the data generator could produce.

Regime (measured on 2 CPU cores, one torch thread, seeds 0, 1, 5, 6, 7): 4 clients x 5 people x 4
records, 15 rounds of 4 local Adam epochs (480 client steps of 10 records, about 40 s): the
members' answer log-probability per token rises from about -1.8 to about -0.5; on unseen people
every tuned adapter is below the initial one (about -1.8), the federated one less so (about -2.3)
than client 0 alone with the same rounds (about -2.8): federated tuning over-fits less, it adds no
transferable knowledge in this regime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn

from fedunlearn.catalog import Entry, ReportedClaim
from fedunlearn.data.profiles import BIRTH_YEARS, SECRET_DIGITS, QARecord
from fedunlearn.federated.lora_task import LoraCausalLMTask
from fedunlearn.federated.requests import ForgetRequest
from fedunlearn.models.decoding import greedy_continuations
from fedunlearn.models.tiny_lm import answer_token_logprobs
from fedunlearn.unlearning.scenarios import Scenario

#: Pass criteria of the memorisation claim, in nats per answer token (notebook and claim tests):
#: members gain more than ``MEMBER_GAIN`` over the initial adapter and end more than
#: ``MEMBER_MARGIN`` above the unseen people.
MEMBER_GAIN = 0.5
MEMBER_MARGIN = 1.0

#: Pass criterion of FedIT's claim (federated tuning beats one client's local-only tuning),
#: measured on the *unseen* people, whom nobody trained on, so that only what transfers between
#: people can count: the federated adapter's mean answer log-probability per token on them exceeds
#: client 0 alone's by more than ``TRANSFER_MARGIN`` nats (and the federated adapter did tune: its
#: members gain more than ``MEMBER_GAIN``). At smoke size the gap is 0.43 to 0.70 nats over seeds
#: 0, 1, 5, 6 and 7, and each model's score moves by about a tenth between seeds.
TRANSFER_MARGIN = 0.2

#: Birth years the profile generator draws from (``make_profiles``).
YEAR_RANGE = BIRTH_YEARS


def _faker_vocabulary() -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str], frozenset[str], frozenset[str]]:
    """City prefixes, city suffixes, first names, last names and job titles of Faker's en_US
    providers (the ones ``make_profiles`` draws from)."""
    from faker.providers.address.en_US import Provider as Address
    from faker.providers.job.en_US import Provider as Job
    from faker.providers.person.en_US import Provider as Person

    first = frozenset(name for attr in dir(Person) if attr.startswith("first_names")
                      for name in getattr(Person, attr))
    jobs = frozenset(job.split(",")[0] for job in Job.jobs)
    return tuple(Address.city_prefixes), tuple(set(Address.city_suffixes)), first, frozenset(Person.last_names), jobs


_CITY_PREFIXES, _CITY_SUFFIXES, _FIRST_NAMES, _LAST_NAMES, _JOBS = _faker_vocabulary()


def _city_form(answer: str) -> bool:
    """Whether ``answer`` is a city Faker's en_US formats can produce: ``P F S``, ``P F``, ``F S``
    or ``L S`` (prefix P, first name F, last name L, suffix S)."""
    head, _, rest = answer.partition(" ")
    if rest and head in _CITY_PREFIXES:
        return rest in _FIRST_NAMES or any(
            rest.endswith(suffix) and rest[: -len(suffix)] in _FIRST_NAMES for suffix in _CITY_SUFFIXES
        )
    return " " not in answer and any(
        answer.endswith(suffix) and answer[: -len(suffix)] in _FIRST_NAMES | _LAST_NAMES for suffix in _CITY_SUFFIXES
    )


def well_formed(kind: str, answer: str) -> bool:
    """Whether a greedy ``answer`` to a question of ``kind`` is a value the profile generator could
    have produced for *some* person: what a model can learn from other people's records.

    - ``canary``: exactly ``SECRET_DIGITS`` (4) digits;
    - ``year``: four digits within ``YEAR_RANGE``;
    - ``city``: a name of one of Faker's en_US city formats (prefix + first name + suffix, prefix
      + first name, first or last name + suffix, with Faker's prefixes, suffixes and names);
    - ``job``: one of Faker's en_US job titles, cut at the first comma as ``make_profiles`` does.

    Raises:
        ValueError: For a kind the profiles do not have.
    """
    if kind == "canary":
        return len(answer) == SECRET_DIGITS and answer.isascii() and answer.isdigit()
    if kind == "year":
        return len(answer) == 4 and answer.isascii() and answer.isdigit() and (
            YEAR_RANGE[0] <= int(answer) <= YEAR_RANGE[1])
    if kind == "city":
        return _city_form(answer)
    if kind == "job":
        return answer in _JOBS
    raise ValueError(f"unknown record kind {kind!r}")


@torch.no_grad()
def record_logprobs(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], batch_size: int = 64
) -> torch.Tensor:
    r"""Mean log-probability per answer token of each encoded record (higher = better known).

    Args:
        model: The (adapted) language model.
        tensors: Encoded records (``input_ids``, ``labels``, ``attention_mask``).
        batch_size: Records per forward pass.

    Returns:
        One value per record, $\frac{1}{|a|}\sum_{t \in a} \log p(x_t \mid x_{<t})$ over the
        answer tokens $a$ (the end-of-sequence token included).
    """
    model.eval()
    n = len(tensors["input_ids"])
    values = []
    for start in range(0, n, batch_size):
        chunk = {k: v[start : start + batch_size] for k, v in tensors.items()}
        logprobs, mask = answer_token_logprobs(model, chunk)
        values.append(logprobs.sum(-1) / mask.sum(-1).clamp(min=1))
    return torch.cat(values) if values else torch.zeros(0)


def greedy_answers(
    task: LoraCausalLMTask, model: nn.Module, records: Sequence[QARecord], max_new_tokens: int = 24
) -> list[str]:
    """The model's greedy completion of each record's prompt, up to the end-of-sequence token (the
    project's one decoder, [`greedy_continuations`][fedunlearn.models.decoding.greedy_continuations],
    batched).

    A record counts as *extracted* when this returns exactly its answer, which
    [`greedy_reproduces`][fedunlearn.models.decoding.greedy_reproduces] checks in one pass.
    """
    tokenizer = task.tokenizer
    prompts = [tokenizer(record.prompt, add_special_tokens=False)["input_ids"] for record in records]
    answers = []
    for tokens in greedy_continuations(model, prompts, [max_new_tokens] * len(prompts)):
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        answers.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return answers


def greedy_answer(
    task: LoraCausalLMTask, model: nn.Module, record: QARecord, max_new_tokens: int = 24
) -> str:
    """The greedy answer to one record ([`greedy_answers`][fedunlearn.foundations.fedit.greedy_answers])."""
    return greedy_answers(task, model, [record], max_new_tokens)[0]


ENTRY = Entry(
    slug="fedit",
    family="foundations",
    title="Federated instruction tuning over LoRA (FedIT / Shepherd)",
    citation_keys=("zhang2024towards", "hu2022lora"),
    summary="Clients fine-tune LoRA adapters on private instructions; only adapters are averaged "
    "and sent.",
    claims=(
        ReportedClaim(
            claim="Federated instruction tuning on all clients' diverse instructions beats tuning "
            "on one client's limited local instructions",
            reported="qualitative (GPT-4 auto-evaluation scores; no number quoted here)",
            where="zhang2024towards, Abstract and GPT-4 evaluation experiments",
        ),
        ReportedClaim(
            claim="LoRA trains a small fraction of the parameters, so clients train and exchange "
            "only adapters",
            reported="GPT-3 175B vs full fine-tuning with Adam: 10,000x fewer trainable "
            "parameters, 3x less GPU memory",
            where="hu2022lora, Abstract",
        ),
    ),
)


def client_alone(scenario: Scenario, client: int = 0, rounds: int = 0) -> Scenario:
    """The scenario cut to one client: its federation is ``client`` trained alone with the same
    local recipe, through the same round loop (so [`trained_federation`][fedunlearn.unlearning.cache.trained_federation]
    trains and caches it like any federation).

    Args:
        scenario: A profile scenario.
        client: The client kept.
        rounds: Rounds (0: the scenario's, i.e. the client's own share of the federation's local
            steps; ``K`` times as many give it the federation's total local steps).
    """
    config = scenario.config if rounds <= 0 else replace(scenario.config, rounds=rounds)
    owned = scenario.clients[client].record_ids[:1].tolist()
    return replace(scenario, clients={client: scenario.clients[client]}, config=config,
                   request=ForgetRequest.forget_records(owned))
