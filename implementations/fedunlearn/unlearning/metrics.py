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
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch


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


def min_k_scores(token_logprobs: torch.Tensor, mask: torch.Tensor, k: float = 0.2) -> torch.Tensor:
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
