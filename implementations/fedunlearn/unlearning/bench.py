"""Benchmark unlearning methods against the retrain oracle on a scenario.

The command line of the comparison engine ([`compare`][fedunlearn.unlearning.compare.compare]):
options, the Pareto plot, and output files. Everything it prints or writes comes from one
[`Comparison`][fedunlearn.unlearning.compare.Comparison].
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedunlearn.federated.requests import ForgetRequestError
from fedunlearn.unlearning.base import check_granularity, check_scenario
from fedunlearn.unlearning.compare import (
    METRIC_HELP,
    Comparison,
    compare,
    compare_sequential,
    resolve_methods,
)
from fedunlearn.unlearning.registry import MethodSettingError, methods_serving, parse_settings
from fedunlearn.unlearning.scenarios import SCENARIOS, build_scenario

#: The text of ``fedunlearn bench --help`` (plain text: no LaTeX).
DESCRIPTION = """\
Run unlearning methods on a scenario against the retrain oracle.

For every seed: train the federation once (cached under $FEDUNLEARN_CACHE), retrain the oracle
theta_r from the same initialisation without the forgotten data (twice, with another sampling
seed, to measure its noise floor), run each method from the trained model and its history, and
evaluate every model with the one evaluation function. Gaps are taken to theta_r of the same seed;
a metric is retrain-equivalent when its median gap lies within max(tolerance, 2 x noise floor).
Method and setting names are checked, and each method's request granularity against the
scenario, before anything trains."""


def _save(fig, path: str | Path, **options) -> Path:
    """Write ``fig`` to ``path`` (120 dpi) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, dpi=120, **options)
    plt.close(fig)
    return path


#: Marker of each row group in the Pareto plot (colour tells methods apart, shape their family).
FAMILY_MARKERS = {"controls": "o", "perturbation": "^", "decomposition": "s", "incremental": "D"}


def _default_metric(result: Comparison) -> str:
    agg = result.aggregate
    preferred = ["asr", "forget_quality", "forget_acc", "forget_logprob", "mia_auc", "mia_auc_loss", "test_acc",
                 "test_logprob"]
    informative = [m for m in preferred if agg["informative"].get(m)]
    return (informative or [m for m in preferred if m in agg["oracle"]])[0]


def _abs_range(values: dict) -> tuple[float, float, float]:
    """|median|, and the lowest and highest |value| over seeds (0 when the range crosses 0)."""
    low, high = values["min"], values["max"]
    return abs(values["median"]), (0.0 if low < 0 < high else min(abs(low), abs(high))), max(abs(low), abs(high))


#: Offsets (points) tried in turn for a point's number label, nearest first.
_LABEL_OFFSETS = [(dx, dy) for r in (1, 2, 3, 4) for dx, dy in
                  ((5 * r, 3), (5 * r, -9), (-5 * r - 6, 3), (-5 * r - 6, -9), (0, 6 * r + 3), (0, -6 * r - 9))]


def _number_points(ax, points: list[tuple[float, float, str]]) -> None:
    """Write each point's label beside it, at the first offset whose box lies inside the axes and
    overlaps no label placed before (greedy, in display coordinates; the least-overlapping offset
    when none is free)."""
    fig = ax.figure
    fig.canvas.draw()
    scale = fig.dpi / 72
    frame = ax.get_window_extent()
    placed: list[tuple[float, float, float, float]] = []

    def overlap(a, b) -> float:
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    for x, y, text in points:
        px, py = ax.transData.transform((x, y))
        width, height = (5.5 * len(text) + 1) * scale, 9 * scale
        boxes = [(px + dx * scale, py + dy * scale, px + dx * scale + width, py + dy * scale + height)
                 for dx, dy in _LABEL_OFFSETS]
        inside = [frame.x0 <= b[0] and b[2] <= frame.x1 and frame.y0 <= b[1] and b[3] <= frame.y1 for b in boxes]
        costs = [sum(overlap(box, other) for other in placed) + (0 if ok else width * height)
                 for box, ok in zip(boxes, inside)]
        best = costs.index(min(costs))
        placed.append(boxes[best])
        dx, dy = _LABEL_OFFSETS[best]
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7.5,
                    color="#222222")


