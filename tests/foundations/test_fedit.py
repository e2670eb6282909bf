"""FedIT: the read-outs of what an adapter memorised, and the entry's claims at smoke size.

The LoRA task itself (only adapters travel, determinism, a checkpoint by path) lives in the
substrate and is tested in ``tests/test_lora_task.py``. Here: ``record_logprobs``,
``greedy_reproduces`` (the shared exact-extraction check) and ``greedy_answer`` against values computed by hand on a toy language
model, and the claims on the federation of the ``profiles-client`` scenario (trained once through
the shared round loop and cached, the same run the notebook shows).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fedunlearn import catalog
from fedunlearn.data.profiles import QARecord
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.loop import run_rounds
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.foundations.fedit import (
    ENTRY,
    MEMBER_GAIN,
    MEMBER_MARGIN,
    greedy_answer,
    record_logprobs,
)
from fedunlearn.models.decoding import greedy_reproduces as greedy_extracted

# peft calls a transformers property that transformers 5 marks as deprecated; not ours to fix.


# ---------------------------------------------------------------- read-outs on a toy model


class SuccessorLM(nn.Module):
    """A toy causal LM: after token ``t`` the logit of ``t + 1`` is ``ln 3``, every other logit 0.

    With ``vocab`` tokens, $p(t + 1 \\mid t) = 3 / (3 + \\text{vocab} - 1)$ and every other token
    has $1 / (3 + \\text{vocab} - 1)$; greedy decoding counts up. After ``stop_after`` it puts all
    mass on ``eos`` instead.
    """

    def __init__(self, vocab: int, stop_after: int | None = None, eos: int = 1) -> None:
        super().__init__()
        self.vocab, self.stop_after, self.eos = vocab, stop_after, eos
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> SimpleNamespace:
        following = (input_ids + 1) % self.vocab
        if self.stop_after is not None:
            following = torch.where(input_ids == self.stop_after, torch.full_like(input_ids, self.eos), following)
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.anchor
        logits.scatter_(-1, following.unsqueeze(-1), math.log(3))
        return SimpleNamespace(logits=logits, cache=None)  # the next token depends on the last one only


def toy_records() -> dict[str, torch.Tensor]:
    """Three records over 10 tokens, prompt ``2 3`` (or ``2``), right-padded with 0."""
    return {
        # A: answer 4 5 follows 3 by counting up      -> both answer tokens are the successors
        # B: answer 7 8 after 3                       -> 7 is not 3's successor, 8 is 7's
        # C: prompt 2, answer 3 (shorter, more padding) -> a successor
        "input_ids": torch.tensor([[2, 3, 4, 5, 0], [2, 3, 7, 8, 0], [2, 3, 0, 0, 0]]),
        "labels": torch.tensor([[-100, -100, 4, 5, -100], [-100, -100, 7, 8, -100], [-100, 3, -100, -100, -100]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]),
    }


@pytest.mark.parametrize("batch_size", [64, 1])
def test_record_logprobs_by_hand(batch_size) -> None:
    # vocab 10: p(successor) = 3 / (3 + 9) = 1/4, p(other) = 1/12
    values = record_logprobs(SuccessorLM(10), toy_records(), batch_size=batch_size)
    expected = torch.tensor([
        math.log(1 / 4),                           # A: (ln 1/4 + ln 1/4) / 2
        (math.log(1 / 12) + math.log(1 / 4)) / 2,  # B: (ln 1/12 + ln 1/4) / 2
        math.log(1 / 4),                           # C: one answer token, a successor
    ])
    torch.testing.assert_close(values, expected)


@pytest.mark.parametrize("batch_size", [64, 2])
def test_greedy_extracted_by_hand(batch_size) -> None:
    # greedy decoding counts up: A (4 5 after 3) and C (3 after 2) are reproduced, B is not
    assert greedy_extracted(SuccessorLM(10), toy_records(), batch_size=batch_size).tolist() == [True, False, True]


def test_record_readouts_of_no_record_are_empty() -> None:
    empty = {k: v[:0] for k, v in toy_records().items()}
    assert record_logprobs(SuccessorLM(10), empty).shape == (0,)
    assert greedy_extracted(SuccessorLM(10), empty).shape == (0,)


def test_greedy_answer_decodes_until_the_end_token_or_the_limit() -> None:
    from transformers import ByT5Tokenizer

    tokenizer = ByT5Tokenizer()  # token = byte + 3, end-of-sequence = 1
    task = SimpleNamespace(tokenizer=tokenizer)
    record = QARecord(record_id=0, owner_id=0, kind="canary", prompt="ab", answer="cd")
    vocab = len(tokenizer)
    # counting up from "b" gives "c", "d", "e", ... until the limit of new tokens
    assert greedy_answer(task, SuccessorLM(vocab), record, max_new_tokens=3) == "cde"
    # stop after "d" (byte 100 -> token 103): the answer is exactly "cd"
    assert greedy_answer(task, SuccessorLM(vocab, stop_after=ord("d") + 3), record) == "cd"


def test_entry_claims_are_in_the_catalog() -> None:
    assert catalog.get("fedit").claims == ENTRY.claims
    assert "10,000x" in ENTRY.claims[1].reported


# ---------------------------------------------------------------- the claims, at smoke size


@pytest.fixture(scope="module")
def scenario():
    from fedunlearn.unlearning.scenarios import build_scenario

    return build_scenario("profiles-client", 0)


@pytest.fixture(scope="module")
def trained(scenario):
    """The scenario's federation, trained once through ``run_rounds`` and cached (shared with
    the notebook, the profile unlearning entries and the docs build)."""
    from fedunlearn.unlearning.cache import trained_federation

    return trained_federation(scenario)


@pytest.fixture(scope="module")
def alone(scenario, trained):
    """Client 0 alone, with the same recipe and rounds, through the same loop."""
    pool = InProcessPool(scenario.task, {0: scenario.clients[0]}, trained.model)
    return run_rounds(pool, trained.init_state, scenario.config, range(scenario.config.rounds), counter=CostCounter())


def mean_logprob(scenario, model, state, tensors) -> float:
    scenario.task.set_state(model, state)
    return float(record_logprobs(model, tensors).mean())


def stacked(clients) -> dict[str, torch.Tensor]:
    clients = list(clients)
    return {k: torch.cat([c.tensors[k] for c in clients]) for k in clients[0].tensors}


@pytest.mark.slow
def test_federation_memorises_members(scenario, trained):
    """Members' answers gain more than MEMBER_GAIN nats per token over the initial adapter and
    end more than MEMBER_MARGIN above held-out people.

    Control: fails under do-nothing (the initial adapter $\\theta_0$ as the result: no gain).
    """
    model = trained.model
    members = stacked(scenario.clients.values())
    before = mean_logprob(scenario, model, trained.init_state, members)
    member = mean_logprob(scenario, model, trained.final_state, members)
    nonmember = mean_logprob(scenario, model, trained.final_state, scenario.test)
    assert member > before + MEMBER_GAIN
    assert member > nonmember + MEMBER_MARGIN


@pytest.mark.slow
def test_federation_beats_one_client_alone_on_the_other_clients_people(scenario, trained, alone):
    """FedIT's claim in the shape of this knowledge base: on the people of clients 1-3 the
    federated adapter gains more than MEMBER_GAIN over the initial adapter and ends more than
    MEMBER_MARGIN above client 0 alone.

    Controls: fails under do-nothing (federated = initial adapter: no gain) and under the
    ablation that federates client 0 alone (federated = client 0 alone: no margin).
    """
    model = trained.model
    others = stacked(c for cid, c in scenario.clients.items() if cid != 0)
    initial = mean_logprob(scenario, model, trained.init_state, others)
    federated = mean_logprob(scenario, model, trained.final_state, others)
    local = mean_logprob(scenario, model, alone, others)
    assert federated > initial + MEMBER_GAIN
    assert federated > local + MEMBER_MARGIN


@pytest.mark.slow
def test_greedy_extracted_agrees_with_greedy_decoding(scenario, trained):
    """The one-pass check gives the same verdict as decoding token by token, on the trained
    adapter's member canaries (some extracted) and a few held-out ones (none)."""
    member_people = {int(p) for c in scenario.clients.values() for p in c.owner_ids}
    records = [r for r in scenario.records.values() if r.kind == "canary" and r.owner_id in member_people]
    records += [r for r in scenario.unseen_records if r.kind == "canary"][:5]
    model = trained.model
    scenario.task.set_state(model, trained.final_state)
    fast = greedy_extracted(model, scenario.task.encode(records)).tolist()
    slow = [greedy_answer(scenario.task, model, r) == r.answer for r in records]
    assert fast == slow
    assert any(slow), "the trained adapter should reproduce some member canary exactly"
