r"""Knowledge unlearning by gradient ascent, federated (Jang et al., ACL 2023; ``jang2023knowledge``).

Jang, Yoon, Yang, Cha, Lee, Logeswaran and Seo make a language model forget target sequences
$x = (x_1, \dots, x_T)$ by *maximising* their negative log-likelihood,

$$ \mathcal L_{\mathrm{UL}}(\theta; x) = -\sum_{t=1}^{T} \log p_\theta(x_t \mid x_{<t}), \qquad
   \theta \leftarrow \theta + \eta\, \mathrm{Adam}\big(\nabla_\theta \textstyle\sum_{x \in D_f}
   \mathcal L_{\mathrm{UL}}\big)\ \text{(ascent)}, $$

one update per epoch (the effective batch is the whole forget set), until the forget set's
extraction likelihood $\mathrm{EL}_n$ and memorisation accuracy MA both fall to their means on data
the model never saw (the paper's forgetting threshold):

$$ \mathrm{MA}(x) = \frac{1}{|a|}\sum_{t \in a} \mathbb 1\big[\arg\max p_\theta(\cdot \mid x_{<t}) = x_t\big],
\qquad \mathrm{EL}_n(x) = \frac{1}{|P|}\sum_{t \in P} \mathrm{OVERLAP}_n\big(f_\theta(x_{<t}), x_{\ge t}\big), $$

with $f_\theta$ greedy decoding and $a$, $P$ the answer positions (see the Evaluating page). A large
forget set is forgotten in sequential chunks, each to the threshold.

Federated here: every client holding forgotten records ascends on them from the global adapter
(the ``ascent`` objective, one full-batch Adam step per epoch, through the client seam); after each
epoch the server asks those clients for the EL/MA sums of their forgotten records (the registered
measure ``knowledge-el-ma``) and stops at the threshold; then ``repair_rounds`` FedAvg rounds on
the retained data (the forgotten data sits out). The thresholds are Config values, as in the
authors' configs (``el_threshold``, ``ma_threshold``); ours are the model's means on people nobody
trained on (``scenario.validation_records``, see
[`unseen_thresholds`][fedunlearn.perturbation.knowledge_unlearning.unseen_thresholds]).

Not implemented: Adam's moments carried across epochs (each epoch is one call of the client seam,
so Adam restarts: every step is Adam's first, $\eta\,g/(|g| + \epsilon)$ per coordinate); the
paper's 200-token targets and $n = 10$ (our answers are short: $n = 4$ on answer tokens); the
paper's downstream benchmarks. The learning rate is ours (the paper's $5\cdot 10^{-5}$ moves a
tiny LoRA adapter too little; see the entry page for how ours was chosen).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from fedunlearn.catalog import Entry, ReportedClaim
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.measures import register_measure
from fedunlearn.federated.objectives import GradientAscent
from fedunlearn.federated.requests import ForgetRequest, ForgetRequestError
from fedunlearn.federated.task import State, Task
from fedunlearn.federated.training import OPTIMIZERS, LocalPlan
from fedunlearn.models.decoding import teacher_forced
from fedunlearn.perturbation.forgetting import forget_locally, forgetting_clients, repair_rounds
from fedunlearn.unlearning.base import TrainedFederation, UnlearningMethod, register_method
from fedunlearn.unlearning.evaluate import el_ma

Batch = dict[str, torch.Tensor]
MEASURE = "knowledge-el-ma"

#: Pass criteria (issue 11), used by the notebook and the tests. Retained people's answer
#: probability after unlearning at least this fraction of θ_o's.
RETAIN_FRACTION = 0.9
#: Continuing ascent past the threshold "collapses" utility when the retained people's answer
#: probability falls below this fraction of θ_o's (the NPO entry's collapse line).
COLLAPSE_FRACTION = 0.5
#: Seeds of the batch-versus-sequential ordering claim (median over them), and how many of the
#: forgotten client's people form its forget set (forgotten at once, or one person per chunk).
ORDERING_SEEDS = (0, 1, 2)
ORDERING_PEOPLE = 3
#: The learning-rate grid of the validation choice (the paper's 5e-5 first) and the rule: the
#: smallest rate whose ascent reaches the validation threshold within ``max_epochs``.
LR_GRID = (5e-5, 2e-4, 5e-4, 1e-3, 2e-3)


@dataclass(frozen=True)
class KnowledgeUnlearningConfig:
    r"""Hyperparameters (paper and released code, or ours where the page says so).

    Attributes:
        lr: Adam learning rate $\eta$ of the ascent (paper: $5\cdot 10^{-5}$ on GPT-Neo; ours for
            the tiny LoRA model, chosen on the validation people).
        max_epochs: Most ascent epochs per chunk (the paper's 20); one update per epoch.
        el_threshold: Stop when the forgotten records' mean $\mathrm{EL}_4$ is at or below this ...
        ma_threshold: ... and their mean MA at or below this (the model's means on people nobody
            trained on; see ``unseen_thresholds``).
        stop_at_threshold: ``False`` ascends all ``max_epochs`` epochs (the collapse ablation).
        chunks: Forget a records request in this many sequential chunks of its record ids, each to
            the threshold (1 = all at once). A client request is one chunk.
        repair_rounds: FedAvg rounds on the retained data after the ascent.
        optimizer: Local optimiser of the ascent (a registered name; the paper's is Adam).
    """

    lr: float = 5e-4
    max_epochs: int = 20
    el_threshold: float = 0.066
    ma_threshold: float = 0.427
    stop_at_threshold: bool = True
    chunks: int = 1
    repair_rounds: int = 1
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        checks = {"lr": self.lr > 0, "max_epochs": self.max_epochs >= 1,
                  "el_threshold": 0 <= self.el_threshold <= 1, "ma_threshold": 0 <= self.ma_threshold <= 1,
                  "chunks": self.chunks >= 1, "repair_rounds": self.repair_rounds >= 0}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"knowledge-ga: invalid {name}={getattr(self, name)!r}")
        if self.optimizer not in OPTIMIZERS.names():
            raise ValueError(f"knowledge-ga: invalid optimizer={self.optimizer!r}; known: {OPTIMIZERS.names()}")


@register_measure(MEASURE)
def el_ma_sums(task: Task, model: nn.Module, state: State, batch: Batch) -> dict[str, torch.Tensor]:
    r"""The client measure: $\sum \mathrm{EL}_4$ and $\sum \mathrm{MA}$ over the batch's records."""
    el, ma = el_ma(model, batch)
    return {"el": el.float().sum(), "ma": ma.sum()}


def unseen_thresholds(task: Task, model: nn.Module, state: Mapping[str, torch.Tensor], records) -> tuple[float, float]:
    r"""Jang's forgetting threshold: mean $\mathrm{EL}_4$ and MA of ``state`` on ``records`` of
    people nobody trained on (e.g. ``scenario.validation_records``), computed where they are held."""
    task.set_state(model, state)
    el, ma = el_ma(model, task.encode(list(records)))
    return float(el.float().mean()), float(ma.mean())


@torch.no_grad()
def answer_probability(task: Task, model: nn.Module, state: Mapping[str, torch.Tensor], tensors: Batch) -> float:
    r"""Mean length-normalised answer probability $\exp(\frac{1}{|a|}\sum_t \log p(a_t \mid q, a_{<t}))$
    of encoded records (the evaluation's ``*_answer_prob``), for utility curves."""
    task.set_state(model, state)
    logprobs, _, mask = teacher_forced(model, tensors)
    return float((logprobs.sum(-1) / mask.sum(-1).clamp(min=1)).exp().mean())


def validation_thresholds(scenario, run: TrainedFederation, digits: int = 3) -> tuple[float, float]:
    r"""``unseen_thresholds`` of $\theta_o$ on the scenario's validation people, rounded as a config value."""
    el, ma = unseen_thresholds(scenario.task, run.model, run.final_state, scenario.validation_records)
    return round(el, digits), round(ma, digits)


def forgotten_el_ma(run: TrainedFederation, state: State, request: ForgetRequest, counter: CostCounter
                    ) -> tuple[float, float]:
    """Mean EL and MA of ``state`` on the request's forgotten records, asked of their clients."""
    replies = run.pool.measure(state, forgetting_clients(run, request), LocalPlan("forgotten", request), MEASURE,
                               counter)
    count = sum(n for _, n in replies.values())
    return (sum(float(s["el"]) for s, _ in replies.values()) / count,
            sum(float(s["ma"]) for s, _ in replies.values()) / count)


def chunk_requests(request: ForgetRequest, chunks: int) -> list[ForgetRequest]:
    """The request split into ``chunks`` sequential parts of its record ids (in id order).

    Raises:
        ForgetRequestError: If ``chunks > 1`` and the request does not name records, or names
            fewer records than chunks (a chunk would be empty).
    """
    if chunks == 1:
        return [request]
    if request.kind != "records":
        raise ForgetRequestError(f"chunks={chunks} needs a records request, got the {request.describe()}")
    ids = request.record_ids
    if len(ids) < chunks:
        raise ForgetRequestError(f"chunks={chunks} exceeds the {request.describe()}: a chunk would be empty")
    bounds = [round(i * len(ids) / chunks) for i in range(chunks + 1)]
    return [ForgetRequest.forget_records(ids[a:b]) for a, b in zip(bounds, bounds[1:])]


def ascend(run: TrainedFederation, state: State, request: ForgetRequest, config: KnowledgeUnlearningConfig,
           counter: CostCounter, on_epoch: Callable[[int, State, float, float], None] | None = None
           ) -> tuple[State, int]:
    r"""Gradient ascent on one chunk until its EL and MA reach the thresholds (or ``max_epochs``).

    Each epoch: the forgetting clients take one Adam step on all their forgotten records (batch =
    the forget set), the server averages, then asks them for EL/MA. ``on_epoch(epoch, state, el,
    ma)`` sees every epoch (epoch 0: the start).

    Returns:
        The state and the number of ascent epochs taken.
    """
    counts = run.pool.sample_counts(LocalPlan("forgotten", request))
    whole = replace(run, config=replace(run.config, batch_size=max(counts.values())))
    plan = LocalPlan("forgotten", request, objective=GradientAscent(), local_steps=1, optimizer=config.optimizer,
                     lr=config.lr)
    epoch = 0
    while True:
        el, ma = forgotten_el_ma(run, state, request, counter)
        if on_epoch is not None:
            on_epoch(epoch, state, el, ma)
        reached = el <= config.el_threshold and ma <= config.ma_threshold
        if epoch == config.max_epochs or (reached and config.stop_at_threshold):
            return state, epoch
        state = forget_locally(whole, state, request, plan, counter, run.config.rounds + epoch)
        epoch += 1


@register_method
class KnowledgeUnlearning(UnlearningMethod):
    """The owning clients ascend on their forgotten records to the unseen-data threshold, chunk
    by chunk; then repair rounds without the forgotten data."""

    name = "knowledge-ga"
    workers = frozenset({"target", "remaining"})
    granularities = frozenset({"client", "records"})
    scenario_kinds = frozenset({"language"})
    Config = KnowledgeUnlearningConfig

    def unlearn(self, run: TrainedFederation, request: ForgetRequest, counter: CostCounter) -> State:
        """Ascent chunk by chunk, then ``repair_rounds`` rounds on the retained data.

        Raises:
            ForgetRequestError: If no client holds data of the request (or of one of its chunks).
        """
        forgetting_clients(run, request)
        state = dict(run.final_state)
        for chunk in chunk_requests(request, self.config.chunks):
            state, _ = ascend(run, state, chunk, self.config, counter)
        return repair_rounds(run, state, request, self.config.repair_rounds, counter)


ENTRY = Entry(
    slug="knowledge-unlearning",
    family="perturbation",
    title="Knowledge unlearning by gradient ascent",
    citation_keys=("jang2023knowledge",),
    summary="The client that owns the sequences ascends their loss on the global adapter until extraction "
    "likelihood and memorisation accuracy fall to their level on unseen people; then repair rounds.",
    claims=(
        ReportedClaim(
            claim="Gradient ascent until EL and MA reach the unseen-data threshold forgets the targets "
            "at a utility cost that shrinks with model size",
            reported="thresholds for GPT-Neo 125M: EL₁₀ 4.99 %, MA 29.94 % (authors' config); 125M after "
            "unlearning 32 sequences: classification average 43.4 → 39.9, dialogue F1 9.4 → 2.6 (2.7B: "
            "52.3 → 51.9, 11.5 → 11.1; third-party transcription)",
            where="Table 2; configs/example.json of joeljang/knowledge-unlearning",
        ),
        ReportedClaim(
            claim="Forgetting in sequential chunks costs less general performance than forgetting the "
            "same sequences at once",
            reported="figure only (128 sequences at once degrade every size; 4 sequential chunks of 32 "
            "almost none)",
            where="Section 5.1, Figure 3 per one third-party transcription (Figure 2b per another)",
        ),
        ReportedClaim(
            claim="Ascent that goes further (a larger learning rate) forgets faster and collapses utility",
            reported="figure only (learning-rate sweep on GPT-Neo 1.3B, 32 sequences)",
            where="Appendix C, Figure 9 (third-party transcription)",
        ),
    ),
)
