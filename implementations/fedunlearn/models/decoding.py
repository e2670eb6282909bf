r"""Greedy decoding and exact scoring of short continuations: the one decoder of the project.

Every metric that asks "what would the model write?" goes through
[`greedy_continuations`][fedunlearn.models.decoding.greedy_continuations]: extraction likelihood
(Jang et al.), ROUGE of greedy answers, the FedIT entry's answers. Whether greedy decoding
reproduces an answer exactly needs no decoding at all: it does if and only if, with the true answer
as prefix, every answer token (end token included) is the arg-max of the next-token distribution
([`greedy_reproduces`][fedunlearn.models.decoding.greedy_reproduces], one teacher-forced pass).

[`secret_logprobs`][fedunlearn.models.decoding.secret_logprobs] scores *every* $d$-digit secret
after a prompt, $\log p(s \mid \text{prompt}) = \sum_{i=1}^{d} \log p(s_i \mid \text{prompt}, s_{<i})$,
for the exact canary exposure over all $10^d$ candidates (Carlini et al. 2019).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import StaticCache

from fedunlearn.models.tiny_lm import model_device, trim_padding


@torch.no_grad()
def greedy_continuations(model: nn.Module, prefixes: Sequence[Sequence[int]], lengths: Sequence[int],
                         pad_token_id: int = 0, batch_size: int = 256) -> list[list[int]]:
    """Greedy continuation of each prefix: ``lengths[i]`` new tokens after ``prefixes[i]``.

    Decoding does not stop at the end token (callers cut where they need). Prefixes are batched
    with left padding, explicit position ids and a preallocated key-value cache; the result equals
    decoding each prefix alone (tested).

    Args:
        model: A causal LM (transformers interface, also through peft).
        prefixes: Token ids of each prefix (at least one token each).
        lengths: New tokens per prefix.
        pad_token_id: Filler of the left padding (masked out).
        batch_size: Prefixes per forward pass.
    """
    model.eval()
    device = model_device(model)
    out: list[list[int]] = [[] for _ in prefixes]
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))  # similar lengths together
    for start in range(0, len(order), batch_size):
        rows = [i for i in order[start : start + batch_size] if lengths[i] > 0]
        if not rows:
            continue
        width = max(len(prefixes[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, i in enumerate(rows):
            ids[row, width - len(prefixes[i]):] = torch.tensor(list(prefixes[i]))
            mask[row, width - len(prefixes[i]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        steps = max(lengths[i] for i in rows)
        # keys and values written in place (a growing cache would copy itself at every step); a
        # model without a transformers config brings its own cache
        static = ({"cache": StaticCache(config=model.config, max_cache_len=width + steps)}
                  if hasattr(model, "config") else {})
        result = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **static)
        tokens = []
        for step in range(steps):
            token = result.logits[:, -1].argmax(-1)
            tokens.append(token.cpu())
            if step + 1 == steps:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            result = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                           cache=result.cache, use_cache=True)
        generated = torch.stack(tokens, dim=1)
        for row, i in enumerate(rows):
            out[i] = generated[row, : lengths[i]].tolist()
    return out


@torch.no_grad()
def teacher_forced(model: nn.Module, tensors: Mapping[str, torch.Tensor], batch_size: int = 64
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per answer token: log-probability, whether it is the arg-max, and the answer mask.

    Args:
        model: A causal LM.
        tensors: Encoded records (``input_ids``, ``labels`` with -100 outside the answer,
            ``attention_mask``).
        batch_size: Records per forward pass.

    Returns:
        ``(logprobs, hits, mask)``, each ``[records, length - 1]``; position ``i`` scores token ``i+1``.
    """
    model.eval()
    n, full = tensors["input_ids"].shape
    device = model_device(model)
    logprobs = torch.zeros(n, full - 1)
    hits = torch.zeros(n, full - 1, dtype=torch.bool)
    mask = torch.zeros(n, full - 1, dtype=torch.bool)
    for start in range(0, n, batch_size):
        chunk = trim_padding({k: v[start : start + batch_size].to(device) for k, v in tensors.items()})
        logits = model(input_ids=chunk["input_ids"], attention_mask=chunk["attention_mask"]).logits[:, :-1].float()
        targets = chunk["labels"][:, 1:]
        keep = targets != -100
        width = targets.shape[1]
        picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        rows = slice(start, start + len(targets))
        logprobs[rows, :width] = (picked * keep).cpu()
        hits[rows, :width] = ((logits.argmax(-1) == targets) & keep).cpu()
        mask[rows, :width] = keep.cpu()
    return logprobs, hits, mask


