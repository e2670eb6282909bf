"""FedIT: only LoRA adapters travel, runs are deterministic, and the federation memorises."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fedunlearn.data.profiles import RECORDS_PER_PERSON
from fedunlearn.federated.costs import CostCounter, state_bytes
from fedunlearn.federated.loop import run_federation
from fedunlearn.foundations.fedit import (
    PROFILES_FEDERATION,
    LoraCausalLMTask,
    profile_clients,
    record_logprobs,
)
from fedunlearn.models.tiny_lm import answer_token_logprobs, trim_padding

SMALL = replace(PROFILES_FEDERATION, rounds=2, local_epochs=1)


@pytest.fixture(scope="module")
def task() -> LoraCausalLMTask:
    return LoraCausalLMTask(init_seed=0)


@pytest.fixture(scope="module")
def federation(task):
    return profile_clients(task, seed=0)


@pytest.fixture(scope="module")
def trained(task, federation):
    """The default federation trained once (shared by the slow claim test)."""
    model = task.build_model()
    init = task.get_state(model)
    counter = CostCounter()
    state = run_federation(
        task, federation.clients, init, PROFILES_FEDERATION, model=model, counter=counter
    )
    return model, init, state, counter


def test_people_live_on_one_client(federation):
    seen = {}
    for cid, people in federation.client_people.items():
        for person in people:
            assert person not in seen, f"person {person} on clients {seen[person]} and {cid}"
            seen[person] = cid
        assert federation.clients[cid].num_samples == len(people) * RECORDS_PER_PERSON
    heldout_people = {r.owner_id for r in federation.heldout}
    assert not heldout_people & set(seen)


def test_trimming_does_not_change_logprobs(task, federation):
    model = task.build_model()
    batch = federation.clients[0].batch(torch.arange(8))
    assert trim_padding(batch)["input_ids"].shape[1] < batch["input_ids"].shape[1]
    trimmed, mask = answer_token_logprobs(model, batch)
    assert trimmed.shape == (8, batch["input_ids"].shape[1] - 1)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    full = torch.log_softmax(logits[:, :-1].float(), -1)
    targets = batch["labels"][:, 1:]
    expected = full.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (targets != -100)
    assert torch.equal(mask, targets != -100)
    torch.testing.assert_close(trimmed.detach(), expected, atol=1e-4, rtol=1e-4)


def test_only_adapters_are_exchanged(task, federation):
    model = task.build_model()
    base_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    init = task.get_state(model)
    assert init and all("lora_" in key for key in init)
    counter = CostCounter()
    state = run_federation(task, federation.clients, init, SMALL, model=model, counter=counter)
    assert set(state) == set(init)
    adapter, base = state_bytes(init), state_bytes(base_before)
    assert adapter < 0.25 * base
    # every byte that travelled is an adapter: K clients x T rounds x 2 directions
    assert counter.bytes_communicated == 2 * len(federation.clients) * SMALL.rounds * adapter
    after = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(after[k], base_before[k]) for k in base_before)
    assert any(not torch.equal(state[k], init[k]) for k in init)


def test_same_seed_same_adapters(task, federation):
    def run():
        model = task.build_model()
        return run_federation(task, federation.clients, task.get_state(model), SMALL, model=model)

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_federation_memorises_members(task, federation, trained):
    model, init, state, _ = trained
    members = {
        k: torch.cat([c.tensors[k] for c in federation.clients.values()])
        for k in federation.clients[0].tensors
    }
    heldout = task.encode(federation.heldout)
    task.set_state(model, init)
    before = float(record_logprobs(model, members).mean())
    task.set_state(model, state)
    member, nonmember = (
        float(record_logprobs(model, members).mean()),
        float(record_logprobs(model, heldout).mean()),
    )
    assert member > before + 0.5
    assert member > nonmember + 1.0
