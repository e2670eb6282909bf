"""How much of a federated round is the loop itself, rather than client training?

Runs the one round loop ([`run_rounds`][fedunlearn.federated.loop.run_rounds]) with the
in-process client pool, unchanged, on two scenarios and splits its wall time into

- **client training**: time inside the pool's clients (``client_update``: local SGD, including
  loading the global state into the model and extracting the update), measured by wrapping the
  pool's per-round dispatch;
- **aggregation**: time inside ``aggregate`` (FedAvg);
- **history**: time inside ``TrainingHistory.record_round`` (cloning the global state and every
  update, recorded every round here: the most expensive setting);
- **other loop work**: the rest of the loop's wall time (client sampling, the pool's cost
  counting, state copies, Python bookkeeping).

Overhead = (aggregation + history + other) / total. The goal is below 5% for the language-model
scenario, where client training is what the experiment is about.

Scenarios: ``llm`` (``profiles-client``: the tiny Llama-style model with LoRA adapters on
fictitious people's records) and ``digits`` (``digits-backdoor``: the 64-unit MLP on scikit-learn
digits, 10 IID clients). The LLM's base model is built before timing starts (it is pretrained once
and cached, see ``fedunlearn.models.tiny_lm``).

Usage::

    python benchmarks/loop_overhead.py                      # both scenarios, 3 rounds
    python benchmarks/loop_overhead.py --scenarios llm --rounds 5 --json overhead.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from fedunlearn.federated import loop
from fedunlearn.federated.costs import CostCounter
from fedunlearn.federated.history import TrainingHistory
from fedunlearn.federated.pool import InProcessPool
from fedunlearn.federated.task import Task
from fedunlearn.federated.training import FederationConfig
from fedunlearn.unlearning.scenarios import build_scenario


@dataclass
class Setup:
    """One scenario ready to run: task, pool, initial state, config."""

    name: str
    task: Task
    pool: InProcessPool
    init_state: dict[str, torch.Tensor]
    config: FederationConfig


def scenario_setup(label: str, scenario: str) -> Callable[[int, int], Setup]:
    """A setup builder for a shipped scenario (history recorded every round)."""

    def build(rounds: int, seed: int) -> Setup:
        sc = build_scenario(scenario, seed)
        model = sc.task.build_model()
        return Setup(label, sc.task, sc.pool(model), sc.task.get_state(model),
                     replace(sc.config, rounds=rounds, record_every=1))

    return build


SETUPS: dict[str, Callable[[int, int], Setup]] = {"llm": scenario_setup("llm", "profiles-client"),
                                                   "digits": scenario_setup("digits", "digits-backdoor")}


@contextmanager
def timing(owner: object, name: str, totals: dict[str, float], key: str) -> Iterator[None]:
    """Temporarily replace ``owner.name`` by a wrapper adding its wall time to ``totals[key]``."""
    original = getattr(owner, name)
    shadowing = not isinstance(owner, type(sys)) and name not in vars(owner)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(owner, name, timed)
    try:
        yield
    finally:
        if shadowing:  # an instance attribute hid the class's method: remove it again
            delattr(owner, name)
        else:
            setattr(owner, name, original)


def measure(setup: Setup) -> dict:
    """Run the unchanged loop once on ``setup`` and split its wall time."""
    totals = {"client": 0.0, "state_io": 0.0, "aggregate": 0.0, "history": 0.0}
    counter = CostCounter()
    history = TrainingHistory(setup.init_state, record_every=1)
    with (
        timing(setup.pool, "_train", totals, "client"),
        timing(loop, "aggregate", totals, "aggregate"),
        timing(history, "record_round", totals, "history"),
        timing(setup.task, "set_state", totals, "state_io"),
        timing(setup.task, "get_state", totals, "state_io"),
    ):
        loop.run_rounds(setup.pool, setup.init_state, setup.config, range(setup.config.rounds),
                        counter=counter, history=history)
    total = counter.wall_time_s
    overhead = total - totals["client"]
    rounds = setup.config.rounds
    return {
        "scenario": setup.name,
        "rounds": rounds,
        "clients_per_round": counter.client_rounds // rounds,
        "client_steps": counter.client_steps,
        "state_bytes": counter.bytes_up // max(counter.client_rounds, 1),
        "total_s": total,
        "client_training_s": totals["client"],
        "state_load_extract_s": totals["state_io"],
        "aggregation_s": totals["aggregate"],
        "history_s": totals["history"],
        "other_loop_s": overhead - totals["aggregate"] - totals["history"],
        "overhead_s": overhead,
        "overhead_share": overhead / total if total > 0 else float("nan"),
        "config": setup.config.as_dict(),
    }


def table(results: list[dict]) -> str:
    """A plain-text table of the measurements (seconds per round, shares of the total)."""
    header = (
        "scenario",
        "rounds",
        "s/round",
        "client %",
        "(state i/o %)",
        "aggregate %",
        "history %",
        "other %",
        "overhead %",
    )
    rows = [header]
    for r in results:
        share = {
            k: 100 * r[k] / r["total_s"]
            for k in (
                "client_training_s",
                "state_load_extract_s",
                "aggregation_s",
                "history_s",
                "other_loop_s",
            )
        }
        rows.append(
            (
                r["scenario"],
                str(r["rounds"]),
                f"{r['total_s'] / r['rounds']:.3f}",
                f"{share['client_training_s']:.1f}",
                f"({share['state_load_extract_s']:.1f})",
                f"{share['aggregation_s']:.2f}",
                f"{share['history_s']:.2f}",
                f"{share['other_loop_s']:.2f}",
                f"{100 * r['overhead_share']:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description="Share of federated-loop wall time spent outside client training "
        "(aggregation, history recording, sampling and bookkeeping).",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=sorted(SETUPS),
        default=["llm", "digits"],
        help="scenarios to measure (default: both)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds per scenario")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, model and loop")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0 = leave torch's default)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.scenarios:
        setup = SETUPS[name](args.rounds, args.seed)
        results.append(measure(setup))
    print(f"torch threads: {torch.get_num_threads()}; history recorded every round")
    print(table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threads": torch.get_num_threads(), "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
