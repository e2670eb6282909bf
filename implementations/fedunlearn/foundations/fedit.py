"""Federated instruction tuning over LoRA adapters (FedIT / Shepherd).

Zhang et al. (ICASSP 2024, key ``zhang2024towards``) fine-tune a language model on clients'
private instructions with FedAvg, where each client trains and sends only LoRA adapters
(Hu et al., ICLR 2022, key ``hu2022lora``). LoRA freezes a weight matrix $W_0 \\in \\mathbb{R}^{d\\times k}$
and learns a low-rank correction

$$ W = W_0 + \\frac{\\alpha}{r} B A, \\qquad B \\in \\mathbb{R}^{d \\times r},\\; A \\in \\mathbb{R}^{r \\times k},\\; r \\ll \\min(d,k), $$

with $B = 0$ at the start. The federated state is the set of $(A, B)$ pairs; the server averages
them with FedAvg ([`fedavg_aggregate`][fedunlearn.foundations.fedavg.fedavg_aggregate]) exactly as
it would average full weights.

Implemented: [`LoraCausalLMTask`][fedunlearn.foundations.fedit.LoraCausalLMTask], a task for the
shared loop whose trainable state is the adapter (peft's ``get_peft_model_state_dict`` /
``set_peft_model_state_dict``), trained on the answer tokens of instruction records; and
[`profile_clients`][fedunlearn.foundations.fedit.profile_clients], which spreads fictitious people
over clients by owner; [`PROFILES_FEDERATION`][fedunlearn.foundations.fedit.PROFILES_FEDERATION],
the federated recipe of the profile scenarios; and two read-outs of what an adapter memorised,
[`record_logprobs`][fedunlearn.foundations.fedit.record_logprobs] and
[`greedy_extracted`][fedunlearn.foundations.fedit.greedy_extracted]. Deviations: a tiny
Llama-style model and byte tokenizer instead of LLaMA-7B, synthetic question-answer records
instead of Databricks-Dolly-15k, no GPT-4 judging.

Regime (measured on 2 CPU cores, one torch thread, seed 0): 4 clients x 5 people x 4 records,
15 rounds of 4 local Adam epochs (480 client steps of 10 records, about 20 s): the members' answer
log-probability per token rises from about -1.8 to about -0.5 while held-out people fall to
about -2.4; a few of the 20 member canaries become exactly extractable, none of the held-out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedunlearn.catalog import Entry, ReportedClaim
from fedunlearn.data.profiles import Profile, QARecord, encode_records, make_profiles, qa_records
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.loop import FederationConfig
from fedunlearn.federated.partition import by_owner
from fedunlearn.federated.task import State, clone_state
from fedunlearn.models.tiny_lm import (
    TinyLMConfig,
    answer_nll,
    answer_token_logprobs,
    build_tokenizer,
    load_base_model,
    trim_padding,
)

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyperparameters.

    Shepherd's example configuration uses $r = 8$ on the attention projections of a 7B model; the
    width-128 tiny model gets $r = 16$ on every linear layer so that it memorises its clients'
    facts within seconds.

    Attributes:
        rank: $r$.
        alpha: $\\alpha$ (scale $\\alpha / r$).
        target_modules: Linear layers that get adapters (``"all-linear"`` for a hub model).
        dropout: Dropout on the adapter input (0 keeps runs deterministic).
    """

    rank: int = 16
    alpha: float = 32.0
    target_modules: tuple[str, ...] = field(default=ALL_LINEAR)
    dropout: float = 0.0


