"""FedIT: the read-outs of what an adapter knows, and the entry's claims at smoke size.

The LoRA task itself (only adapters travel, determinism, a checkpoint by path) lives in the
substrate and is tested in ``tests/test_lora_task.py``. Here: ``record_logprobs``,
``greedy_reproduces`` (the shared exact-extraction check), ``greedy_answer(s)`` and
``well_formed`` against values computed by hand (a toy language model, hand-picked answers), and
the claims on the federation of the ``profiles-client`` scenario (trained once through
the shared round loop and cached, the same run the notebook shows).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fedunlearn import catalog
from fedunlearn.data.profiles import QARecord, make_profiles, qa_records
from fedunlearn.foundations.fedit import (
    ENTRY,
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


def test_greedy_answers_batch_equals_one_by_one() -> None:
    from transformers import ByT5Tokenizer

    task = SimpleNamespace(tokenizer=ByT5Tokenizer())
    model = SuccessorLM(len(task.tokenizer), stop_after=ord("f") + 3)
    records = [QARecord(0, 0, "canary", "ab", ""), QARecord(1, 0, "canary", "abcd", ""), QARecord(2, 0, "job", "x", "")]
    # counting up until "f", then the end token: "cdef", "ef", and from "x" the limit of 24 tokens
    assert greedy_answers(task, model, records) == [greedy_answer(task, model, r) for r in records]
    assert greedy_answers(task, model, records)[:2] == ["cdef", "ef"]


@pytest.mark.parametrize(
    ("kind", "answer", "expected"),
    [
        ("canary", "0042", True), ("canary", "042", False), ("canary", "00042", False), ("canary", "12a4", False),
        ("canary", "\u0661\u0662\u0663\u0664", False),  # Arabic-Indic digits are not ASCII digits
        ("year", str(YEAR_RANGE[0]), True), ("year", str(YEAR_RANGE[1]), True),
        ("year", str(YEAR_RANGE[0] - 1), False), ("year", str(YEAR_RANGE[1] + 1), False), ("year", "19x7", False),
        ("city", "New Tinaville", True),    # prefix + first name + suffix
        ("city", "Lake Michael", True),     # prefix + first name
        ("city", "Seanfurt", True),         # first name + suffix
        ("city", "Smithmouth", True),       # last name + suffix
        ("city", "Smith", False),           # a name without prefix or suffix
        ("city", "North Sannnfurt", False), # not a name
        ("city", "Nouth Seanfurt", False),  # not a prefix
        ("job", "Surveyor", True), ("job", "Surveyer", False),
        ("job", "Engineer", True), ("job", "Nurse, adult", False), ("job", "Chiefisual e", False),
    ],
)
def test_well_formed_by_hand(kind, answer, expected) -> None:
    assert well_formed(kind, answer) is expected


def test_every_generated_value_is_well_formed() -> None:
    """The definition covers the generator: every true answer of 300 people is well formed."""
    records = [r for p in make_profiles(300, seed=11) for r in qa_records(p)]
    assert all(well_formed(r.kind, r.answer) for r in records)
    with pytest.raises(ValueError):
        well_formed("email", "a@b.c")


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
def alone(scenario):
    """Client 0 alone, with the same recipe and rounds, through the same loop (cached)."""
    from fedunlearn.unlearning.cache import trained_federation

    return trained_federation(client_alone(scenario)).final_state


def mean_logprob(scenario, model, state, tensors) -> float:
    scenario.task.set_state(model, state)
    return float(record_logprobs(model, tensors).mean())


def stacked(clients) -> dict[str, torch.Tensor]:
    clients = list(clients)
    return {k: torch.cat([c.tensors[k] for c in clients]) for k in clients[0].tensors}


def test_client_alone_keeps_one_client_and_the_recipe(scenario) -> None:
    cut = client_alone(scenario)
    assert list(cut.clients) == [0] and cut.clients[0] is scenario.clients[0]
    assert cut.config == scenario.config
    assert client_alone(scenario, rounds=60).config.rounds == 60
    assert set(cut.request.record_ids) <= set(scenario.clients[0].record_ids.tolist())  # a valid request


@pytest.mark.slow
def test_federation_memorises_members(scenario, trained):
    """Members' answers gain more than MEMBER_GAIN nats per token over the initial adapter and
    end more than MEMBER_MARGIN above the unseen people.

    Control: fails under do-nothing (the initial adapter $\\theta_0$ as the result: no gain).
    """
    model = trained.model
    members = stacked(scenario.clients.values())
    before = mean_logprob(scenario, model, trained.init_state, members)
    member = mean_logprob(scenario, model, trained.final_state, members)
    nonmember = mean_logprob(scenario, model, trained.final_state, scenario.test)
    assert member > before + MEMBER_GAIN
    assert member > nonmember + MEMBER_MARGIN


def transfer_criterion(scenario, trained, candidate, alone) -> tuple[float, float]:
    """(gap of ``candidate`` to client 0 alone on the unseen people, members' gain of
    ``candidate`` over the initial adapter), in nats per answer token."""
    model = trained.model
    members = stacked(scenario.clients.values())
    gap = mean_logprob(scenario, model, candidate, scenario.test) - mean_logprob(scenario, model, alone, scenario.test)
    gain = mean_logprob(scenario, model, candidate, members) - mean_logprob(scenario, model, trained.init_state, members)
    return gap, gain


@pytest.mark.slow
def test_federated_tuning_beats_local_only_tuning_on_unseen_people(scenario, trained, alone):
    """FedIT's claim where a client alone could gain too: on the unseen people (nobody trained on
    them) the federated adapter's answer log-probability per token exceeds client 0 alone's (same
    rounds) by more than TRANSFER_MARGIN, and the federated adapter did tune (members gain more
    than MEMBER_GAIN).

    Controls (each fails): client 0 alone in the place of the federated adapter (gap 0), and the
    initial adapter in its place (no member gain: the untuned adapter is *better* than both on
    unseen people, so the gap alone would not catch it).
    """
    gap, gain = transfer_criterion(scenario, trained, trained.final_state, alone)
    assert gap > TRANSFER_MARGIN
    assert gain > MEMBER_GAIN
    local_gap, _ = transfer_criterion(scenario, trained, alone, alone)
    assert not local_gap > TRANSFER_MARGIN
    _, initial_gain = transfer_criterion(scenario, trained, trained.init_state, alone)
    assert not initial_gain > MEMBER_GAIN


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
    slow = [answer == r.answer for r, answer in zip(records, greedy_answers(scenario.task, model, records))]
    assert fast == slow
    assert any(slow), "the trained adapter should reproduce some member canary exactly"
