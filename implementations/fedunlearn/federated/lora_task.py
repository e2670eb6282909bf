r"""The LoRA causal-LM task: federated fine-tuning of adapters on question-answer records.

LoRA (Hu et al., ICLR 2022, key ``hu2022lora``) freezes a weight matrix
$W_0 \in \mathbb{R}^{d\times k}$ and learns a low-rank correction

$$ W = W_0 + \frac{\alpha}{r} B A, \qquad B \in \mathbb{R}^{d \times r},\; A \in \mathbb{R}^{r \times k},
\; r \ll \min(d,k), $$

with $B = 0$ at the start. The task's trainable state is the set of $(A, B)$ pairs (peft's
``get_peft_model_state_dict``), so clients train and send adapters only and the server aggregates
them exactly as it would full weights. The loss is the mean negative log-likelihood of the answer
tokens of each record.

The base model is the embedded tiny Llama-style model
([`fedunlearn.models.tiny_lm`][fedunlearn.models.tiny_lm]), pretrained once on public fictitious
people and cached, or a transformers checkpoint named by ``TinyLMConfig.model_name`` (a local
folder or a hub id already in the local cache): the same code path either way.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import faker
import torch
from torch import nn

from fedunlearn.data.profiles import (
    PROFILE_FORMAT,
    QUESTIONS,
    Profile,
    QARecord,
    encode_records,
    make_profiles,
    qa_records,
)
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.task import State, clone_state
from fedunlearn.models.tiny_lm import TinyLMConfig, answer_nll, build_tokenizer, load_base_model

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: Person ids from this value on are reserved for the pretraining corpus.
PRETRAIN_ID_OFFSET = 1_000_000


@dataclass(frozen=True)
class LoraSettings:
    r"""LoRA hyperparameters.

    Shepherd's example configuration uses $r = 8$ on the attention projections of a 7B model; the
    width-128 tiny model gets $r = 16$ on every linear layer so that it memorises its clients'
    facts within seconds.

    Attributes:
        rank: $r$.
        alpha: $\alpha$ (scale $\alpha / r$).
        target_modules: Linear layers that get adapters (a checkpoint gets ``"all-linear"``).
        dropout: Dropout on the adapter input (0 keeps runs deterministic).
    """

    rank: int = 16
    alpha: float = 32.0
    target_modules: tuple[str, ...] = field(default=ALL_LINEAR)
    dropout: float = 0.0


def public_people(lm: TinyLMConfig, count: int | None = None) -> list[Profile]:
    """The first ``count`` (default all ``lm.pretrain_people``) public fictitious people of the
    pretraining corpus (ids from ``PRETRAIN_ID_OFFSET``, never federated)."""
    return make_profiles(lm.pretrain_people if count is None else count, seed=lm.seed + 7919,
                         first_id=PRETRAIN_ID_OFFSET)


def pretraining_corpus(lm: TinyLMConfig, tokenizer) -> dict[str, torch.Tensor]:
    """Encoded records of the public people ([`public_people`][fedunlearn.federated.lora_task.public_people])."""
    return encode_records([r for p in public_people(lm) for r in qa_records(p)], tokenizer, lm.max_length)


def corpus_key(lm: TinyLMConfig) -> str:
    """What determines the pretraining corpus: templates, size, seed and the Faker version."""
    return json.dumps({"questions": QUESTIONS, "people": lm.pretrain_people, "seed": lm.seed,
                       "faker": faker.VERSION, "format": PROFILE_FORMAT}, sort_keys=True)


class LoraCausalLMTask:
    """Federated LoRA fine-tuning of a causal LM on instruction records.

    Args:
        lm: The base model (default ``TinyLMConfig()``, the embedded tiny model; set
            ``model_name`` for a checkpoint).
        lora: Adapter settings (default ``LoraSettings()``).
        init_seed: Seed of the adapter initialisation ($A$ random, $B = 0$).
        device: Where the model lives (``"cpu"``, ``"cuda"``).
    """

    def __init__(self, lm: TinyLMConfig | None = None, lora: LoraSettings | None = None, init_seed: int = 0,
                 device: str = "cpu") -> None:
        self.lm = lm if lm is not None else TinyLMConfig()
        self.lora = lora if lora is not None else LoraSettings()
        self.init_seed = init_seed
        self.device = device
        self.tokenizer = build_tokenizer(self.lm)

    def describe(self) -> dict:
        """What determines this task's models (for cache keys)."""
        return {"lm": self.lm.__dict__, "lora": self.lora.__dict__, "init_seed": self.init_seed,
                "device": self.device, "corpus": corpus_key(self.lm)}

    def build_model(self) -> nn.Module:
        """The frozen base model wrapped with fresh adapters, on ``device``."""
        from peft import LoraConfig, get_peft_model

        base = load_base_model(self.lm, lambda: pretraining_corpus(self.lm, self.tokenizer), corpus_key(self.lm))
        targets = "all-linear" if self.lm.model_name is not None else list(self.lora.target_modules)
        config = LoraConfig(
            r=self.lora.rank, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
            target_modules=targets, bias="none", task_type="CAUSAL_LM",
        )
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # peft asks transformers a deprecated question (is_gradient_checkpointing); not ours to fix
            warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
            torch.manual_seed(self.init_seed)
            return get_peft_model(base, config).to(self.device)

    def get_state(self, model: nn.Module) -> State:
        """Adapter tensors only (what a client sends), on the CPU."""
        from peft import get_peft_model_state_dict

        return clone_state(get_peft_model_state_dict(model))

    def set_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """Load adapter tensors; every adapter tensor must be present.

        Raises:
            KeyError: If the state lacks adapter tensors.
        """
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, dict(state))
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing:
            raise KeyError(f"adapter state lacks {len(missing)} tensors, e.g. {missing[0]}")

    def per_example_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean negative log-likelihood of the answer tokens of each record."""
        return answer_nll(model, batch)

    def sequence_nll(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        r"""$-\log \pi(y \mid x)$ of each record's whole answer (its tokens' log-probabilities summed)."""
        return answer_nll(model, batch, reduction="sum")

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits at every position, ``[records * length, vocab]``, weighted by the
        attention mask (padding does not count)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits.reshape(-1, logits.shape[-1]), batch["attention_mask"].reshape(-1).float()

    def encode(self, records: list[QARecord]) -> dict[str, torch.Tensor]:
        """Tokenise records for this task's tokenizer and length."""
        return encode_records(records, self.tokenizer, self.lm.max_length)

    def records_data(self, client_id: int, records: list[QARecord]) -> ClientData:
        """Wrap records as a client's data (record ids and owner ids kept)."""
        return ClientData(
            client_id=client_id, tensors=self.encode(records),
            record_ids=torch.tensor([r.record_id for r in records], dtype=torch.long),
            owner_ids=torch.tensor([r.owner_id for r in records], dtype=torch.long),
        )
