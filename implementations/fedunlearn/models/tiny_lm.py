"""The embedded language model: a tiny Llama-style causal LM, or a real checkpoint by name.

By default the model is built from a ``transformers.LlamaConfig`` (3 layers, width 128, about
0.6 M parameters) with random initialisation and the file-free byte tokenizer ``ByT5Tokenizer()``.
It is then *pretrained* for a few hundred steps on an encoded corpus that the caller supplies (the
LoRA task passes question-answer records of public fictitious people, so that the model knows the
format, not the federated people; this module imports no data set). Pretraining uses AdamW with a
short warm-up, cosine decay and gradient clipping; mini-batches are trimmed to their longest record
([`trim_padding`][fedunlearn.models.tiny_lm.trim_padding]), which roughly halves the cost. The
pretrained weights are cached as safetensors (``$FEDUNLEARN_CACHE``, default
``~/.cache/fedunlearn``) keyed by the config and the corpus, so notebooks do not repeat it.

Setting ``model_name`` (e.g. a hub id already in the local cache) loads that checkpoint and its
tokenizer instead; everything downstream (LoRA, federated loop, evaluation) is the same code.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from fedunlearn.paths import cache_dir, file_lock


@dataclass(frozen=True)
class TinyLMConfig:
    """Architecture and pretraining of the embedded language model.

    Attributes:
        model_name: A transformers checkpoint to load instead (``None`` = the embedded tiny model).
        layers: Decoder layers.
        hidden: Hidden width.
        heads: Attention heads.
        intermediate: MLP width.
        max_length: Longest sequence (tokens = bytes here).
        pretrain_people: Size of the pretraining corpus (public fictitious people; read by the
            caller that builds the corpus).
        pretrain_steps: AdamW steps of pretraining.
        pretrain_batch: Pretraining batch size.
        pretrain_lr: Pretraining learning rate.
        seed: Seed of initialisation, corpus and data order.
    """

    model_name: str | None = None
    layers: int = 3
    hidden: int = 128
    heads: int = 4
    intermediate: int = 256
    max_length: int = 96
    pretrain_people: int = 200
    pretrain_steps: int = 300
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    seed: int = 0

    def cache_key(self, corpus_key: str) -> str:
        """Hash naming the cached pretrained weights: the config, the corpus (``corpus_key``, from
        the caller) and the pretraining recipe version; a change to any of them invalidates it."""
        material = {"config": asdict(self), "corpus": corpus_key, "recipe": PRETRAIN_RECIPE}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


log = logging.getLogger(__name__)

#: Version of the pretraining procedure; bump it when ``pretrain`` changes, so caches rebuild.
PRETRAIN_RECIPE = 2


def build_tokenizer(config: TinyLMConfig):
    """``ByT5Tokenizer()`` (no files needed), or the checkpoint's tokenizer."""
    if config.model_name is None:
        from transformers import ByT5Tokenizer

        return ByT5Tokenizer()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.model_name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _random_tiny_model(config: TinyLMConfig, vocab_size: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=vocab_size, hidden_size=config.hidden, intermediate_size=config.intermediate,
        num_hidden_layers=config.layers, num_attention_heads=config.heads,
        num_key_value_heads=config.heads, max_position_embeddings=config.max_length,
        pad_token_id=0, bos_token_id=None, eos_token_id=1, tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return LlamaForCausalLM(llama)


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut right padding: keep the columns up to the longest real sequence of the batch.

    Records are padded to ``max_length`` once, at encoding time; a mini-batch of short records
    then costs only its own length (the main cost on a CPU). Padding is on the right and masked,
    so the result is the same as on the full batch.
    """
    length = max(int(batch["attention_mask"].sum(-1).max()), 2)
    width = batch["input_ids"].shape[1]
    if length >= width:
        return batch
    # token columns only: per-example columns (a flag, a reference loss) ride along unchanged
    return {k: v[:, :length] if v.dim() == 2 and v.shape[1] == width else v for k, v in batch.items()}


def answer_token_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every target token and the mask of answer tokens.

    The model runs on the batch trimmed to its longest sequence (moved to the model's device);
    the outputs are padded back (log-probability 0, mask false) so that their shape does not
    depend on the batch, and returned on the batch's device.

    Returns:
        ``(logprobs, mask)`` of shape ``[batch, length - 1]``; position ``i`` scores token ``i+1``.
    """
    full = batch["input_ids"].shape[1] - 1
    home = batch["input_ids"].device
    device = model_device(model)
    batch = {k: v.to(device) for k, v in trim_padding(batch).items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    missing = full - picked.shape[1]
    if missing > 0:
        picked = nn.functional.pad(picked, (0, missing))
        mask = nn.functional.pad(mask, (0, missing))
    return picked.to(home), mask.to(home)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def merged_for_inference(model: nn.Module) -> nn.Module:
    r"""A copy of a LoRA-wrapped model with its adapters folded into the base weights,
    $W' = W + \frac{\alpha}{r} B A$, for evaluation only: one matrix product per layer instead of
    three, so the same metrics cost about a third less (float rounding aside, the same function).
    The model passed in is not changed; a model without adapters is returned as it is."""
    if not hasattr(model, "merge_and_unload"):
        return model
    merged = copy.deepcopy(model).merge_and_unload()
    merged.eval()
    return merged


def answer_nll(model: nn.Module, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    r"""Negative log-likelihood of each example's answer: per answer token (``"mean"``) or of the
    whole answer (``"sum"``, $-\log \pi(y \mid x)$)."""
    logprobs, mask = answer_token_logprobs(model, batch)
    if reduction == "sum":
        return -logprobs.sum(-1)
    return -(logprobs.sum(-1) / mask.sum(-1).clamp(min=1))


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


def pretrain(config: TinyLMConfig, data: dict[str, torch.Tensor], progress: bool = False) -> nn.Module:
    """Build and pretrain the tiny model on ``data`` (``input_ids``, ``labels``,
    ``attention_mask``; loss on labelled tokens), without caching."""
    tokenizer = build_tokenizer(config)
    model = _random_tiny_model(config, len(tokenizer))
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, weight_decay=0.0)
    warmup = max(1, config.pretrain_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _warmup_cosine(step, warmup, config.pretrain_steps))
    n = len(data["input_ids"])
    model.train()
    for _ in tqdm(range(config.pretrain_steps), desc="pretraining tiny LM", disable=not progress, leave=False):
        index = torch.randint(0, n, (config.pretrain_batch,), generator=generator)
        loss = answer_nll(model, {k: v[index] for k, v in data.items()}).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    model.eval()
    return model


def load_base_model(config: TinyLMConfig, corpus: Callable[[], dict[str, torch.Tensor]], corpus_key: str,
                    progress: bool = False) -> nn.Module:
    """The pretrained base model: from the cache, or pretrained now and cached atomically.

    Args:
        config: Architecture and pretraining recipe.
        corpus: Builds the encoded pretraining corpus (called only when pretraining).
        corpus_key: Names the corpus in the cache key.
        progress: Show a progress bar while pretraining.

    With ``config.model_name`` set, the checkpoint is loaded with transformers instead.
    """
    if config.model_name is not None:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(config.model_name)
    cache = cache_dir() / f"tiny-lm-{config.cache_key(corpus_key)}.safetensors"
    with file_lock(cache):  # parallel notebooks pretrain once; the others wait and load it
        return _cached_base_model(config, corpus, cache, progress)


def _cached_base_model(config: TinyLMConfig, corpus: Callable[[], dict[str, torch.Tensor]], cache: Path,
                       progress: bool) -> nn.Module:
    tokenizer = build_tokenizer(config)
    if cache.is_file():
        model = _random_tiny_model(config, len(tokenizer))
        try:
            result = model.load_state_dict(load_file(cache), strict=False)
            if not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}:
                model.eval()
                return model
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            log.warning("cached base model %s is unreadable (%s); pretraining again", cache, exc)
        cache.unlink(missing_ok=True)
    model = pretrain(config, corpus(), progress=progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=cache.name, dir=cache.parent)
    os.close(handle)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, tmp)
    os.replace(tmp, cache)
    return model
