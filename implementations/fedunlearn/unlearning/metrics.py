r"""Metric primitives: AUC, attack success rate, membership-inference scores, canary exposure.

Every function is pure (tensors or arrays in, numbers out) so each can be checked against a
hand-computed case. Conventions: a membership score is *higher for likely members*.

- AUC: probability that a random member scores above a random non-member (ties count one half),
  the Mann-Whitney form of the ROC area.
- Attack success rate (ASR): share of triggered inputs whose **true class is not the target**
  that the model assigns to the target.
- LOSS score $-\ell(x)$ (Yeom et al. 2018); zlib score $-\ell(x)/\text{zlib}(x)$, the loss
  relative to the text's compressed length (Carlini et al. 2021); Min-K% prob: the mean of the
  $k\%$ lowest token log-probabilities (Shi et al., ICLR 2024, key ``shi2024detecting``).
- Exposure of a canary (Carlini et al. 2019): $\log_2 |C| - \log_2 \operatorname{rank}$, the rank of
  the true secret among $|C|$ candidates ordered by model likelihood (rank 1 = most likely).
- Extraction likelihood $\mathrm{EL}_n$ and memorisation accuracy (Jang et al., ACL 2023), ROUGE-L
  recall, the TOFU truth ratio and forget quality (Maini et al. 2024), MUSE's PrivLeak (Shi et al.
  2024); the Evaluating page gives every formula.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from scipy.stats import ks_2samp


def roc_auc(member_scores, nonmember_scores) -> float:
    """ROC AUC of separating members from non-members by score (ties count 1/2).

    Raises:
        ValueError: If either group is empty.
    """
    members = np.asarray(member_scores, dtype=float)
    others = np.asarray(nonmember_scores, dtype=float)
    if members.size == 0 or others.size == 0:
        raise ValueError("AUC needs at least one member and one non-member")
    greater = (members[:, None] > others[None, :]).sum()
    ties = (members[:, None] == others[None, :]).sum()
    return float((greater + 0.5 * ties) / (members.size * others.size))


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of correct predictions."""
    return float((predictions == labels).float().mean()) if len(labels) else float("nan")


def attack_success_rate(predictions_on_triggered: torch.Tensor, true_labels: torch.Tensor, target: int) -> float:
    """Share of triggered inputs of non-target classes predicted as ``target``."""
    keep = true_labels != target
    if not bool(keep.any()):
        raise ValueError("no triggered input of a non-target class")
    return float((predictions_on_triggered[keep] == target).float().mean())


def zlib_length(text: str) -> int:
    """Bytes of the zlib-compressed UTF-8 text."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_scores(mean_nll: torch.Tensor, texts: list[str]) -> torch.Tensor:
    r"""zlib membership score: $-\ell(x) / \text{zlib}(x)$."""
    lengths = torch.tensor([zlib_length(t) for t in texts], dtype=torch.float32)
    return -mean_nll / lengths


def min_k_scores(token_logprobs: torch.Tensor, mask: torch.Tensor, k: float = 0.4) -> torch.Tensor:
    """Min-K% prob: mean of the ``k`` fraction lowest token log-probs of each sequence."""
    scores = []
    for row, row_mask in zip(token_logprobs, mask):
        values = row[row_mask]
        count = max(1, math.ceil(k * len(values)))
        scores.append(torch.sort(values).values[:count].mean())
    return torch.stack(scores)


def exposure(true_score: float, candidate_scores) -> float:
    r"""Canary exposure: $\log_2(|C|) - \log_2(\text{rank})$, $C$ = candidates plus the secret.

    Args:
        true_score: Model score (e.g. log-likelihood) of the true secret.
        candidate_scores: Scores of the other candidate secrets.
    """
    candidates = np.asarray(candidate_scores, dtype=float)
    rank = 1 + int((candidates > true_score).sum()) + 0.5 * int((candidates == true_score).sum())
    return float(math.log2(candidates.size + 1) - math.log2(rank))


def ngrams(tokens, n: int) -> list[tuple]:
    """The ``n``-grams of a token sequence, in order (with repeats)."""
    tokens = list(tokens)
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def ngram_overlap(generated, reference, n: int) -> float:
    r"""Share of the reference's $n$-grams that the generated sequence also contains:
    $|\{g \in \text{ng}_n(a) : g \in \text{ng}_n(b)\}| / |\text{ng}_n(b)|$ (Jang et al.'s OVERLAP).

    Raises:
        ValueError: If the reference is shorter than ``n``.
    """
    ref = ngrams(reference, n)
    if not ref:
        raise ValueError(f"reference of {len(list(reference))} tokens has no {n}-gram")
    present = set(ref)
    return sum(g in present for g in ngrams(generated, n)) / len(ref)


def extraction_likelihood(continuations, rests, n: int) -> float:
    r"""$\mathrm{EL}_n = \frac{1}{|P|}\sum_{t \in P} \mathrm{OVERLAP}_n(f(x_{<t}), x_{\ge t})$ over the
    prefix positions $P$ of one target: ``continuations[j]`` is the greedy continuation after the
    ``j``-th prefix, ``rests[j]`` the true rest of the target after it."""
    values = [ngram_overlap(c, r, n) for c, r in zip(continuations, rests, strict=True)]
    return sum(values) / len(values)


def rouge_l_recall(generated, reference) -> float:
    """Longest common subsequence of the two sequences over the reference's length."""
    generated, reference = list(generated), list(reference)
    if not reference:
        raise ValueError("empty reference")
    previous = [0] * (len(generated) + 1)
    for r in reference:
        current = [0]
        for j, g in enumerate(generated):
            current.append(previous[j] + 1 if r == g else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1] / len(reference)


def truth_ratio(true_logprob: float, perturbed_logprobs) -> float:
    r"""TOFU truth ratio $R = \bar P_\text{pert} / \bar P_\text{true}$ from length-normalised
    log-probabilities $\log \bar P(a \mid q) = \frac{1}{|a|}\sum_t \log p(a_t \mid q, a_{<t})$, the
    perturbed answers aggregated by their **geometric** mean (mean log-probability):
    $R = \exp\big(\frac{1}{m}\sum_j \log \bar P(\hat a_j \mid q) - \log \bar P(a \mid q)\big)$."""
    values = np.asarray(perturbed_logprobs, dtype=float)
    if values.size == 0:
        raise ValueError("truth ratio needs at least one perturbed answer")
    return float(math.exp(values.mean() - true_logprob))


def forget_quality(unlearned, retrained) -> float:
    """TOFU forget quality: the p-value of the two-sample Kolmogorov-Smirnov test between two
    samples (per-question truth ratios, or per-example losses) of the unlearned and the retrained
    model on the same forget data; high = indistinguishable."""
    return float(ks_2samp(np.asarray(unlearned, dtype=float), np.asarray(retrained, dtype=float)).pvalue)


def privleak(auc_unlearned: float, auc_retrained: float) -> float:
    r"""MUSE's PrivLeak in percent, $100\,(\mathrm{AUC}_u - \mathrm{AUC}_r)/\mathrm{AUC}_r$. With this
    module's convention (member scores higher) a positive value means the forgotten records still
    look more like members than under retraining; negative, less (over-unlearning)."""
    return 100.0 * (auc_unlearned - auc_retrained) / auc_retrained


def harmonic_mean(values) -> float:
    """Harmonic mean (0 when any value is 0)."""
    values = np.asarray(values, dtype=float)
    if (values <= 0).any():
        return 0.0
    return float(len(values) / (1.0 / values).sum())