class LoraCausalLMTask:
    """Federated LoRA fine-tuning of a causal LM on instruction records.

    Args:
        lm: The base model (default ``TinyLMConfig()``, the embedded tiny model; set
            ``model_name`` for a checkpoint).
        lora: Adapter settings (default ``LoraSettings()``).
        init_seed: Seed of the adapter initialisation ($A$ random, $B = 0$).
    """

    def __init__(
        self, lm: TinyLMConfig | None = None, lora: LoraSettings | None = None, init_seed: int = 0
    ) -> None:
        self.lm = lm if lm is not None else TinyLMConfig()
        self.lora = lora if lora is not None else LoraSettings()
        self.init_seed = init_seed
        self.tokenizer = build_tokenizer(self.lm)

    def build_model(self) -> nn.Module:
        """The frozen base model wrapped with fresh adapters."""
        from peft import LoraConfig, get_peft_model

        base = load_base_model(self.lm)
        targets = "all-linear" if self.lm.model_name is not None else list(self.lora.target_modules)
        config = LoraConfig(
            r=self.lora.rank, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
            target_modules=targets, bias="none", task_type="CAUSAL_LM",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            return get_peft_model(base, config)

    def get_state(self, model: nn.Module) -> State:
        """Adapter tensors only (what a client sends)."""
        from peft import get_peft_model_state_dict

        return clone_state(get_peft_model_state_dict(model))

    def set_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Load adapter tensors; every adapter tensor must be present."""
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, dict(state))
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing:
            raise KeyError(f"adapter state lacks {len(missing)} tensors, e.g. {missing[0]}")

    def per_example_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean negative log-likelihood of the answer tokens of each record."""
        return answer_nll(model, batch)

    def encode(self, records: list[QARecord]) -> dict[str, torch.Tensor]:
        """Tokenise records for this task's tokenizer and length."""
        return encode_records(records, self.tokenizer, self.lm.max_length)

    def records_data(self, client_id: int, records: list[QARecord]) -> ClientData:
        """Wrap records as a client's data (record ids and owner ids kept)."""
        return ClientData(
            client_id=client_id, tensors=self.encode(records),
            record_ids=torch.tensor([r.record_id for r in records]),
            owner_ids=torch.tensor([r.owner_id for r in records]),
        )


@dataclass(frozen=True)
class ProfileFederation:
    """People spread over clients by owner, plus held-out people nobody trained on.

    Attributes:
        clients: Client id -> data.
        people: Every federated person.
        client_people: Client id -> ids of its people.
        heldout: Records of held-out people (never in any client).
        records: Record id -> record, for every federated and held-out record.
    """

    clients: dict[int, ClientData]
    people: list[Profile]
    client_people: dict[int, list[int]]
    heldout: list[QARecord]
    records: dict[int, QARecord]


def profile_clients(
    task: LoraCausalLMTask, num_clients: int = 4, people_per_client: int = 5,
    heldout_people: int = 20, seed: int = 0,
) -> ProfileFederation:
    """Make fictitious people and partition their records over clients by owner.

    Args:
        task: Encodes the records (tokenizer and length of its model).
        num_clients: Clients $K$.
        people_per_client: People per client (each with ``RECORDS_PER_PERSON`` records).
        heldout_people: People nobody trains on (the non-members of every evaluation).
        seed: Seed of the people and of the partition.
    """
    people = make_profiles(num_clients * people_per_client + heldout_people, seed=seed)
    cut = num_clients * people_per_client
    federated, others = people[:cut], people[cut:]
    records = [r for p in federated for r in qa_records(p)]
    parts = by_owner(np.array([r.owner_id for r in records]), num_clients, seed)
    clients, client_people = {}, {}
    for cid, index in enumerate(parts):
        mine = [records[i] for i in index]
        clients[cid] = task.records_data(cid, mine)
        client_people[cid] = sorted({r.owner_id for r in mine})
    heldout = [r for p in others for r in qa_records(p)]
    everything = {r.record_id: r for r in records + heldout}
    return ProfileFederation(clients, federated, client_people, heldout, everything)


#: Federated training of the profile scenarios (tuned for the tiny model on 2 CPU cores; the
#: unlearning harness's ``profiles-client`` / ``profiles-person`` scenarios start from it).
#: Local Adam as in FedIT's clients; many local epochs on few records so that the adapter
#: memorises its people, canaries included, within about 20 s.
PROFILES_FEDERATION = FederationConfig(
    rounds=15, local_epochs=4, batch_size=10, lr=6e-3, optimizer="adam",
)


@torch.no_grad()
def record_logprobs(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], batch_size: int = 64
) -> torch.Tensor:
    """Mean log-probability per answer token of each encoded record (higher = better known).

    Args:
        model: The (adapted) language model.
        tensors: Encoded records (``input_ids``, ``labels``, ``attention_mask``).
        batch_size: Records per forward pass.

    Returns:
        One value per record, $\frac{1}{|a|}\\sum_{t \\in a} \\log p(x_t \\mid x_{<t})$ over the
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


@torch.no_grad()
def greedy_answer(
    task: LoraCausalLMTask, model: nn.Module, record: QARecord, max_new_tokens: int = 24
) -> str:
    """The model's greedy completion of the record's prompt, up to the end-of-sequence token.

    A canary counts as *extracted* when ``greedy_answer(...) == record.answer``.
    """
    model.eval()
    tokenizer = task.tokenizer
    ids = tokenizer(record.prompt, add_special_tokens=False)["input_ids"]
    prompt_length = len(ids)
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
    return tokenizer.decode(ids[prompt_length:], skip_special_tokens=True)


@torch.no_grad()
def greedy_extracted(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], batch_size: int = 64
) -> torch.Tensor:
    """Whether greedy decoding of each record's prompt returns exactly its answer.

    Greedy decoding reproduces the answer if and only if, with the true answer as prefix, every
    answer token (the end-of-sequence token included) is the arg-max of the next-token
    distribution. That is checked for all records in one teacher-forced pass, the same result as
    [`greedy_answer`][fedunlearn.foundations.fedit.greedy_answer] at a fraction of the cost.

    Returns:
        A boolean per record.
    """
    model.eval()
    n = len(tensors["input_ids"])
    hits = []
    for start in range(0, n, batch_size):
        chunk = trim_padding({k: v[start : start + batch_size] for k, v in tensors.items()})
        logits = model(input_ids=chunk["input_ids"], attention_mask=chunk["attention_mask"]).logits
        targets = chunk["labels"][:, 1:]
        correct = (logits[:, :-1].argmax(-1) == targets) | (targets == -100)
        hits.append(correct.all(-1))
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


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
