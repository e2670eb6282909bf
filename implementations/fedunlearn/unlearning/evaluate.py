r"""The one evaluation function: every model of a comparison goes through
[`assess`][fedunlearn.unlearning.evaluate.assess] (its metrics alone:
[`evaluate`][fedunlearn.unlearning.evaluate.evaluate]), and every forgetting metric is judged against
the retrain oracle of the same seed ([`gaps_to_oracle`][fedunlearn.unlearning.evaluate.gaps_to_oracle],
[`relative_to_oracle`][fedunlearn.unlearning.evaluate.relative_to_oracle]).

Classification metrics: ``test_acc``, ``retain_acc``, ``forget_acc`` (clean forgotten examples),
``forget_loss``, ``mia_auc`` (LOSS score; members = forgotten clean examples, non-members = as many
test examples), ``asr`` and ``trigger_margin`` (backdoor scenarios).

Language metrics, on the forgotten records (``forget_``), the retained ones (``retain_``), the
unseen people nobody trained on (``unseen_``, the reference population) and public people the base
model was pretrained on (``public_``): mean answer-token log-probability (``*_logprob``;
``test_logprob`` = unseen people); membership AUCs ``mia_auc_loss``, ``mia_auc_zlib``,
``mia_auc_mink`` (non-members = unseen people's records of the same kinds); exact canary exposure
over all $10^4$ secrets (``canary_exposure``; the same for unseen people's canaries:
``unseen_canary_exposure``, the chance reference) and greedy extraction (``canary_extraction``);
Jang et al.'s ``forget_el`` / ``forget_ma`` with their unseen-people thresholds ``unseen_el`` /
``unseen_ma``; TOFU's ``forget_truth_ratio`` and ``model_utility`` (with its six components).
Relative to $\theta_r$: ``forget_quality`` (both kinds) and ``privleak`` (language). The Evaluating
page gives each formula and its source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from fedunlearn.data.federated_digits import is_poisoned
from fedunlearn.data.profiles import SECRET_DIGITS, QARecord, TruthItem, truth_items
from fedunlearn.federated.client import ClientData
from fedunlearn.federated.requests import split_clients
from fedunlearn.federated.task import State
from fedunlearn.models.decoding import (
    greedy_continuations,
    greedy_reproduces,
    secret_logprobs,
    teacher_forced,
)
from fedunlearn.models.tiny_lm import merged_for_inference
from fedunlearn.unlearning import metrics
from fedunlearn.unlearning.scenarios import Scenario

BATCH = 64

#: Jang et al.'s $n$ for short targets.
EL_N = 4

#: Unseen people whose records give the EL/MA thresholds and the reference canary exposure.
REFERENCE_PEOPLE = 5

#: Retained and public people whose records give the model utility (the first by id).
UTILITY_PEOPLE = 5


@dataclass
class Evaluation:
    """Metrics of one model, and the per-item values that relative metrics need.

    Attributes:
        metrics: Metric name -> value.
        items: Per-item samples: ``forget_distribution`` (language: truth ratio of each forget
            question; classification: loss of each forgotten clean example).
    """

    metrics: dict[str, float]
    items: dict[str, list[float]] = field(default_factory=dict)


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
def _classification(model: nn.Module, scenario: Scenario, retain: ClientData | None, forget: ClientData | None) -> Evaluation:
    task = scenario.task
    out = {"test_acc": metrics.accuracy(task.predict(model, scenario.test["x"]), scenario.test["y"])}
    items = {}
    if retain is not None:
        out["retain_acc"] = metrics.accuracy(task.predict(model, retain.tensors["x"]), retain.tensors["y"])
    # a request that forgets only poisoned copies leaves no clean forgotten example: forget_acc,
    # forget_loss and mia_auc are undefined there (the ASR measures that forgetting)
    clean = None if forget is None else forget.select(~is_poisoned(forget.record_ids))
    if clean is not None and clean.num_samples == 0:
        forget = None
    if forget is not None:
        out["forget_acc"] = metrics.accuracy(task.predict(model, clean.tensors["x"]), clean.tensors["y"])
        member_loss = _per_example(model, scenario, clean.tensors)
        out["forget_loss"] = float(member_loss.mean())
        items["forget_distribution"] = member_loss.tolist()
        generator = torch.Generator().manual_seed(scenario.seed)
        pick = torch.randperm(len(scenario.test["y"]), generator=generator)[: clean.num_samples]
        nonmember_loss = _per_example(model, scenario, {k: v[pick] for k, v in scenario.test.items()})
        out["mia_auc"] = metrics.roc_auc(-member_loss, -nonmember_loss)
    if scenario.backdoor_target is not None:
        triggered = scenario.triggered_test()
        target = scenario.backdoor_target
        out["asr"] = metrics.attack_success_rate(task.predict(model, triggered["x"]), triggered["y"], target)
        keep = triggered["y"] != target
        logits = model(triggered["x"][keep].to(task.device)).cpu()
        others = logits.clone()
        others[:, target] = float("-inf")
        # margin of the backdoor's target logit over the best other class, triggered non-target inputs
        out["trigger_margin"] = float((logits[:, target] - others.max(-1).values).mean())
    return Evaluation(out, items)


def _full_sequence_labels(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same records with every real token as a target (prompt and answer)."""
    labels = tensors["input_ids"].masked_fill(tensors["attention_mask"] == 0, -100)
    return {**tensors, "labels": labels}


