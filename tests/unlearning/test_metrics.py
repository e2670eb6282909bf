"""Metric primitives against hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedunlearn.unlearning import metrics


def test_auc_hand_computed_with_ties():
    # members 3, 2; non-members 2, 1: pairs (3>2, 3>1, 2=2, 2>1) -> (3 + 0.5) / 4
    assert metrics.roc_auc([3, 2], [2, 1]) == pytest.approx(3.5 / 4)


def test_auc_matches_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    members, others = rng.normal(0.3, 1, 57), rng.normal(0, 1, 61).round(1)
    expected = roc_auc_score([1] * 57 + [0] * 61, np.concatenate([members, others]))
    assert metrics.roc_auc(members, others) == pytest.approx(expected)


def test_auc_rejects_empty_groups():
    with pytest.raises(ValueError):
        metrics.roc_auc([], [1.0])


def test_attack_success_rate_excludes_target_class_inputs():
    predictions = torch.tensor([0, 0, 1, 0, 2])
    labels = torch.tensor([0, 1, 1, 2, 0])  # rows 0 and 4 are target-class inputs: excluded
    # remaining rows 1, 2, 3: predicted 0, 1, 0 -> 2 of 3 hit the target
    assert metrics.attack_success_rate(predictions, labels, target=0) == pytest.approx(2 / 3)


def test_attack_success_rate_needs_non_target_inputs():
    with pytest.raises(ValueError):
        metrics.attack_success_rate(torch.tensor([0]), torch.tensor([0]), target=0)


def test_exposure_rank_one_and_last():
    # the secret is the most likely of 8 -> log2(8) - log2(1) = 3 bits
    assert metrics.exposure(5.0, [1, 2, 3, 4, 0, -1, -2]) == pytest.approx(3.0)
    # the least likely of 8 -> rank 8 -> 0 bits
    assert metrics.exposure(-9.0, [1, 2, 3, 4, 0, -1, -2]) == pytest.approx(0.0)


def test_min_k_takes_lowest_fraction():
    logprobs = torch.tensor([[-0.1, -3.0, -0.2, -1.0, 0.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    # 4 valid tokens, k = 0.5 -> the 2 lowest: -3.0 and -1.0
    assert float(metrics.min_k_scores(logprobs, mask, k=0.5)[0]) == pytest.approx(-2.0)


def test_zlib_score_divides_by_compressed_length():
    text = "abcabcabc"
    score = metrics.zlib_scores(torch.tensor([2.0]), [text])
    assert float(score[0]) == pytest.approx(-2.0 / metrics.zlib_length(text))
    assert metrics.zlib_length("a" * 200) < metrics.zlib_length(bytes(range(200)).hex())


def test_accuracy():
    assert metrics.accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])) == pytest.approx(2 / 3)
    assert math.isnan(metrics.accuracy(torch.tensor([]), torch.tensor([])))


def test_ngram_overlap_counts_reference_ngrams_found():
    # reference bigrams (1,2) (2,3) (3,9) (9,5); generated has (1,2) (2,3) of them -> 2/4
    assert metrics.ngram_overlap([1, 2, 3, 4, 5], [1, 2, 3, 9, 5], n=2) == pytest.approx(0.5)
    assert metrics.ngram_overlap([7, 7, 7], [1, 2, 3], n=2) == 0.0
    with pytest.raises(ValueError, match="no 4-gram"):
        metrics.ngram_overlap([1, 2], [1, 2, 3], n=4)


def test_extraction_likelihood_averages_over_prefixes():
    # two prefixes of one target: the first continuation is exact (1.0), the second shares nothing
    assert metrics.extraction_likelihood([[1, 2, 3], [9, 9]], [[1, 2, 3], [2, 3]], n=2) == pytest.approx(0.5)


def test_rouge_l_recall_is_lcs_over_reference_length():
    # LCS of "abcde" and "axcye" is "ace": 3 of the reference's 5 tokens
    assert metrics.rouge_l_recall("abcde", "axcye") == pytest.approx(3 / 5)
    assert metrics.rouge_l_recall("", "ab") == 0.0
    assert metrics.rouge_l_recall("xxab", "ab") == 1.0


def test_truth_ratio_uses_the_geometric_mean_of_perturbed_answers():
    # true answer 0.5 per token; perturbed 0.25 and 0.0625 -> geometric mean 0.125 -> R = 0.25
    value = metrics.truth_ratio(math.log(0.5), [math.log(0.25), math.log(0.0625)])
    assert value == pytest.approx(0.25)
    # the arithmetic mean would give (0.25 + 0.0625) / 2 / 0.5 = 0.3125: not what is computed
    assert value != pytest.approx(0.3125)


def test_forget_quality_is_the_ks_p_value():
    same = np.linspace(0, 1, 40)
    assert metrics.forget_quality(same, same) == pytest.approx(1.0)
    assert metrics.forget_quality(same, same + 5) < 1e-6


def test_privleak_sign_and_scale():
    assert metrics.privleak(0.6, 0.5) == pytest.approx(20.0)  # still looks like members
    assert metrics.privleak(0.4, 0.5) == pytest.approx(-20.0)  # less than retraining: over-unlearning


def test_harmonic_mean_is_zero_when_a_part_is_zero():
    assert metrics.harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    assert metrics.harmonic_mean([1.0, 0.0]) == 0.0


def test_exposure_over_all_ten_thousand_codes():
    scores = np.linspace(-20, -1, 10_000)
    # the true code is the most likely of 10^4 -> log2(10^4) = 13.29 bits; the median one -> 1 bit
    assert metrics.exposure(0.0, scores[1:]) == pytest.approx(math.log2(10_000))
    assert metrics.exposure(float(scores[5_000]), np.delete(scores, 5_000)) == pytest.approx(1.0, abs=1e-3)
