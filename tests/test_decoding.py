"""The one decoder and the exact secret scorer against brute force on the embedded LoRA model.

The adapter's B matrices are set to random values so that the model is not the base model (whose
answers would be the same for every prefix) and decoding has something to get wrong.
"""

from __future__ import annotations

import pytest
import torch

from fedunlearn.data.profiles import make_profiles, qa_records
from fedunlearn.federated.lora_task import LoraCausalLMTask
from fedunlearn.models.decoding import (
    _secret_logprobs_by_sequence,
    digit_tokens,
    greedy_continuations,
    greedy_reproduces,
    secret_logprobs,
)


@pytest.fixture(scope="module")
def lm():
    task = LoraCausalLMTask(init_seed=0)
    model = task.build_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    model.eval()
    return task, model


def decode_alone(model, prefix, steps):
    ids = list(prefix)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prefix):]


def test_batched_greedy_decoding_equals_decoding_each_prefix_alone(lm):
    task, model = lm
    records = [r for p in make_profiles(4, seed=3) for r in qa_records(p)]
    tokenizer = task.tokenizer
    prefixes = [tokenizer(r.prompt + r.answer[:k], add_special_tokens=False)["input_ids"] for r in records for k in (0, 3)]
    lengths = [1 + i % 7 for i in range(len(prefixes))]  # ragged lengths and prefixes, several batches
    batched = greedy_continuations(model, prefixes, lengths, batch_size=5)
    assert batched == [decode_alone(model, p, n) for p, n in zip(prefixes, lengths)]


def test_greedy_reproduces_agrees_with_decoding(lm):
    task, model = lm
    records = [r for p in make_profiles(3, seed=5) for r in qa_records(p)]
    tokenizer = task.tokenizer
    # make one record reproducible by construction: its answer is what the model says
    prompt = tokenizer(records[0].prompt, add_special_tokens=False)["input_ids"]
    said = decode_alone(model, prompt, 12)
    if tokenizer.eos_token_id in said:
        said = said[: said.index(tokenizer.eos_token_id)]
    records[0] = type(records[0])(**{**records[0].__dict__, "answer": tokenizer.decode(said)})
    expected = []
    for r in records:
        ids = tokenizer(r.prompt, add_special_tokens=False)["input_ids"]
        target = tokenizer(r.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        expected.append(decode_alone(model, ids, len(target)) == target)
    assert greedy_reproduces(model, task.encode(records)).tolist() == expected


def test_exact_secret_scores_equal_scoring_each_candidate(lm):
    task, model = lm
    tokenizer = task.tokenizer
    assert digit_tokens(tokenizer) is not None  # the byte tokenizer takes the fast path
    prompt = "Q: What is the secret code of Ada Lovelace?\nA: "
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for digits in (1, 2, 3):
        fast = secret_logprobs(model, tokenizer, prompt, digits)
        torch.testing.assert_close(fast, _secret_logprobs_by_sequence(model, tokenizer, ids, digits, 64),
                                   atol=1e-4, rtol=0)
    every = secret_logprobs(model, tokenizer, prompt, 4)
    assert every.shape == (10_000,)
    assert float(torch.logsumexp(every, 0)) <= 1e-4  # probabilities of disjoint events: at most 1
