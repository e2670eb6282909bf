r"""The comparison engine: every method against the retrain oracle, one scenario, several seeds.

[`compare`][fedunlearn.unlearning.compare.compare] is the only place where methods are run side
by side; the ``fedunlearn bench`` command, every notebook, the tests and the site call it. For
each seed it builds the scenario, takes $\theta_o$ (per history interval the methods need;
recording does not change training) and the oracle $\theta_r$ from the
[federation cache][fedunlearn.unlearning.cache] (trained once per run), retrains a second oracle
with another sampling and data-order seed to measure the noise floor $\sigma_r$, runs each method,
evaluates every model with the one evaluation function and takes gaps to $\theta_r$ of the same
seed. Granularities are checked before anything trains.

A metric is *retrain-equivalent* when $|\text{median gap}| \le \max(\text{tol}, 2\sigma_r)$ with
the tolerance of [`TOLERANCES`][fedunlearn.unlearning.compare.TOLERANCES] (the one table), and *not
informative* in the scenario when $\theta_o$ itself is retrain-equivalent on it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from fedunlearn.federated.costs import state_bytes
from fedunlearn.federated.requests import split_clients
from fedunlearn.federated.task import State
from fedunlearn.unlearning import cache
from fedunlearn.unlearning.base import (
    UnlearningMethod,
    check_granularity,
    check_scenario,
    run_method,
)
from fedunlearn.unlearning.controls import Retrain
from fedunlearn.unlearning.evaluate import gaps_to_oracle, relative_to_oracle
from fedunlearn.unlearning.registry import MethodSettingError, get_method
from fedunlearn.unlearning.scenarios import SCENARIOS, build_scenario

#: Tolerance of retrain-equivalence per metric family (the Evaluating page; the log-prob and
#: exposure tolerances are ours). A metric takes the first family its name contains.
TOLERANCES: dict[str, float] = {"acc": 0.02, "asr": 0.02, "mia_auc": 0.02, "logprob": 0.05,
                                "canary_exposure": 0.5, "canary_extraction": 0.0, "forget_loss": 0.05,
                                "trigger_margin": 0.5, "forget_quality": 0.95, "privleak": 5.0, "_el": 0.02,
                                "_ma": 0.02, "truth": 0.05, "answer_prob": 0.02, "rouge": 0.05,
                                "model_utility": 0.02}

#: The language-model columns entry pages show (forgetting against θ_r, with each reference
#: beside its metric, then utility); the full set is in every Comparison.
LM_HEADLINE_METRICS = ("forget_quality", "privleak", "forget_el", "unseen_el", "canary_exposure",
                       "unseen_canary_exposure", "model_utility", "test_logprob")

#: What a † row means in every result table (a method judged against its own retraining).
OWN_ORACLE_NOTE = ("† trains its own kind of model: judged against that model retrained from scratch without the "
                   "forgotten data (same seed; band = the tolerance, no noise floor measured), and its ρ against "
                   "that retraining's cost.")

#: A backdoor scenario tests ASR claims only when θ_o's attack success rate lies at least this far
#: above θ_r's (the backdoor is there to remove).
BACKDOOR_MARGIN = 0.2

#: What each metric means (``fedunlearn bench --help`` and the result pages).
METRIC_HELP = {
    "test_acc / test_logprob": "utility on held-out data (accuracy; mean answer-token log-prob)",
    "retain_acc / retain_logprob": "utility on the data the federation keeps",
    "forget_acc / forget_logprob": "the same on the forgotten data: judged against retraining, not 0",
    "forget_loss": "mean loss on the forgotten data",
    "asr": "backdoor attack success rate on triggered test inputs of non-target classes",
    "trigger_margin": "mean margin of the backdoor's target logit over the best other class, triggered inputs",
    "forget_quality": "KS-test p-value, forget distribution of the model vs θ_r (truth ratios; digits: losses)",
    "mia_auc*": "membership-inference AUC, forgotten data vs unseen people (LOSS, zlib, Min-40%)",
    "privleak": "MUSE PrivLeak, 100·(AUC_u − AUC_r)/AUC_r with Min-40% prob; > 0: still looks like members",
    "canary_exposure / canary_extraction": "exposure of forgotten secrets over all 10^4 codes; exact greedy extraction",
    "unseen_canary_exposure": "the same for unseen people's canaries: the chance reference (about 1.4 bits)",
    "forget_el / forget_ma": "Jang et al.'s extraction likelihood EL_4 and memorisation accuracy on forgotten records",
    "unseen_el / unseen_ma": "the same on unseen people: the forgetting threshold",
    "forget_truth_ratio": "TOFU truth ratio on paraphrased forget questions, mean min(R, 1/R)",
    "model_utility": "TOFU-style harmonic mean of answer probability, ROUGE-L and truth score (retained, public people)",
    "rho_steps / rho_time / rho_comm": "client steps / wall time / bytes of the method over retraining's",
}


def tolerance(metric: str) -> float:
    """Retrain-equivalence tolerance of a metric."""
    return next((value for key, value in TOLERANCES.items() if key in metric), 0.0)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")


MethodLike = str | UnlearningMethod | tuple[str, dict]


def resolve_methods(methods: Sequence[MethodLike]) -> list[UnlearningMethod]:
    """Method instances from names, instances or ``(name, overrides)`` pairs (labels unique).

    Raises:
        MethodSettingError: On an unknown method or setting, or two methods with one label.
    """
    out = []
    for item in methods:
        if isinstance(item, UnlearningMethod):
            out.append(item)
        elif isinstance(item, str):
            out.append(get_method(item))
        else:
            out.append(get_method(item[0], **item[1]))
    labels = [m.label for m in out]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise MethodSettingError(f"method(s) {twice} given twice")
    return out


@dataclass
class Comparison:
    """The results of one comparison: per-seed rows and their aggregate (plain data, JSON-able).

    Attributes:
        scenario: Scenario name.
        seeds: The seeds run.
        full: Whether the scenario's larger configuration ran.
        methods: Method labels in the order given.
        per_seed: One dict per seed: ``oracle``, ``oracle_second_seed`` and ``original`` metrics,
            ``oracle_cost``, ``original_cost`` (θ_o's training), and per method ``metrics``,
            ``gaps``, ``cost``, ``rho_*``; a method that owns its training adds ``own_oracle``
            (and its cost), ``trained_metrics`` (its model before unlearning), ``training_cost``
            and ``extras_storage_models`` (the extra states it keeps, in models).
        num_clients: Clients kept (0 = the scenario's).
        rounds: Training rounds asked for (0 = the scenario's).
        config: The federation config that ran (of the first seed; ``config["rounds"]`` is the
            number of training rounds).
        timed: Whether ρ_time was measured (retraining timed in the same process); otherwise it
            is NaN.
    """

    scenario: str
    seeds: list[int]
    full: bool
    methods: list[str]
    per_seed: list[dict]
    num_clients: int = 0
    rounds: int = 0
    config: dict = field(default_factory=dict)
    timed: bool = False
    aggregate: dict = field(init=False)

    def __post_init__(self) -> None:
        self.aggregate = self._aggregate()

    def _aggregate(self) -> dict:
        rows = self.per_seed
        metrics = list(rows[0]["oracle"])
        noise = {m: math.sqrt(statistics.fmean([(r["oracle"][m] - r["oracle_second_seed"][m]) ** 2 / 2
                                                for r in rows])) for m in metrics}
        band = {m: max(tolerance(m), 2 * noise[m]) for m in metrics}
        original_gap = {m: statistics.median([r["original"][m] - r["oracle"][m] for r in rows]) for m in metrics}
        out = {"metrics": metrics, "noise_floor": noise, "band": band,
               "informative": {m: abs(original_gap[m]) > band[m] for m in metrics},
               "oracle": {m: summary([r["oracle"][m] for r in rows]) for m in metrics},
               "original": {m: summary([r["original"][m] for r in rows]) for m in metrics},
               "methods": {}}
        for label in self.methods:
            per = [r["methods"][label] for r in rows]
            own = "own_oracle" in per[0]
            judged = [m for m in metrics if all(m in p["gaps"] for p in per)]
            # a method judged against its own retraining: no noise floor measured there, the band is the tolerance
            bands = {m: tolerance(m) if own else band[m] for m in judged}
            gaps = {m: summary([p["gaps"][m] for p in per]) for m in judged}
            out["methods"][label] = {
                "metrics": {m: summary([p["metrics"][m] for p in per]) for m in judged},
                "gaps": gaps,
                "retrain_equivalent": {m: abs(gaps[m]["median"]) <= bands[m] for m in judged},
                **{k: summary([p[k] for p in per]) for k in ("rho_steps", "rho_comm", "rho_time")},
                **({"own_oracle": {m: summary([p["own_oracle"][m] for p in per]) for m in judged}} if own else {}),
            }
        return out

    def value(self, label: str, metric: str, stat: str = "median") -> float:
        """A method's metric over seeds (``label`` may be ``"retrain"`` or ``"original"``)."""
        if label in ("retrain", "original"):
            return self.aggregate["oracle" if label == "retrain" else "original"][metric][stat]
        return self.aggregate["methods"][label]["metrics"][metric][stat]

    def gap(self, label: str, metric: str, stat: str = "median") -> float:
        r"""A method's gap to $\theta_r$ of the same seed, over seeds."""
        return self.aggregate["methods"][label]["gaps"][metric][stat]

    def rho(self, label: str, kind: str = "steps", stat: str = "median") -> float:
        r"""$\rho$ of a method (``steps``, ``comm`` or ``time``) over seeds."""
        return self.aggregate["methods"][label][f"rho_{kind}"][stat]

    def equivalent(self, label: str, metric: str, every_seed: bool = False) -> bool:
        """Whether the method's median gap (with ``every_seed``: each seed's gap) lies within the
        retrain band of the metric."""
        if not every_seed:
            return self.aggregate["methods"][label]["retrain_equivalent"][metric]
        gaps = self.aggregate["methods"][label]["gaps"][metric]
        return max(abs(gaps["min"]), abs(gaps["max"])) <= self.aggregate["band"][metric]

    def not_above_retrain(self, label: str, metric: str) -> bool:
        r"""Whether, at every seed, the method's gap to $\theta_r$ is at most the retrain band: a
        one-sided check, for a metric where landing below $\theta_r$ is no failure to forget (e.g.
        a backdoor's trigger margin suppressed further than retraining does)."""
        return self.gap(label, metric, "max") <= self.aggregate["band"][metric]

    @property
    def band_rule(self) -> str:
        r"""How this comparison's retrain bands were set: $\max(\text{tol}, 2\sigma_r)$, or the
        tolerance alone when no second oracle was retrained (every table says which)."""
        if all(r.get("noise_floor", True) for r in self.per_seed):
            return "max(tolerance, 2σ_r)"
        return "= the tolerance (no second oracle retrained: σ_r not measured)"

    def informative(self, metric: str) -> bool:
        r"""Whether $\theta_o$ lies outside the retrain band of the metric (otherwise the metric
        cannot show forgetting in this scenario)."""
        return self.aggregate["informative"][metric]

    def table(self, metrics: Sequence[str] | None = None, methods: Sequence[str] | None = None,
              costs: Sequence[str] = ("steps", "comm")) -> str:
        r"""A Markdown table: median metric (gap to $\theta_r$, ✓ within the band) and cost ratios,
        with rows for $\theta_r$ and $\theta_o$; a line below says how many seeds and what the
        marks mean."""
        agg = self.aggregate
        metrics = list(metrics or agg["metrics"])
        methods = list(methods or self.methods)
        seeds = len(self.seeds)

        def cell(values: dict, digits: int = 3) -> str:
            text = f"{values['median']:.{digits}f}"
            return text if seeds == 1 else f"{text} [{values['min']:.{digits}f}, {values['max']:.{digits}f}]"

        head = ["model", *metrics, *(f"ρ_{c}" for c in costs)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                 "| θ_r (retrain) | " + " | ".join(cell(agg["oracle"][m]) for m in metrics) + " |"
                 + " 1 |" * len(costs),
                 "| θ_o (original) | " + " | ".join(cell(agg["original"][m]) + ("" if agg["informative"][m] else " (n.i.)")
                                                   for m in metrics) + " |" + " 0 |" * len(costs)]
        own_oracles = []
        for label in methods:
            row = agg["methods"][label]
            if "own_oracle" in row:
                own_oracles.append(label)
                lines.append(f"| θ_r of {label} † | " + " | ".join(
                    cell(row["own_oracle"][m]) if m in row["own_oracle"] else "–" for m in metrics) + " |"
                    + " 1 |" * len(costs))
            cells = [f"{cell(row['metrics'][m])} ({row['gaps'][m]['median']:+.3f} "
                     f"{'✓' if row['retrain_equivalent'][m] else '✗'})" if m in row["gaps"] else "–"
                     for m in metrics]
            cells += [cell(row[f"rho_{c}"], 2) for c in costs]
            lines.append(f"| {label}{' †' if 'own_oracle' in row else ''} | " + " | ".join(cells) + " |")
        seed_list = ", ".join(map(str, self.seeds))
        spread = f"median [min, max] over seeds {seed_list}" if seeds > 1 else f"seed {seed_list}"
        lines += ["", f"`{self.scenario}`, {spread}. In parentheses: the gap to θ_r of the same seed, ✓ within "
                  f"the retrain band {self.band_rule}, ✗ outside it; n.i. = not informative (θ_o is already "
                  "within that band)."]
        if own_oracles:
            lines[-1] += f" {OWN_ORACLE_NOTE}"
        if any(m.startswith("unseen_") or m == "canary_exposure" for m in metrics):
            lines[-1] += (" References: `unseen_*` columns measure people nobody trained on (the forgetting "
                          "threshold); a canary never seen has expected exposure log₂e ≈ 1.44 bits (maximum "
                          "log₂10⁴ ≈ 13.3).")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain data (what ``save`` writes)."""
        return {"scenario": self.scenario, "seeds": self.seeds, "full": self.full, "methods": self.methods,
                "num_clients": self.num_clients, "rounds": self.rounds, "config": self.config, "timed": self.timed,
                "per_seed": self.per_seed, "aggregate": self.aggregate}

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Comparison:
        """Read a comparison written by ``save``."""
        data = json.loads(Path(path).read_text())
        data.pop("aggregate", None)
        return cls(**data)


def compare(scenario: str, methods: Sequence[MethodLike], seeds: Sequence[int] = (0,), full: bool = False,
            num_clients: int = 0, rounds: int = 0, progress: bool = True, device: str | None = None,
            timing: bool = False, noise_floor: bool = True) -> Comparison:
    r"""Run ``methods`` on ``scenario`` at each seed against the retrain oracle.

    Args:
        scenario: A scenario name.
        methods: Names, method instances (with their configs) or ``(name, overrides)`` pairs.
        seeds: The seeds (any list).
        full: The scenario's larger configuration.
        num_clients: Keep only the first clients (0 = all), as the Flower app's run config does.
        rounds: Training rounds (0 = the scenario's).
        progress: Show a progress bar.
        device: Where models run (default ``$FEDUNLEARN_DEVICE`` or the CPU).
        timing: Measure ρ_time: retrain the oracle once more in this process, timed beside the
            methods (the cached oracle's time was taken elsewhere, under other load). Without it
            ρ_time is NaN; ρ_steps and ρ_comm are exact either way.
        noise_floor: Retrain the second oracle that measures $\sigma_r$. Without it (a claim that
            reads no band: one LM training and evaluation less per seed) every band is the
            tolerance, and the table says so.

    Raises:
        KeyError: On an unknown scenario.
        MethodSettingError: On an unknown method or setting.
        ForgetRequestError: If a method cannot serve the scenario's request kind, or the request
            does not fit the restricted scenario (raised before any training).
        ValueError: If ``seeds`` is empty or ``num_clients`` exceeds the scenario's clients.
    """
    instances, first = _prepare(scenario, methods, seeds, full, num_clients, rounds, device)
    bar = tqdm(total=len(seeds) * (3 + len(instances)), desc=f"compare {scenario}", disable=not progress)
    per_seed = []
    for seed in seeds:
        sc = first if seed == seeds[0] else build_scenario(scenario, seed, full, device).restricted(num_clients, rounds)
        per_seed.append(_seed_row(sc, instances, timing, bar, noise_floor=noise_floor)[0])
    bar.close()
    return Comparison(scenario, list(seeds), full, [m.label for m in instances], per_seed, num_clients, rounds,
                      first.config.as_dict(), timing)


def compare_sequential(scenario: str, methods: Sequence[MethodLike], seeds: Sequence[int] = (0,),
                       full: bool = False, rounds: int = 0, progress: bool = True,
                       device: str | None = None, requests: int = 0, noise_floor: bool = True) -> list[Comparison]:
    r"""Serve the scenario's sequence of requests one after another (MUSE's sustainability).

    Request $k$ forgets the clients of the first $k$ steps of ``Scenario.sequence``. Each method
    starts request $k$ from what it served after request $k-1$: a method whose
    ``sequential_start`` is ``"deployed"`` receives that model as ``run.final_state``; one marked
    ``"original"`` (it subtracts from, or measures against, $\theta_o$) receives $\theta_o$ and the
    cumulative request. Every step is judged against $\theta_r$ retrained without all clients
    forgotten so far, with the cost of that step alone. ``requests`` serves only the first ones of
    the sequence (0: all); ``noise_floor`` as in [`compare`][fedunlearn.unlearning.compare.compare].

    Returns:
        One [`Comparison`][fedunlearn.unlearning.compare.Comparison] per request, named
        ``"<scenario> #k"``.

    Raises:
        ValueError: If the scenario has no sequence of requests (or as ``compare``).
    """
    instances, first = _prepare(scenario, methods, seeds, full, 0, rounds, device)
    if not first.sequence:
        with_sequence = ", ".join(n for n in SCENARIOS if n.endswith("-sequential"))
        raise ValueError(f"scenario {scenario!r} has no sequence of requests; scenarios with one: {with_sequence}")
    if requests < 0 or requests > len(first.sequence):
        raise ValueError(f"requests must lie in 0..{len(first.sequence)} for {scenario!r}, got {requests}")
    steps = requests or len(first.sequence)
    bar = tqdm(total=len(seeds) * steps * (3 + len(instances)), desc=f"sequence {scenario}", disable=not progress)
    rows: list[list[dict]] = [[] for _ in range(steps)]
    for seed in seeds:
        sc = first if seed == seeds[0] else build_scenario(scenario, seed, full, device).restricted(0, rounds)
        deployed: dict[str, State] = {}
        for k in range(steps):
            forgotten = tuple(c for step in sc.sequence[: k + 1] for c in step)
            row, deployed = _seed_row(sc.restricted(forget_clients=forgotten), instances, False, bar, deployed,
                                      noise_floor=noise_floor)
            rows[k].append({**row, "forgotten": list(forgotten)})
    bar.close()
    return [Comparison(f"{scenario} #{k + 1}", list(seeds), full, [m.label for m in instances], rows[k], 0, rounds,
                       first.config.as_dict(), False) for k in range(steps)]


def _prepare(scenario, methods, seeds, full, num_clients, rounds, device):
    if not seeds:
        raise ValueError("give at least one seed")
    instances = resolve_methods(methods)
    first = build_scenario(scenario, seeds[0], full, device).restricted(num_clients, rounds)
    for method in instances:
        check_granularity(method, first.request)
        check_scenario(method, first)
    return instances, first


def _seed_row(sc, instances: list[UnlearningMethod], timing: bool, bar,
              deployed: dict[str, State] | None = None, noise_floor: bool = True) -> tuple[dict, dict[str, State]]:
    """One seed of a comparison: θ_o, θ_r, the second oracle and every method, evaluated and judged.

    ``deployed`` maps a method label to the model it serves now (a sequence of requests); the
    returned dict maps each label to the model it serves after this request."""
    runs = {every: cache.trained_federation(sc, every) for every in
            dict.fromkeys([sc.config.record_every] + [m.history_interval() or sc.config.record_every
                                                      for m in instances if not m.owns_training])}
    base = runs[sc.config.record_every]
    bar.update()
    oracle_state, oracle_cost = cache.retrained_oracle(sc, base)
    oracle_time = run_method(Retrain(), base, sc.request).cost.wall_time_s if timing else float("nan")
    oracle_evaluation = cache.evaluation(sc, oracle_state, base.model)

    def judged(evaluation):  # metrics, with those relative to θ_r of this seed
        return {**evaluation.metrics, **relative_to_oracle(evaluation, oracle_evaluation)}

    oracle = judged(oracle_evaluation)
    bar.update()
    # without the second oracle, σ_r = 0 and every band is the tolerance
    second = (judged(cache.evaluation(sc, cache.retrained_oracle(sc, base, second_seed=True)[0], base.model))
              if noise_floor else dict(oracle))
    bar.update()
    row = {"seed": sc.seed, "oracle": oracle, "oracle_second_seed": second, "noise_floor": noise_floor,
           "original": judged(cache.evaluation(sc, base.final_state, base.model)),
           "oracle_cost": oracle_cost.as_dict(), "original_cost": base.cost.as_dict(), "methods": {}}
    model_bytes = state_bytes(base.final_state)
    served = {}
    for method in instances:
        run = (cache.trained_federation(sc, method=method) if method.owns_training
               else runs[method.history_interval() or sc.config.record_every])
        if deployed and method.label in deployed and method.sequential_start == "deployed":
            run = replace(run, final_state=deployed[method.label])
        result = run_method(method, run, sc.request) if timing else cache.unlearned(sc, run, method, sc.request)
        served[method.label] = result.state
        evaluation = cache.evaluation(sc, result.state, run.model)  # methods are deterministic: same state, same row
        referee, referee_cost, own = oracle, oracle_cost, {}
        if method.owns_training:  # its own model family, retrained from scratch without the forgotten data
            retrained = cache.trained_federation(replace(sc, clients=split_clients(sc.clients, sc.request)[0]),
                                                 method=method)
            own_evaluation = cache.evaluation(sc, retrained.final_state, retrained.model)
            referee = {**own_evaluation.metrics, **relative_to_oracle(own_evaluation, own_evaluation)}
            referee_cost = retrained.cost
            values = {**evaluation.metrics, **relative_to_oracle(evaluation, own_evaluation)}
            own = {"own_oracle": referee, "own_oracle_cost": referee_cost.as_dict(),
                   "trained_metrics": cache.evaluation(sc, run.final_state, run.model).metrics,
                   "training_cost": run.cost.as_dict(),  # its training phase, beside FedAvg's θ_o
                   "extras_storage_models": sum(state_bytes(x) for x in run.extras.values()) / model_bytes}
        else:
            values = judged(evaluation)
        cost = result.cost
        row["methods"][method.label] = {
            "metrics": values, "gaps": gaps_to_oracle(values, referee), "cost": cost.as_dict(),
            "rho_steps": _ratio(cost.client_steps, referee_cost.client_steps),
            "rho_comm": _ratio(cost.bytes_communicated, referee_cost.bytes_communicated),
            "rho_time": _ratio(cost.wall_time_s, oracle_time) if not own else float("nan"),
            "history_storage_models": run.history.storage_bytes() / model_bytes,
            **own,
        }
        bar.update()
    return row, served