def _normalised(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logprobs.sum(-1) / mask.sum(-1).clamp(min=1)


def _membership_scores(model: nn.Module, scenario: Scenario, records: list[QARecord]) -> dict[str, torch.Tensor]:
    tensors = scenario.task.encode(records)
    # one pass scores every token; the answer tokens are a subset of them (same logits, same targets)
    whole, _, whole_mask = teacher_forced(model, _full_sequence_labels(tensors), BATCH)
    mask = tensors["labels"][:, 1:] != -100
    logprobs = whole * mask
    return {"loss": _normalised(logprobs, mask),
            "zlib": metrics.zlib_scores(-_normalised(whole, whole_mask), [r.prompt + r.answer for r in records]),
            "mink": metrics.min_k_scores(logprobs, mask)}


def _exposures(model: nn.Module, scenario: Scenario, canaries: list[QARecord]) -> list[float]:
    out = []
    for canary in canaries:
        scores = secret_logprobs(model, scenario.task.tokenizer, canary.prompt, SECRET_DIGITS)
        true = int(canary.answer)
        out.append(metrics.exposure(float(scores[true]), torch.cat([scores[:true], scores[true + 1 :]]).tolist()))
    return out


def _answer_split(tensors: dict[str, torch.Tensor], row: int) -> tuple[list[int], list[int]]:
    """Prompt and answer token ids of one encoded record (answer = the labelled tokens, end token included)."""
    length = int(tensors["attention_mask"][row].sum())
    ids = tensors["input_ids"][row, :length].tolist()
    start = int((tensors["labels"][row, :length] != -100).nonzero()[0])
    return ids[:start], ids[start:]


@torch.no_grad()
def el_ma(model: nn.Module, tensors: dict[str, torch.Tensor], n: int = EL_N,
          pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per encoded record: $\mathrm{EL}_n$ of its answer (greedy continuations after every answer
    prefix that leaves $n$ tokens) and MA (teacher-forced arg-max hits over answer tokens).

    Greedy continuations are decoded only where needed: when the teacher-forced arg-max after
    prefix $t$ is the true token $x_t$, the greedy continuation from $t$ is $x_t$ followed by the
    one from $t + 1$ (same context), so only the positions where the model errs are decoded.
    Clients compute the same numbers on their own records (knowledge unlearning's stopping rule).
    """
    _, hits, mask = teacher_forced(model, tensors, BATCH)
    rows, jobs = [], []
    for row in range(len(hits)):
        prompt, answer = _answer_split(tensors, row)
        hit, last = hits[row][mask[row]].tolist(), len(answer) - n  # prefixes t = 0 .. last keep n tokens
        starts = [t for t in range(last + 1) if not hit[t]] + ([last + 1] if hit[last] else [])
        jobs += [(row, t, prompt + answer[:t], len(answer) - t) for t in starts]
        rows.append((answer, hit, last))
    decoded = greedy_continuations(model, [j[2] for j in jobs], [j[3] for j in jobs], pad_token_id=pad_token_id)
    known = {(j[0], j[1]): c for j, c in zip(jobs, decoded, strict=True)}
    el = []
    for row, (answer, hit, last) in enumerate(rows):
        continuation, continuations = known.get((row, last + 1), []), []
        for t in range(last, -1, -1):  # backwards: a hit extends the next prefix's continuation
            continuation = [answer[t], *continuation] if hit[t] else known[(row, t)]
            continuations.append(continuation)
        el.append(metrics.extraction_likelihood(continuations, [answer[t:] for t in range(last, -1, -1)], n))
    return torch.tensor(el, dtype=torch.float64), hits.sum(-1).float() / mask.sum(-1).clamp(min=1)


def _el_ma(model: nn.Module, scenario: Scenario, records: list[QARecord]) -> tuple[float, float]:
    r"""Mean $\mathrm{EL}_n$ and MA over records (see [`el_ma`][fedunlearn.unlearning.evaluate.el_ma])."""
    tokenizer = scenario.task.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    el, ma = el_ma(model, scenario.task.encode(records), pad_token_id=pad)
    return sum(el.tolist()) / len(el), float(ma.mean())


def _truth_ratios(model: nn.Module, scenario: Scenario, items: list[TruthItem]) -> torch.Tensor:
    flat = [QARecord(-1, it.owner_id, it.kind, it.prompt, answer) for it in items for answer in (it.answer, *it.perturbed)]
    logprobs, _, mask = teacher_forced(model, scenario.task.encode(flat), BATCH)
    normalised = _normalised(logprobs, mask).reshape(len(items), -1)
    return torch.tensor([metrics.truth_ratio(float(row[0]), row[1:].tolist()) for row in normalised])


def _utility_parts(model: nn.Module, scenario: Scenario, records: list[QARecord], prefix: str, seed: int) -> dict[str, float]:
    """Answer probability, ROUGE-L recall of the greedy answer and truth score max(0, 1 - R)."""
    tokenizer = scenario.task.tokenizer
    logprobs, _, mask = teacher_forced(model, scenario.task.encode(records), BATCH)
    probability = float(_normalised(logprobs, mask).exp().mean())
    prompts = [tokenizer(r.prompt, add_special_tokens=False)["input_ids"] for r in records]
    answers = [tokenizer(r.answer, add_special_tokens=False)["input_ids"] for r in records]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    generated = greedy_continuations(model, prompts, [len(a) + 2 for a in answers], pad_token_id=pad)
    rouge = []
    for tokens, answer in zip(generated, answers, strict=True):
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        rouge.append(metrics.rouge_l_recall(tokens, answer))
    items = truth_items(records, scenario.people, scenario.distractors, paraphrases=1, seed=seed)
    truth = float(torch.clamp(1 - _truth_ratios(model, scenario, items), min=0).mean())
    return {f"{prefix}_answer_prob": probability, f"{prefix}_rouge": sum(rouge) / len(rouge), f"{prefix}_truth": truth}


@torch.no_grad()
def _language(model: nn.Module, scenario: Scenario, retain: ClientData | None, forget: ClientData | None) -> Evaluation:
    def mean_logprob(tensors: dict[str, torch.Tensor]) -> float:
        return float(-_per_example(model, scenario, tensors).mean())

    out = {"test_logprob": mean_logprob(scenario.test)}
    items: dict[str, list[float]] = {}
    reference_people = sorted({r.owner_id for r in scenario.unseen_records})[:REFERENCE_PEOPLE]
    reference = [r for r in scenario.unseen_records if r.owner_id in reference_people]
    if retain is not None:
        out["retain_logprob"] = mean_logprob(retain.tensors)
        kept = sorted({int(o) for o in retain.owner_ids})[:UTILITY_PEOPLE]
        retained_records = [scenario.records[int(r)] for r in retain.record_ids if scenario.records[int(r)].owner_id in kept]
        public = sorted({r.owner_id for r in scenario.public_records})[:UTILITY_PEOPLE]
        utility = _utility_parts(model, scenario, retained_records, "retain", scenario.seed)
        utility.update(_utility_parts(model, scenario, [r for r in scenario.public_records if r.owner_id in public],
                                      "public", scenario.seed))
        out.update(utility)
        out["model_utility"] = metrics.harmonic_mean(list(utility.values()))
    if forget is not None:
        out["forget_logprob"] = mean_logprob(forget.tensors)
        members = [scenario.records[int(r)] for r in forget.record_ids]
        kinds = {r.kind for r in members}
        others = [r for r in scenario.unseen_records if r.kind in kinds]
        inside, outside = _membership_scores(model, scenario, members), _membership_scores(model, scenario, others)
        for name in ("loss", "zlib", "mink"):
            out[f"mia_auc_{name}"] = metrics.roc_auc(inside[name], outside[name])
        out["forget_el"], out["forget_ma"] = _el_ma(model, scenario, members)
        out["unseen_el"], out["unseen_ma"] = _el_ma(model, scenario, reference)
        ratios = _truth_ratios(model, scenario, truth_items(members, scenario.people, scenario.distractors, seed=scenario.seed))
        out["forget_truth_ratio"] = float(torch.minimum(ratios, 1 / ratios).mean())
        items["forget_distribution"] = ratios.tolist()
        canaries = [r for r in members if r.kind == "canary"]
        if canaries:
            out["canary_exposure"] = sum(_exposures(model, scenario, canaries)) / len(canaries)
            out["canary_extraction"] = float(greedy_reproduces(model, scenario.task.encode(canaries)).float().mean())
            unseen_canaries = [r for r in reference if r.kind == "canary"]
            out["unseen_canary_exposure"] = sum(_exposures(model, scenario, unseen_canaries)) / len(unseen_canaries)
    return Evaluation(out, items)


def assess(scenario: Scenario, state: State, model: nn.Module | None = None) -> Evaluation:
    """Every metric of ``state`` in ``scenario`` and the per-item values behind the relative ones.

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
    return _language(merged_for_inference(model), scenario, retain, forget)


def evaluate(scenario: Scenario, state: State, model: nn.Module | None = None) -> dict[str, float]:
    """The metrics of [`assess`][fedunlearn.unlearning.evaluate.assess] (without the relative ones)."""
    return assess(scenario, state, model).metrics


def relative_to_oracle(evaluation: Evaluation, oracle: Evaluation) -> dict[str, float]:
    r"""Metrics that exist only against $\theta_r$: ``forget_quality`` (KS p-value of the forget
    distributions) and, for language models, ``privleak`` (MUSE, Min-K% AUC)."""
    out = {}
    if "forget_distribution" in evaluation.items and "forget_distribution" in oracle.items:
        out["forget_quality"] = metrics.forget_quality(evaluation.items["forget_distribution"],
                                                       oracle.items["forget_distribution"])
    if "mia_auc_mink" in evaluation.metrics and "mia_auc_mink" in oracle.metrics:
        out["privleak"] = metrics.privleak(evaluation.metrics["mia_auc_mink"], oracle.metrics["mia_auc_mink"])
    return out


def gaps_to_oracle(metrics_of_method: Mapping[str, float], metrics_of_oracle: Mapping[str, float]) -> dict[str, float]:
    r"""Paired gaps $m(\theta_u) - m(\theta_r)$ for every metric both have."""
    return {k: metrics_of_method[k] - metrics_of_oracle[k] for k in metrics_of_method if k in metrics_of_oracle}
