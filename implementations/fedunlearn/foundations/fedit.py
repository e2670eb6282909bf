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
of the profile scenarios. This module adds two read-outs of what an adapter memorised,
[`record_logprobs`][fedunlearn.foundations.fedit.record_logprobs] and
[`greedy_answer`][fedunlearn.foundations.fedit.greedy_answer] (exact extraction is
[`greedy_reproduces`][fedunlearn.models.decoding.greedy_reproduces], shared with the evaluation). Deviations: a tiny
Llama-style model and byte tokenizer instead of LLaMA-7B, synthetic question-answer records
instead of Databricks-Dolly-15k, no GPT-4 judging.

Regime (measured on 2 CPU cores, one torch thread, seed 0): 4 clients x 5 people x 4 records,
15 rounds of 4 local Adam epochs (480 client steps of 10 records, about 20 s): the members' answer
log-probability per token rises from about -1.8 to about -0.5 while held-out people fall to
about -2.4; a few of the 20 member canaries become exactly extractable, none of the held-out.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedunlearn.catalog import Entry, ReportedClaim
from fedunlearn.data.profiles import QARecord
from fedunlearn.federated.lora_task import LoraCausalLMTask
from fedunlearn.models.decoding import greedy_continuations
from fedunlearn.models.tiny_lm import answer_token_logprobs

#: Pass criteria of the claims, in nats per answer token (notebook and claim tests). Memorisation:
#: members gain more than ``MEMBER_GAIN`` over the initial adapter and end more than
#: ``MEMBER_MARGIN`` above held-out people. Federated beats local: on the other clients' people the
#: federated adapter gains more than ``MEMBER_GAIN`` over the initial adapter and ends more than
#: ``MEMBER_MARGIN`` above client 0 trained alone.
MEMBER_GAIN = 0.5
MEMBER_MARGIN = 1.0


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


def greedy_answer(
    task: LoraCausalLMTask, model: nn.Module, record: QARecord, max_new_tokens: int = 24
) -> str:
    """The model's greedy completion of the record's prompt, up to the end-of-sequence token (the
    project's one decoder, [`greedy_continuations`][fedunlearn.models.decoding.greedy_continuations]).

    A record counts as *extracted* when this returns exactly its answer, which
    [`greedy_reproduces`][fedunlearn.models.decoding.greedy_reproduces] checks in one pass.
    """
    tokenizer = task.tokenizer
    prompt = tokenizer(record.prompt, add_special_tokens=False)["input_ids"]
    tokens = greedy_continuations(model, [prompt], [max_new_tokens])[0]
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


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
