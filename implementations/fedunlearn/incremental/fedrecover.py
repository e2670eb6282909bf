r"""FedRecover: recover from poisoning with estimated client updates (key ``cao2023fedrecover``).

Cao, Jia, Zhang and Gong (IEEE S&P 2023) recover a federated model after malicious clients are
detected. Like train-from-scratch, the server removes them, restarts from the initial model and
runs the rounds again with the remaining clients; unlike it, the server mostly *estimates* what
each client would send instead of asking it to train. During the original training it stored the
global model $\bar w_t$ and each client's update $\bar g^i_t$ of every round. At the recovered
model $\hat w_t$ the update of client $i$ is, by the integral form of the mean value theorem,

$$ g^i_t = \bar g^i_t + \mathbf H^i_t (\hat w_t - \bar w_t), \qquad
   \mathbf H^i_t = \int_0^1 \mathbf H\big(\bar w_t + z(\hat w_t - \bar w_t)\big)\,dz , $$

and FedRecover replaces the integrated Hessian-vector product by an L-BFGS approximation built
from a buffer of $s$ pairs
$(\Delta w_b, \Delta g^i_b) = (\hat w_b - \bar w_b,\; g^i_b - \bar g^i_b)$ of rounds $b$ in which
client $i$ computed its exact update. We use the compact representation of Byrd, Nocedal and
Schnabel (1994): with $S = [\Delta w_b]$, $Y = [\Delta g_b]$, $B_0 = \sigma I$,
$\sigma = y^\top s / s^\top s$ of the newest pair, $L$ the strictly lower triangle of $S^\top Y$
and $D$ its diagonal,

$$ \tilde{\mathbf H} v = \sigma v - \begin{bmatrix} \sigma S & Y \end{bmatrix}
   \begin{bmatrix} \sigma S^\top S & L \\ L^\top & -D \end{bmatrix}^{-1}
   \begin{bmatrix} \sigma S^\top v \\ Y^\top v \end{bmatrix}. $$

Four strategies ask clients for exact updates (which also refresh their buffers): *warm-up*
(the first $T_w$ rounds), *periodic correction* (every $T_c$-th round after warm-up),
*abnormality fixing* (an estimated update with a coordinate above $\tau$ in absolute value;
$\tau = \max_t \tau_t$ where at most a fraction $\alpha$ of the stored update coordinates of
round $t$ exceed $\tau_t$) and *final tuning* (the last $T_f$ rounds). Client cost is the number
of exact updates.

Implemented: all of the above, exact updates asked of the clients through the client pool (all
exact clients of a round in one request) and aggregation with the federation's rule (FedAvg,
median or trimmed mean, as in training); the ablation ``fedrecover-no-correction`` estimates
every round after warm-up (no correction, no abnormality fixing, no final tuning), and
``buffer_size=0`` replays the stored update $\bar g^i_t$ instead of correcting it (no L-BFGS).

Conventions and deviations: updates here are model deltas $\Delta = w_{\text{local}} - w$ of
several local SGD steps, so the gradient-like quantity is $g = -\Delta / \eta$ (the mean step
direction times the number of steps). Its Jacobian in $w$ is symmetric positive semi-definite
only in the idealised case of a fixed convex quadratic loss, full-batch steps without momentum and
$\eta \lambda_{\max} \le 2$ (then it is $(I - (I - \eta \mathbf A)^K)/\eta$); mini-batches,
momentum and a non-convex network break this, so BFGS's positive curvature is not guaranteed:
pairs failing the curvature test $s^\top y > \epsilon \lVert s\rVert^2$ are skipped, and a
client without a pair replays $\bar g^i_t$. Each client keeps its own aligned pairs (the paper
updates the model-difference buffer only in rounds where *all* clients were exact). The history
must keep every round (``record_every=1``).

Defaults and where they come from: $T_f = 5$ is the paper's example ("only a small number of
rounds (e.g., $T_f = 5$)", Sec. IV-C) and $T_w > s$ its only constraint on warm-up; the values
of $s$, $T_w$, $T_c$ and $\alpha$ in its experiments were not retrieved, and no code by the
authors was found. Ours: $s = 2$, $T_w = 3$, $T_c = 15$ (for runs of tens of rounds) and
$\alpha = 10^{-4}$, about four of the $\approx 4 \cdot 10^4$ stored coordinates of a round of the
digits federation above $\tau_t$, fixed before the runs of issue 10 (the variant the case study
showed before). $\alpha = 0$ makes $\tau$ the largest coordinate any retained client ever sent,
so abnormality fixing almost never fires.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from fedunlearn.catalog import Entry, ReportedClaim
from fedunlearn.federated.aggregation import aggregate
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.requests import ForgetRequest
from fedunlearn.federated.task import State, clone_state
from fedunlearn.federated.training import LocalPlan
from fedunlearn.unlearning.base import TrainedFederation, UnlearningMethod, register_method

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class FedRecoverConfig:
    r"""FedRecover's knobs (a larger $T_w$ or $T_f$, smaller $T_c$ or $\alpha$: closer, costlier).

    Attributes:
        warmup_rounds: $T_w$, first rounds with exact client updates (paper: $T_w > s$).
        correction_period: $T_c$; every $T_c$-th round after warm-up is exact (0 = never).
        final_rounds: $T_f$, last rounds with exact updates (the paper's example: 5).
        buffer_size: $s$, L-BFGS pairs kept per client (0: no pairs, estimates replay the stored
            update).
        tolerance_rate: $\alpha$ of abnormality fixing; 0 makes $\tau$ the largest coordinate of
            any stored update of a retained client; ``None`` disables it ($\tau = \infty$).
        curvature_eps: A pair is used only if $s^\top y > \epsilon \lVert s \rVert^2$.
    """

    warmup_rounds: int = 3
    correction_period: int = 15
    final_rounds: int = 5
    buffer_size: int = 2
    tolerance_rate: float | None = 1e-4
    curvature_eps: float = 1e-8


#: Criteria of the case study, stated once (the notebook's verdicts and the claim tests use them).
#: The scenario of the headline: the paper's example aggregates with Trimmed-mean.
RECOVERY_SCENARIO = "digits-poisoned-trimmed"
#: The same federation under FedAvg (the second regime the page reports).
FEDAVG_SCENARIO = "digits-poisoned"
#: The metrics a recovery is judged on: the paper's test error and attack success rate, and the
#: trigger-logit margin, which separates a backdoor that is gone from one merely below the
#: decision threshold (ASR alone does not).
RECOVERY_METRICS = ("test_acc", "asr", "trigger_margin")
#: "As accurate as train-from-scratch" is judged with the comparison engine's retrain band on each
#: of ``RECOVERY_METRICS`` (median gap over seeds). The paper's recovered and retrained models share
#: their test error to two digits; on our 225 test digits one point is about two examples, below
#: the spread between two retrained models, so no tighter accuracy criterion is set.
#: "Corrections are needed": without them the worst gap to $\theta_r$ (test accuracy or ASR) is
#: at least this much larger.
ABLATION_MARGIN = 0.05
#: Sanity check: $\theta_o$ carries the backdoor (the paper's poisoned model: ASR 1.00).
POISONED_ASR = 0.8


def flatten(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The floating tensors of ``state`` as one float64 vector (key order)."""
    return torch.cat([v.reshape(-1).double() for v in state.values() if torch.is_floating_point(v)])


def unflatten(vector: torch.Tensor, like: Mapping[str, torch.Tensor]) -> State:
    """Inverse of [`flatten`][fedunlearn.incremental.fedrecover.flatten] (non-float keys copied)."""
    out, offset = {}, 0
    for key, ref in like.items():
        if not torch.is_floating_point(ref):
            out[key] = ref.clone()
            continue
        out[key] = vector[offset : offset + ref.numel()].reshape(ref.shape).to(ref.dtype)
        offset += ref.numel()
    return out


def lbfgs_hvp(pairs: list[Pair], v: torch.Tensor) -> torch.Tensor:
    r"""Compact L-BFGS Hessian-vector product $\tilde{\mathbf H} v$ from pairs $(s_b, y_b)$.

    Pairs are ordered oldest first.
    With one pair $(s, y)$ and $v = s$ this returns $y$ (the secant equation holds).
    """
    S, Y = torch.stack([p[0] for p in pairs], 1), torch.stack([p[1] for p in pairs], 1)
    s_new, y_new = pairs[-1]
    sigma = (y_new @ s_new) / (s_new @ s_new)
    StY = S.T @ Y
    lower, diag = torch.tril(StY, diagonal=-1), torch.diag(torch.diag(StY))
    middle = torch.cat([torch.cat([sigma * S.T @ S, lower], 1), torch.cat([lower.T, -diag], 1)], 0)
    rhs = torch.cat([sigma * S.T @ v, Y.T @ v])
    return sigma * v - torch.cat([sigma * S, Y], 1) @ torch.linalg.pinv(middle) @ rhs


def abnormality_threshold(stored_updates: list[list[torch.Tensor]], alpha: float) -> float:
    r"""$\tau = \max_t \tau_t$, $\tau_t$ the $(1-\alpha)$-quantile of round $t$'s updates.

    Args:
        stored_updates: Per round, the flattened stored updates of the retained clients.
        alpha: Tolerance rate $\alpha \in [0, 1)$ (0: the largest stored coordinate).
    """
    per_round = [torch.quantile(torch.cat(r).abs().float(), 1.0 - alpha)
                 for r in stored_updates if r]
    return float(max(per_round))


def scheduled_rounds(rounds: int, config: FedRecoverConfig) -> int:
    r"""Rounds in which every client is asked by the schedule alone (no abnormality fixing):
    $T_w + T_f + \lfloor (T - T_w - T_f)/T_c \rfloor$ for $T > T_w + T_f$ (the paper's cost)."""
    return sum(exact_round(t, rounds, config) for t in range(rounds))


def exact_round(t: int, rounds: int, config: FedRecoverConfig) -> bool:
    """Whether round ``t`` of ``rounds`` asks every client (warm-up, correction or final tuning)."""
    if t < config.warmup_rounds or t >= rounds - config.final_rounds:
        return True
    period = config.correction_period
    return period > 0 and (t - config.warmup_rounds + 1) % period == 0


def add_pair(buffer: list[Pair], pair: Pair, size: int, eps: float) -> None:
    """Append ``pair`` if it passes the curvature test; keep the newest ``size`` (0: keep none)."""
    s, y = pair
    if size > 0 and s @ y > eps * (s @ s) and s @ s > 0:
        buffer.append(pair)
        del buffer[:-size]


@register_method
class FedRecover(UnlearningMethod):
    """Recovery from the initial model with L-BFGS-estimated client updates (client removal)."""

    name = "fedrecover"
    workers = frozenset({"server", "remaining"})
    granularities = frozenset({"client"})
    Config = FedRecoverConfig

    def history_interval(self) -> int:
        """Every round's global model and updates are replayed."""
        return 1

    def unlearn(self, run: TrainedFederation, request: ForgetRequest,
                counter: CostCounter) -> State:
        """Re-run every round without the removed clients, estimating most client updates."""
        history, cfg, lr = run.history, self.config, run.config.lr
        history.require(record_every=1)
        removed = set(request.clients)
        plan = LocalPlan("retained", request)
        rounds = len(history.rounds)
        stored = [[flatten(r.client_updates[c]) for c in r.participants if c not in removed] for r in history.rounds]
        alpha = cfg.tolerance_rate
        tau = float("inf") if alpha is None else abnormality_threshold(stored, alpha)
        buffers: dict[int, list[Pair]] = {}
        state = clone_state(history.init_state)
        for t, record in enumerate(history.rounds):
            clients = [c for c in record.participants if c not in removed]
            if not clients:
                continue
            w_bar, w_hat = flatten(record.global_state), flatten(state)
            g_bar = {cid: -flatten(record.client_updates[cid]) / lr for cid in clients}  # g = -Δ/η
            updates, exact = {}, clients
            if not exact_round(t, rounds, cfg):
                exact = []
                for cid in clients:
                    buffer = buffers.get(cid, [])
                    # ĝ = ḡ + H̃ (ŵ_t − w̄_t)  (Cauchy mean value theorem + L-BFGS)
                    g_hat = g_bar[cid] + lbfgs_hvp(buffer, w_hat - w_bar) if buffer else g_bar[cid]
                    counter.server_steps += 1
                    if g_hat.mul(lr).abs().max() <= tau:
                        updates[cid] = unflatten(-lr * g_hat, state)
                    else:
                        exact.append(cid)  # abnormality fixing
            if exact:  # warm-up, correction, final tuning or abnormality fixing: ask the clients
                fresh, _ = run.pool.train(state, exact, t, run.config, plan, counter)
                for cid in exact:
                    add_pair(buffers.setdefault(cid, []), (w_hat - w_bar, -flatten(fresh[cid]) / lr - g_bar[cid]),
                             cfg.buffer_size, cfg.curvature_eps)
                    updates[cid] = fresh[cid]
            counts = {c: record.sample_counts[c] for c in clients}
            state = aggregate(run.config.aggregation, state, {c: updates[c] for c in clients}, counts,
                              run.config.trim_fraction)
        return state


@register_method
class FedRecoverNoCorrection(FedRecover):
    """Ablation: exact updates in warm-up only, then estimates to the end."""

    name = "fedrecover-no-correction"
    workers = frozenset({"server"})

    def __init__(self, config: FedRecoverConfig | None = None) -> None:
        super().__init__(config)
        self.config = replace(self.config, correction_period=0, final_rounds=0, tolerance_rate=None)


ENTRY = Entry(
    slug="fedrecover",
    family="incremental",
    title="FedRecover: recovery from poisoning with estimated client updates",
    citation_keys=("cao2023fedrecover",),
    summary="After removing malicious clients, re-run training from the start while the server "
    "estimates most client updates from the stored history with L-BFGS.",
    claims=(
        ReportedClaim(
            claim="Recovered model as accurate as train-from-scratch (test error, backdoor ASR)",
            reported="e.g. MNIST, Trimmed-mean, backdoor with 40 malicious clients: both recover "
            "0.07 test error and 0.01 ASR (poisoned: 1.00 ASR)",
            where="Sec. I (Introduction); Sec. V",
        ),
        ReportedClaim(
            claim="Clients' computation/communication saved relative to train-from-scratch",
            reported="88% on average (same MNIST example)",
            where="Sec. I (Introduction)",
        ),
        ReportedClaim(
            claim="Warm-up, periodic correction, abnormality fixing and final tuning are needed "
            "for an accurate recovered model",
            reported="qualitative",
            where="Sec. IV-C; Sec. V",
        ),
    ),
)
