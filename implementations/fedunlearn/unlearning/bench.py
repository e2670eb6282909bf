r"""Benchmark unlearning methods against the retrain oracle on a scenario.

For every seed: build the scenario, train $\theta_o$ once (per history granularity the methods
need; recording does not change training), retrain the oracle $\theta_r$ from the same
initialisation, retrain a second oracle with another sampling/data-order seed to measure the noise
floor $\sigma_r$, run each method, evaluate every model with the one evaluation function and take
paired gaps to $\theta_r$ of the same seed. Aggregates are the median and min-max over seeds.

A metric is *retrain-equivalent* when $|\text{median gap}| \le \max(\text{tol}, 2\sigma_r)$, and *not
informative* in the scenario when $\theta_o$ itself is retrain-equivalent on it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from fedunlearn.federated.costs import CostCounter, state_bytes
from fedunlearn.unlearning.base import TrainedFederation, run_method, train_federation
from fedunlearn.unlearning.controls import Retrain
from fedunlearn.unlearning.evaluate import evaluate, gaps_to_oracle
from fedunlearn.unlearning.registry import available_methods, get_method
from fedunlearn.unlearning.scenarios import SCENARIOS, Scenario, build_scenario

#: Tolerance of retrain-equivalence per metric family (MEASURING.md; log-prob and exposure are ours).
TOLERANCES = {"acc": 0.02, "asr": 0.02, "mia_auc": 0.02, "logprob": 0.05, "canary_exposure": 0.5,
              "canary_extraction": 0.0, "forget_loss": 0.0}

METRIC_HELP = {
    "test_acc / test_logprob": "utility on held-out data (accuracy; mean answer-token log-prob)",
    "retain_acc / retain_logprob": "utility on the data the federation keeps",
    "forget_acc / forget_logprob": "the same on the forgotten data: judged against retraining, not 0",
    "forget_loss": "mean loss on the forgotten data",
    "asr": "backdoor attack success rate on triggered test inputs of non-target classes",
    "mia_auc*": "membership-inference AUC, forgotten data vs non-members (LOSS, zlib, Min-K%)",
    "canary_exposure / canary_extraction": "rank-based exposure of planted secrets; exact greedy extraction",
    "rho_steps / rho_time / rho_comm": "client steps / wall time / bytes of the method over retraining's",
}


def tolerance(metric: str) -> float:
    """Retrain-equivalence tolerance of a metric."""
    for key, value in TOLERANCES.items():
        if key in metric:
            return value
    return 0.0


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_benchmark(scenario: str, methods: Sequence[str], seeds: int = 3, full: bool = False,
                  progress: bool = True, num_clients: int = 0, rounds: int = 0) -> dict:
    """Run the benchmark and return its results as plain data (see module docstring).

    ``num_clients`` and ``rounds`` shrink the scenario with
    [`Scenario.restricted`][fedunlearn.unlearning.scenarios.Scenario.restricted] (0 = its own), as
    the Flower app's run config does, so a small Flower run can be checked against this.

    Raises:
        KeyError: On an unknown scenario or method (the message lists the known names).
    """
    instances = {name: get_method(name) for name in methods}
    per_seed, timing = [], []
    bar = tqdm(total=seeds * (3 + len(instances)), desc=f"bench {scenario}", disable=not progress)
    for seed in range(seeds):
        sc = build_scenario(scenario, seed, full).restricted(num_clients, rounds)
        runs = {}
        for name, method in instances.items():
            every = method.record_every or sc.config.record_every
            if every not in runs:
                runs[every] = train_federation(sc.task, sc.clients, replace(sc.config, record_every=every),
                                               server_inputs=sc.server_inputs)
        if sc.config.record_every not in runs:
            runs[sc.config.record_every] = train_federation(sc.task, sc.clients, sc.config,
                                                            server_inputs=sc.server_inputs)
        base = runs[sc.config.record_every]
        bar.update()
        oracle = run_method(Retrain(), base, sc.request)
        oracle_metrics = evaluate(sc, oracle.state, base.model)
        bar.update()
        second = replace(base, config=replace(base.config, seed=base.config.seed + 7777))
        oracle2_metrics = evaluate(sc, run_method(Retrain(), second, sc.request).state, base.model)
        bar.update()
        model_bytes = state_bytes(base.final_state)
        row = {"seed": seed, "oracle": oracle_metrics, "oracle_second_seed": oracle2_metrics,
               "original": evaluate(sc, base.final_state, base.model),
               "oracle_cost": {k: v for k, v in oracle.cost.as_dict().items() if k != "wall_time_s"},
               "methods": {}}
        times = {"retrain_s": oracle.cost.wall_time_s, "methods_s": {}}
        for name, method in instances.items():
            run = runs[method.record_every or sc.config.record_every]
            result = run_method(method, run, sc.request)
            values = evaluate(sc, result.state, run.model)
            cost = result.cost
            row["methods"][name] = {
                "metrics": values, "gaps": gaps_to_oracle(values, oracle_metrics),
                "cost": {k: v for k, v in cost.as_dict().items() if k != "wall_time_s"},
                "rho_steps": _ratio(cost.client_steps, oracle.cost.client_steps),
                "rho_comm": _ratio(cost.bytes_communicated, oracle.cost.bytes_communicated),
                "history_storage_models": run.history.storage_bytes() / model_bytes,
            }
            times["methods_s"][name] = {"wall_time_s": cost.wall_time_s,
                                        "rho_time": _ratio(cost.wall_time_s, oracle.cost.wall_time_s)}
            bar.update()
        per_seed.append(row)
        timing.append(times)
    bar.close()
    return {"scenario": scenario, "full": full, "seeds": seeds, "methods": list(methods),
            "num_clients": num_clients, "rounds": rounds,
            "per_seed": per_seed, "aggregate": aggregate(per_seed, list(methods)), "timing": timing}


def evaluate_methods(scenario: Scenario, run: TrainedFederation, names: Sequence[str]
                     ) -> dict[str, tuple[dict[str, float], CostCounter]]:
    """Run each named method on one trained federation and evaluate its model.

    Returns:
        Method name -> (metrics, measured cost), in the order given.
    """
    rows = {}
    for name in names:
        result = run_method(get_method(name), run, scenario.request)
        rows[name] = (evaluate(scenario, result.state, run.model), result.cost)
    return rows


def comparison_markdown(rows: dict[str, tuple[dict[str, float], CostCounter]], metrics: Sequence[str],
                        reference: str = "retrain") -> str:
    """A Markdown table of ``rows`` (from [`evaluate_methods`][fedunlearn.unlearning.bench.evaluate_methods]):
    the chosen metrics and ρ_steps relative to the ``reference`` method."""
    reference_steps = rows[reference][1].client_steps
    lines = ["| model | " + " | ".join(metrics) + " | ρ_steps |", "|---" * (len(metrics) + 2) + "|"]
    for name, (values, cost) in rows.items():
        cells = " | ".join(f"{values[m]:.3f}" for m in metrics)
        lines.append(f"| {name} | {cells} | {cost.client_steps / reference_steps:.2f} |")
    return "\n".join(lines)


def aggregate(per_seed: list[dict], methods: list[str]) -> dict:
    """Median/min/max over seeds, the noise floor, and retrain-equivalence verdicts."""
    metrics = list(per_seed[0]["oracle"])
    noise = {m: math.sqrt(statistics.fmean(
        [(r["oracle"][m] - r["oracle_second_seed"][m]) ** 2 / 2 for r in per_seed])) for m in metrics}
    band = {m: max(tolerance(m), 2 * noise[m]) for m in metrics}
    original_gap = {m: statistics.median([r["original"][m] - r["oracle"][m] for r in per_seed]) for m in metrics}
    out = {"noise_floor": noise, "band": band,
           "informative": {m: abs(original_gap[m]) > band[m] for m in metrics},
           "oracle": {m: _summary([r["oracle"][m] for r in per_seed]) for m in metrics},
           "original": {m: _summary([r["original"][m] for r in per_seed]) for m in metrics},
           "methods": {}}
    for name in methods:
        rows = [r["methods"][name] for r in per_seed]
        gaps = {m: _summary([row["gaps"][m] for row in rows]) for m in metrics}
        out["methods"][name] = {
            "metrics": {m: _summary([row["metrics"][m] for row in rows]) for m in metrics},
            "gaps": gaps,
            "retrain_equivalent": {m: abs(gaps[m]["median"]) <= band[m] for m in metrics},
            "rho_steps": _summary([row["rho_steps"] for row in rows]),
            "rho_comm": _summary([row["rho_comm"] for row in rows]),
        }
    return out


def markdown_table(result: dict) -> str:
    """One row per method: median metric (gap to retrain), cost ratios; plus θ_o and θ_r rows."""
    agg = result["aggregate"]
    metrics = list(agg["oracle"])
    head = ["model"] + metrics + ["rho_steps", "rho_comm"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| θ_r (retrain) | " + " | ".join(f"{agg['oracle'][m]['median']:.3f}" for m in metrics) + " | 1 | 1 |")
    lines.append("| θ_o (original) | " + " | ".join(
        f"{agg['original'][m]['median']:.3f}" + ("" if agg["informative"][m] else " (n.i.)") for m in metrics) + " | 0 | 0 |")
    for name, row in agg["methods"].items():
        cells = []
        for m in metrics:
            mark = "✓" if row["retrain_equivalent"][m] else "✗"
            cells.append(f"{row['metrics'][m]['median']:.3f} ({row['gaps'][m]['median']:+.3f} {mark})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['rho_steps']['median']:.3f} | {row['rho_comm']['median']:.3f} |")
    lines.append("")
    lines.append(f"Medians over {result['seeds']} seed(s); (gap to θ_r of the same seed, ✓ = within "
                 "max(tolerance, 2σ_r)); n.i. = not informative: θ_o is already within that band.")
    if result.get("num_clients") or result.get("rounds"):
        clients = result["num_clients"] or "all"
        rounds = result["rounds"] or "the scenario's"
        lines.append(f"Scenario shrunk: first {clients} clients, {rounds} rounds.")
    return "\n".join(lines)


def pareto_plot(result: dict, path: str | Path, metric: str | None = None) -> Path:
    """Scatter of ρ_steps against |gap to retrain| of one metric (default: the scenario's first
    informative forgetting metric), one point per method (median over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = result["aggregate"]
    if metric is None:
        preferred = ["asr", "forget_acc", "forget_logprob", "mia_auc", "mia_auc_loss", "test_acc", "test_logprob"]
        informative = [m for m in preferred if agg["informative"].get(m)]
        metric = (informative or [m for m in preferred if m in agg["oracle"]])[0]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, row in agg["methods"].items():
        x, y = row["rho_steps"]["median"], abs(row["gaps"][metric]["median"])
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(agg["band"][metric], color="grey", linestyle="--", linewidth=1, label="retrain band")
    ax.set_xlabel("ρ_steps (client steps / retraining's)")
    ax.set_ylabel(f"|{metric} − {metric}(θ_r)|")
    ax.set_title(f"{result['scenario']}: cost vs distance to retraining")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``fedunlearn bench``."""
    known = ", ".join(available_methods())
    parser.add_argument("--scenario", required=True, choices=tuple(SCENARIOS), help="scenario to run")
    parser.add_argument("--methods", required=True,
                        help=f"comma-separated method names (known: {known})")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1), default 3")
    parser.add_argument("--full", action="store_true", help="the scenario's larger configuration")
    parser.add_argument("--num-clients", type=int, default=0, metavar="K",
                        help="keep only the scenario's first K clients (default 0: all); as the Flower app's num-clients")
    parser.add_argument("--rounds", type=int, default=0, metavar="T",
                        help="training rounds (default 0: the scenario's); as the Flower app's rounds")
    parser.add_argument("--out", type=Path, help="write the JSON results here (plus .md table and .png plot beside it)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the embedded models are too small to gain "
                        "from more; results do not depend on it beyond float rounding)")
    parser.epilog = "metrics:\n" + "\n".join(f"  {k}: {v}" for k, v in METRIC_HELP.items())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace) -> int:
    """Run ``fedunlearn bench``; returns the exit status."""
    import sys

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = available_methods()
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        print(f"fedunlearn bench: unknown method(s) {unknown}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print("fedunlearn bench: --seeds must be at least 1", file=sys.stderr)
        return 2
    if args.num_clients < 0 or args.rounds < 0:
        print("fedunlearn bench: --num-clients and --rounds must be 0 (the scenario's) or positive", file=sys.stderr)
        return 2
    try:  # a restriction the scenario does not allow fails here, before any training
        build_scenario(args.scenario, 0, args.full).restricted(args.num_clients, args.rounds)
    except ValueError as exc:
        print(f"fedunlearn bench: {exc}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(max(1, args.threads))
    result = run_benchmark(args.scenario, methods, args.seeds, args.full, progress=not args.no_progress,
                           num_clients=args.num_clients, rounds=args.rounds)
    table = markdown_table(result)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
        tmp.replace(args.out)
        args.out.with_suffix(".md").write_text(table + "\n")
        pareto_plot(result, args.out.with_suffix(".png"))
        print(f"wrote {args.out}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}")
    return 0