def pareto_plot(result: Comparison, path: str | Path, metric: str | None = None, utility: str | None = None,
                title: str | None = None) -> Path:
    r"""Cost against distance to retraining, one point per method: $\rho_\text{steps}$ on a
    symmetric-log axis (0 = no client work) against $|$gap to $\theta_r|$ of a forgetting metric
    (default: the scenario's first informative one) and, given ``utility``, against that metric's
    gap in a second panel. Points are medians over seeds, with bars from the lowest to the highest
    seed when several ran; the dashed lines are the retrain band. Each point carries a number that
    the legend resolves (colour, and marker by family, too), placed where it overlaps no other
    number, so that methods sharing a corner, or a point, stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedunlearn.unlearning.report import family_of

    agg = result.aggregate
    metric = metric or _default_metric(result)
    panels = [metric] + ([utility] if utility else [])
    labels = [label for label in result.methods if all(m in agg["methods"][label]["gaps"] for m in panels)]
    legend_rows = -(-len(labels) // 3)
    height = 3.4 + 0.2 * legend_rows
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 0.6, height), squeeze=False)
    colours = plt.get_cmap("tab20").colors
    numbered = {ax: [] for ax in axes[0]}
    for ax, m in zip(axes[0], panels):
        signed = m == utility
        for k, label in enumerate(labels):
            row = agg["methods"][label]
            rho = row["rho_steps"]
            if signed:
                y, low, high = row["gaps"][m]["median"], row["gaps"][m]["min"], row["gaps"][m]["max"]
            else:
                y, low, high = _abs_range(row["gaps"][m])
            ax.errorbar([rho["median"]], [y], xerr=[[rho["median"] - rho["min"]], [rho["max"] - rho["median"]]],
                        yerr=[[y - low], [high - y]], fmt=FAMILY_MARKERS.get(family_of(label), "o"),
                        color=colours[k % len(colours)], markersize=7, markeredgecolor="black",
                        markeredgewidth=0.5, elinewidth=0.8, capsize=2, alpha=0.9,
                        label=f"{k + 1} {label}" + (" †" if "own_oracle" in row else ""))
            numbered[ax].append((rho["median"], y, str(k + 1)))
        band = agg["band"][m]
        ax.axhline(band, color="grey", linestyle="--", linewidth=1)
        if signed:
            ax.axhline(-band, color="grey", linestyle="--", linewidth=1)
            ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xscale("symlog", linthresh=0.01)
        # room for the numbers of methods at ρ = 0 and at retraining's cost
        ax.set_xlim(-0.004, 1.8 * max([1.0, *(agg["methods"][label]["rho_steps"]["max"] for label in labels)]))
        ax.set_xlabel("ρ_steps (client steps ÷ retraining's; symmetric log)", fontsize=9)
        ax.set_ylabel(f"{m} − θ_r" if signed else f"|{m} − θ_r|", fontsize=9)
        ax.grid(True, linewidth=0.3, alpha=0.5)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title or f"{result.scenario}: cost vs distance to retraining (dashed: retrain band)", fontsize=10)
    fig.tight_layout(rect=(0, (0.19 * legend_rows + 0.1) / height, 1, 1))
    for ax, points in numbered.items():
        _number_points(ax, points)
    return _save(fig, path)


def tradeoff_plot(result: Comparison, path: str | Path, forgetting: str, utility: str,
                  title: str | None = None) -> Path:
    r"""Utility against forgetting, one point per method (median over seeds), coloured by
    $\rho_\text{steps}$; $\theta_r$ with its retrain band (a rectangle of half-widths the two
    metrics' bands) and $\theta_o$ drawn for reference. A method inside the rectangle is retrain-
    equivalent on both metrics; the colour says what it paid for that."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    agg = result.aggregate
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    x_r, y_r = result.value("retrain", forgetting), result.value("retrain", utility)
    labels = [label for label in result.methods if label != "do-nothing"]

    def span(metric: str, centre: float) -> tuple[float, float]:
        """The band around θ_r's value, clipped to [0, 1] when every value shown lies there (a
        probability, an accuracy, a p-value)."""
        low, high = centre - agg["band"][metric], centre + agg["band"][metric]
        shown = [centre, result.value("original", metric), *(result.value(label, metric) for label in labels)]
        if all(0.0 <= v <= 1.0 for v in shown):
            low, high = max(low, 0.0), min(high, 1.0)
        return low, high

    (x0, x1), (y0, y1) = span(forgetting, x_r), span(utility, y_r)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, color="tab:green", alpha=0.15, label="retrain band"))
    ax.scatter([x_r], [y_r], marker="*", s=160, color="tab:green", label="θ_r (retrain)", zorder=3)
    ax.scatter([result.value("original", forgetting)], [result.value("original", utility)], marker="X", s=80,
               color="black", label="θ_o (original)", zorder=3)
    rhos = [result.rho(label) for label in labels]
    points = ax.scatter([result.value(label, forgetting) for label in labels],
                        [result.value(label, utility) for label in labels], c=rhos, cmap="viridis",
                        vmin=0.0, vmax=max([1.0, *rhos]), s=55, edgecolors="black", linewidths=0.5, zorder=4)
    for label in labels:
        ax.annotate(label, (result.value(label, forgetting), result.value(label, utility)),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    fig.colorbar(points, ax=ax, label="ρ_steps (client steps / retraining's)")
    ax.set_xlabel(forgetting)
    ax.set_ylabel(utility)
    ax.set_title(title or f"{result.scenario}: utility vs forgetting")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


#: Metrics followed across a sequence of requests (those the scenario has).
SEQUENCE_METRICS = ("forget_quality", "canary_exposure", "forget_el", "model_utility", "test_acc", "test_logprob")


def sequence_plot(steps: list[Comparison], path: str | Path) -> Path:
    """One panel per metric: its median after each request, per method, with θ_r's as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in SEQUENCE_METRICS if m in steps[0].aggregate["oracle"]]
    columns = 3
    rows = -(-(len(metrics) + 1) // columns)  # one more cell for the legend
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False)
    cells = axes.reshape(-1)
    x = list(range(1, len(steps) + 1))
    for ax, metric in zip(cells, metrics):
        ax.plot(x, [c.value("retrain", metric) for c in steps], "k--", label="θ_r (retrain)")
        for label in steps[0].methods:
            ax.plot(x, [c.value(label, metric) for c in steps], marker="o", markersize=3, label=label)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("request", fontsize=8)
        ax.set_xticks(x)
        ax.tick_params(labelsize=8)
    handles, labels = cells[0].get_legend_handles_labels()
    for ax in cells[len(metrics):]:
        ax.axis("off")
    cells[len(metrics)].legend(handles, labels, fontsize=8, loc="center")
    fig.tight_layout()
    return _save(fig, path, bbox_inches="tight")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``fedunlearn bench``."""
    parser.description = DESCRIPTION
    parser.add_argument("--scenario", required=True, choices=tuple(SCENARIOS), help="scenario to run")
    parser.add_argument("--methods", required=True,
                        help="comma-separated method names (see 'fedunlearn list --methods'); 'all' runs "
                        "every registered method that serves the scenario's request")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE", dest="settings",
                        help="change a method's config, e.g. --set federaser.calibration_ratio=1.0 (repeatable)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    parser.add_argument("--seed-list", metavar="S1,S2,...", help="explicit seeds instead of --seeds, e.g. 3,7,11")
    parser.add_argument("--full", action="store_true", help="the scenario's larger configuration")
    parser.add_argument("--num-clients", type=int, default=0, metavar="K",
                        help="keep only the scenario's first K clients (default 0: all); as the Flower app's num-clients")
    parser.add_argument("--rounds", type=int, default=0, metavar="T",
                        help="training rounds (default 0: the scenario's); as the Flower app's rounds")
    parser.add_argument("--out", type=Path, help="write the JSON results here (plus .md table and .png plot beside it)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--timing", action="store_true",
                        help="also report rho_time: retrain the oracle once more in this run, timed beside the "
                        "methods (the cached oracle's wall time was measured elsewhere)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the embedded models are too small to gain "
                        "from more; results do not depend on it beyond float rounding)")
    parser.epilog = "metrics:\n" + "\n".join(f"  {k}: {v}" for k, v in METRIC_HELP.items())
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _fail(message: str) -> int:
    print(f"fedunlearn bench: {message}", file=sys.stderr)
    return 2


def _method_list(text: str, scenario: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if names != ["all"]:
        return names
    return methods_serving(build_scenario(scenario, 0))


def run(args: argparse.Namespace) -> int:
    """Run ``fedunlearn bench``; returns the exit status (2 on a usage error, before training)."""
    try:
        seeds = ([int(s) for s in args.seed_list.split(",") if s.strip()] if args.seed_list
                 else list(range(args.seeds)))
    except ValueError:
        return _fail(f"--seed-list {args.seed_list!r}: expected integers separated by commas")
    if not seeds:
        return _fail("give at least one seed (--seeds N with N >= 1, or --seed-list)")
    if args.num_clients < 0 or args.rounds < 0:
        return _fail("--num-clients and --rounds must be 0 (the scenario's) or positive")
    try:
        names = _method_list(args.methods, args.scenario)
        if not names:
            return _fail("--methods names no method")
        settings = parse_settings(args.settings)
        stray = sorted(set(settings) - set(names))
        if stray:
            return _fail(f"--set names method(s) {stray} that are not in --methods")
        methods = resolve_methods([(name, settings.get(name, {})) for name in names])
        first = build_scenario(args.scenario, seeds[0], args.full).restricted(args.num_clients, args.rounds)
        for method in methods:
            check_granularity(method, first.request)
            check_scenario(method, first)
    except (MethodSettingError, ForgetRequestError, ValueError) as exc:
        return _fail(str(exc))
    import torch

    torch.set_num_threads(max(1, args.threads))
    if build_scenario(args.scenario, seeds[0], args.full).sequence:
        return _run_sequence(args, methods, seeds)
    result = compare(args.scenario, methods, seeds, args.full, args.num_clients, args.rounds,
                     progress=not args.no_progress, timing=args.timing)
    table = result.table(costs=("steps", "comm", "time") if args.timing else ("steps", "comm"))
    print(table)
    if args.out:
        result.save(args.out)
        args.out.with_suffix(".md").write_text(table + "\n")
        pareto_plot(result, args.out.with_suffix(".png"))
        print(f"wrote {args.out}, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}")
    return 0


def _run_sequence(args: argparse.Namespace, methods, seeds: list[int]) -> int:
    if args.num_clients:
        return _fail(f"--num-clients does not apply to {args.scenario!r} (its requests name clients 0-3)")
    steps = compare_sequential(args.scenario, methods, seeds, args.full, args.rounds, progress=not args.no_progress)
    text = "\n\n".join(f"### Request {k + 1}: clients {steps[k].per_seed[0]['forgotten']} forgotten\n\n"
                         + steps[k].table() for k in range(len(steps)))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for k, step in enumerate(steps):
            step.save(args.out.with_name(f"{args.out.stem}-{k + 1}{args.out.suffix or '.json'}"))
        args.out.with_suffix(".md").write_text(text + "\n")
        sequence_plot(steps, args.out.with_suffix(".png"))
        print(f"wrote {args.out.stem}-1..{len(steps)} JSON, {args.out.with_suffix('.md')}, {args.out.with_suffix('.png')}")
    return 0