def greedy_reproduces(model: nn.Module, tensors: Mapping[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """Whether greedy decoding of each record's prompt returns exactly its answer and then stops.

    Returns:
        A boolean per record: every answer token (end token included) is the arg-max.
    """
    if len(tensors["input_ids"]) == 0:
        return torch.zeros(0, dtype=torch.bool)
    _, hits, mask = teacher_forced(model, tensors, batch_size)
    return (hits | ~mask).all(-1)


def digit_tokens(tokenizer) -> list[int] | None:
    """The ten digit token ids when every digit string tokenizes digit by digit (the byte
    tokenizer does), else ``None``."""
    digits = [tokenizer("0123456789"[d], add_special_tokens=False)["input_ids"] for d in range(10)]
    if any(len(d) != 1 for d in digits):
        return None
    ids = [d[0] for d in digits]
    if tokenizer("9081726354", add_special_tokens=False)["input_ids"] != [ids[int(c)] for c in "9081726354"]:
        return None
    return ids


#: Longest secret scored in one tree-masked pass (its $\sum_{i=1}^{d-1} 10^i$ prefixes attend to
#: each other through an $N \times N$ mask); longer secrets are scored sequence by sequence.
TREE_DIGITS = 4


@torch.no_grad()
def secret_logprobs(model: nn.Module, tokenizer, prompt: str, digits: int) -> torch.Tensor:
    r"""$\log p(s \mid \text{prompt})$ for every $d$-digit secret $s$, index = the secret's value.

    With a digit-by-digit tokenizer the prompt runs once, then every proper prefix of every secret
    (the $10 + 100 + \dots + 10^{d-1}$ digit strings of 1 to $d-1$ digits) runs in **one** pass on
    the prompt's key-value cache, as a tree: each prefix is one token that attends to the prompt
    and to its own ancestors only (a 4-D attention mask), at position $|\text{prompt}| + i - 1$
    for a prefix of $i$ digits. Its logits give the next digit's distribution, so the pass yields
    every factor $p(s_{i+1} \mid \text{prompt}, s_{\le i})$. Other tokenizers, and secrets longer
    than ``TREE_DIGITS``, score every candidate as its own sequence (same result, slower).

    Returns:
        A tensor of $10^d$ log-probabilities (the end token after the secret is not included: all
        candidates have the same length).
    """
    model.eval()
    device = model_device(model)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    table = digit_tokens(tokenizer)
    if table is None or digits > TREE_DIGITS:
        return _secret_logprobs_by_sequence(model, tokenizer, ids, digits, 1000)
    result = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
    scores = torch.log_softmax(result.logits[0, -1].float(), -1)[table].cpu()  # first digit, value order
    if digits == 1:
        return scores
    level, value, family = _prefix_tree(digits)
    # every prefix sees the whole prompt; additive mask (0 = attend), as the model's dtype
    mask = torch.cat([torch.zeros(len(level), len(ids)), family], dim=1).to(next(model.parameters()).dtype)
    tokens = torch.tensor(table)[value % 10]
    out = model(input_ids=tokens[None].to(device), attention_mask=mask[None, None].to(device),
                position_ids=(len(ids) + level - 1)[None].to(device), cache=result.cache, use_cache=True)
    step = torch.log_softmax(out.logits[0].float(), -1)[:, table].cpu()  # [prefixes, next digit]
    for i in range(1, digits):  # prefix p of i digits followed by digit v -> index 10 p + v
        scores = (scores[:, None] + step[level == i]).reshape(-1)
    return scores


@functools.cache
def _prefix_tree(digits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The proper prefixes of ``digits``-digit secrets (1 .. d-1 digits, level by level, each level
    in numeric order): their lengths, their values, and the additive attention mask among them
    (0 where prefix b may see prefix a: a is b or one of its ancestors; -inf elsewhere)."""
    level = torch.cat([torch.full((10**i,), i) for i in range(1, digits)])
    value = torch.cat([torch.arange(10**i) for i in range(1, digits)])
    # a is b or an ancestor of b iff it is no longer and b's leading digits equal it
    shift = (level[:, None] - level[None, :]).clamp(min=0)
    sees = (level[None, :] <= level[:, None]) & (value[:, None] // 10**shift == value[None, :])
    return level, value, torch.zeros(sees.shape).masked_fill(~sees, float("-inf"))


def _secret_logprobs_by_sequence(model: nn.Module, tokenizer, prompt_ids: list[int], digits: int,
                                 batch_size: int) -> torch.Tensor:
    device = model_device(model)
    out = []
    candidates = [f"{v:0{digits}d}" for v in range(10**digits)]
    for start in range(0, len(candidates), batch_size):
        chunk = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in candidates[start : start + batch_size]]
        width = len(prompt_ids) + max(len(c) for c in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, c in enumerate(chunk):
            ids[row, : len(prompt_ids) + len(c)] = torch.tensor(prompt_ids + c)
            mask[row, : len(prompt_ids) + len(c)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        keep = mask[:, 1:].bool() & (torch.arange(1, width)[None, :] >= len(prompt_ids))
        out.append((logp * keep).sum(-1))
    return torch.cat(out)
