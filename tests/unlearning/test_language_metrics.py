"""The language-model metrics: their inputs, the shortcut in EL_n, and that they tell θ_o from θ_r.

The slow test is the metrics' own claim test: on ``profiles-client`` (the entries' smoke size) the
original model, which memorised client 0's people, must be judged *not forgotten* by every
forgetting metric, and a second retrained model must be judged forgotten. It fails if a metric
reads the wrong population (e.g. unseen instead of forgotten records) or loses its sign.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fedunlearn.data.profiles import PARAPHRASES, make_profiles, qa_records, truth_items
from fedunlearn.federated.lora_task import LoraCausalLMTask
from fedunlearn.models.decoding import greedy_continuations
from fedunlearn.unlearning import metrics
from fedunlearn.unlearning.compare import compare
from fedunlearn.unlearning.evaluate import EL_N, _el_ma
from fedunlearn.unlearning.scenarios import LM_SMOKE


def test_truth_items_paraphrase_and_perturb_with_other_peoples_values():
    people = make_profiles(6, seed=1)
    records = [r for p in people[:2] for r in qa_records(p)]
    items = truth_items(records, {p.person_id: p for p in people}, make_profiles(30, seed=9, first_id=500), seed=4)
    assert len(items) == 2 * len(records)
    by_id = {p.person_id: p for p in people}
    for index, (item, record) in enumerate(zip(items, [r for r in records for _ in range(2)])):
        assert item.answer == record.answer and item.prompt != record.prompt
        question = PARAPHRASES[record.kind][index % 2].format(name=by_id[record.owner_id].name)
        assert item.prompt == f"Q: {question}\nA: "
        assert len(item.perturbed) == 3 and record.answer not in item.perturbed
        assert len(set(item.perturbed)) == 3
    again = truth_items(records, {p.person_id: p for p in people}, make_profiles(30, seed=9, first_id=500), seed=4)
    assert again == items


def test_extraction_likelihood_shortcut_equals_decoding_every_prefix():
    task = LoraCausalLMTask(init_seed=0)
    model = task.build_model()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    records = [r for p in make_profiles(3, seed=2) for r in qa_records(p)]
    el, ma = _el_ma(model, SimpleNamespace(task=task), records)
    tokenizer = task.tokenizer
    brute = []
    for r in records:
        prompt = tokenizer(r.prompt, add_special_tokens=False)["input_ids"]
        answer = tokenizer(r.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        positions = range(len(answer) - EL_N + 1)
        outs = greedy_continuations(model, [prompt + answer[:t] for t in positions], [len(answer) - t for t in positions])
        brute.append(metrics.extraction_likelihood(outs, [answer[t:] for t in positions], EL_N))
    assert el == pytest.approx(sum(brute) / len(brute), abs=1e-9)
    assert 0.0 <= ma <= 1.0


@pytest.mark.slow
def test_language_metrics_tell_the_original_from_a_retrained_model():
    cmp = compare("profiles-client", ["do-nothing"], progress=False, **LM_SMOKE)
    original, second = cmp.per_seed[0]["original"], cmp.per_seed[0]["oracle_second_seed"]
    # memorised: above the unseen-people threshold (Jang et al.), above θ_r's exposure, separable
    assert original["forget_el"] > original["unseen_el"] + 0.1
    assert original["forget_ma"] > original["unseen_ma"] + 0.1
    assert original["canary_exposure"] > cmp.value("retrain", "canary_exposure") + 3
    assert original["forget_quality"] < 0.05 and original["privleak"] > 20
    # a model that never saw client 0 is within the thresholds and indistinguishable from θ_r
    assert second["forget_el"] <= second["unseen_el"] + 0.02
    assert second["forget_ma"] <= second["unseen_ma"] + 0.02
    assert second["forget_quality"] >= 0.05
    assert abs(second["canary_exposure"] - cmp.value("retrain", "canary_exposure")) < 3
