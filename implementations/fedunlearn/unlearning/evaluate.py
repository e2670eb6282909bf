"""The one evaluation function: every model of a comparison goes through
[`evaluate`][fedunlearn.unlearning.evaluate.evaluate], and gaps are taken to the retrain oracle of
the same seed ([`gaps_to_oracle`][fedunlearn.unlearning.evaluate.gaps_to_oracle]).

Classification metrics: ``test_acc``, ``retain_acc``, ``forget_acc`` (clean forgotten examples),
``forget_loss``, ``mia_auc`` (LOSS score; members = forgotten clean examples, non-members = as many
test examples) and ``asr`` (backdoor scenarios).

Language metrics (answer tokens only): ``test_logprob`` (held-out people), ``retain_logprob``,
``forget_logprob`` (mean log-probability per answer token); ``mia_auc_loss``, ``mia_auc_zlib``,
``mia_auc_mink`` (members = forgotten records, non-members = held-out people's records of the same
kinds); ``canary_exposure`` (mean over forgotten canaries, 100 random candidates) and
``canary_extraction`` (share of forgotten secrets reproduced exactly by greedy decoding).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedunlearn.data.federated_digits import is_poisoned
from fedunlearn.data.profiles import QARecord
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.requests import split_clients
from fedunlearn.federated.task import State
from fedunlearn.models.tiny_lm import answer_token_logprobs, model_device
from fedunlearn.unlearning import metrics
from fedunlearn.unlearning.scenarios import Scenario

EXPOSURE_CANDIDATES = 100
BATCH = 64


def _concat(parts: Mapping[int, ClientData]) -> ClientData | None:
    if not parts:
        return None
    items = list(parts.values())
    return ClientData(
        client_id=-1,
        tensors={k: torch.cat([d.tensors[k] for d in items]) for k in items[0].tensors},
        record_ids=torch.cat([d.record_ids for d in items]),
        owner_ids=torch.cat([d.owner_ids for d in items]),
        class_labels=None if items[0].class_labels is None else torch.cat([d.class_labels for d in items]),
    )


@torch.no_grad()
def _per_example(model: nn.Module, scenario: Scenario, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    n = len(next(iter(tensors.values())))
    device = scenario.task.device
    return torch.cat([scenario.task.per_example_loss(model, {k: v[i : i + BATCH].to(device) for k, v in tensors.items()}).cpu()
                      for i in range(0, n, BATCH)])


@torch.no_grad()
def _token_logprobs(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(tensors["input_ids"])
    parts = [answer_token_logprobs(model, {k: v[i : i + BATCH] for k, v in tensors.items()}) for i in range(0, n, BATCH)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _classification(model: nn.Module, scenario: Scenario, retain: ClientData | None, forget: ClientData | None) -> dict[str, float]:
    task = scenario.task
    out = {"test_acc": metrics.accuracy(task.predict(model, scenario.test["x"]), scenario.test["y"])}
    if retain is not None:
        out["retain_acc"] = metrics.accuracy(task.predict(model, retain.tensors["x"]), retain.tensors["y"])
    if forget is not None:
        clean = forget.select(~is_poisoned(forget.record_ids))
        out["forget_acc"] = metrics.accuracy(task.predict(model, clean.tensors["x"]), clean.tensors["y"])
        member_loss = _per_example(model, scenario, clean.tensors)
        out["forget_loss"] = float(member_loss.mean())
        generator = torch.Generator().manual_seed(scenario.seed)
        pick = torch.randperm(len(scenario.test["y"]), generator=generator)[: clean.num_samples]
        nonmember_loss = _per_example(model, scenario, {k: v[pick] for k, v in scenario.test.items()})
        out["mia_auc"] = metrics.roc_auc(-member_loss, -nonmember_loss)
    if scenario.backdoor_target is not None:
        triggered = scenario.triggered_test()
        out["asr"] = metrics.attack_success_rate(task.predict(model, triggered["x"]), triggered["y"], scenario.backdoor_target)
    return out


def _mia_scores(model: nn.Module, scenario: Scenario, records: list[QARecord]) -> dict[str, torch.Tensor]:
    logprobs, mask = _token_logprobs(model, scenario.task.encode(records))
    nll = -(logprobs.sum(-1) / mask.sum(-1))
    return {"loss": -nll, "zlib": metrics.zlib_scores(nll, [r.answer for r in records]),
            "mink": metrics.min_k_scores(logprobs, mask)}


@torch.no_grad()
def _canaries(model: nn.Module, scenario: Scenario, canaries: list[QARecord]) -> dict[str, float]:
    generator = torch.Generator().manual_seed(scenario.seed + 17)
    exposures, extracted = [], 0
    tokenizer = scenario.task.tokenizer
    for canary in canaries:
        codes = [f"{int(c):06d}" for c in torch.randint(0, 1_000_000, (EXPOSURE_CANDIDATES,), generator=generator)]
        codes = [c for c in codes if c != canary.answer]
        variants = [canary] + [QARecord(-1, canary.owner_id, "canary", canary.prompt, c) for c in codes]
        logprobs, _ = _token_logprobs(model, scenario.task.encode(variants))
        totals = logprobs.sum(-1)
        exposures.append(metrics.exposure(float(totals[0]), totals[1:].tolist()))
        ids = tokenizer(canary.prompt, add_special_tokens=False)["input_ids"]
        for _ in range(len(tokenizer(canary.answer, add_special_tokens=False)["input_ids"])):
            logits = model(input_ids=torch.tensor([ids], device=model_device(model))).logits
            ids.append(int(logits[0, -1].argmax()))
        prompt_len = len(tokenizer(canary.prompt, add_special_tokens=False)["input_ids"])
        extracted += tokenizer.decode(ids[prompt_len:]) == canary.answer
    return {"canary_exposure": sum(exposures) / len(exposures), "canary_extraction": extracted / len(canaries)}


def _language(model: nn.Module, scenario: Scenario, retain: ClientData | None, forget: ClientData | None) -> dict[str, float]:
    def mean_logprob(tensors: dict[str, torch.Tensor]) -> float:
        return float(-_per_example(model, scenario, tensors).mean())

    out = {"test_logprob": mean_logprob(scenario.test)}
    if retain is not None:
        out["retain_logprob"] = mean_logprob(retain.tensors)
    if forget is not None:
        out["forget_logprob"] = mean_logprob(forget.tensors)
        members = [scenario.records[int(r)] for r in forget.record_ids]
        kinds = {r.kind for r in members}
        others = [r for r in scenario.heldout_records if r.kind in kinds]
        inside, outside = _mia_scores(model, scenario, members), _mia_scores(model, scenario, others)
        for name in ("loss", "zlib", "mink"):
            out[f"mia_auc_{name}"] = metrics.roc_auc(inside[name], outside[name])
        canaries = [r for r in members if r.kind == "canary"]
        if canaries:
            out.update(_canaries(model, scenario, canaries))
    return out


def evaluate(scenario: Scenario, state: State, model: nn.Module | None = None) -> dict[str, float]:
    """Every metric of ``state`` in ``scenario`` (see the module docstring for the list).

    Args:
        scenario: The scenario (its request defines the forget and retain data).
        state: Trainable state to evaluate.
        model: A model instance to reuse (built from the task when omitted).
    """
    model = model if model is not None else scenario.task.build_model()
    scenario.task.set_state(model, state)
    model.eval()
    retained, forgotten = split_clients(scenario.clients, scenario.request)
    retain, forget = _concat(retained), _concat(forgotten)
    if scenario.kind == "classification":
        return _classification(model, scenario, retain, forget)
    return _language(model, scenario, retain, forget)


def gaps_to_oracle(metrics_of_method: Mapping[str, float], metrics_of_oracle: Mapping[str, float]) -> dict[str, float]:
    r"""Paired gaps $m(\theta_u) - m(\theta_r)$ for every metric both have."""
    return {k: metrics_of_method[k] - metrics_of_oracle[k] for k in metrics_of_method if k in metrics_of_oracle}
