"""The Compare page's grouped tables and Pareto plots, on comparisons built by hand (no training)."""

from __future__ import annotations

import re

import pytest

from fedunlearn.unlearning.bench import pareto_plot
from fedunlearn.unlearning.compare import Comparison
from fedunlearn.unlearning.report import family_of, grouped_table, metric_help

#: One method per row group, listed out of family order on purpose.
METHODS = ["federaser", "do-nothing", "sisa", "pga-erasure", "negated-update"]


def _row(seed: int, gaps: dict[str, float], rho: dict[str, float]) -> dict:
    oracle = {"asr": 0.0, "mia_auc": 0.5, "test_acc": 0.9}
    return {"seed": seed, "oracle": oracle, "oracle_second_seed": dict(oracle),
            "original": {"asr": 0.6, "mia_auc": 0.7, "test_acc": 0.9},
            "methods": {label: {"metrics": {m: oracle[m] + g for m, g in gaps[label].items()},
                                "gaps": dict(gaps[label]),
                                **{f"rho_{k}": rho[label] for k in ("steps", "comm", "time")}}
                        for label in METHODS}}


def _comparison(seeds: int, asr_gap_of_sisa: float = 0.01) -> Comparison:
    gaps = {label: {"asr": 0.3, "mia_auc": 0.1, "test_acc": -0.01} for label in METHODS}
    gaps["sisa"] = {"asr": asr_gap_of_sisa, "mia_auc": 0.0, "test_acc": 0.0}
    rho = {"federaser": 0.5, "do-nothing": 0.0, "sisa": 0.2, "pga-erasure": 0.05, "negated-update": 0.1}
    rows = [_row(s, {k: {m: g + 0.01 * s for m, g in v.items()} for k, v in gaps.items()}, rho) for s in range(seeds)]
    return Comparison("digits-backdoor", list(range(seeds)), False, METHODS, rows)


def _group_order(table: str) -> list[str]:
    return re.findall(r'<tr class="fu-family"><th colspan="\d+">([^<]+)</th>', table)


def test_rows_are_grouped_controls_first_then_the_survey_families():
    table = grouped_table(_comparison(1), ["asr"], ["test_acc"])
    assert _group_order(table) == ["Controls", "Perturbation", "Model decomposition",
                                   "Incremental learning (retraining)"]
    assert family_of("negated-update") == "perturbation"  # a family control sits with its family
    assert family_of("pga-erasure(repair_rounds=0)") == "perturbation"  # a configured label too
    for label in METHODS:
        assert table.count(f"<code>{label}</code>") == 1


def test_column_groups_span_their_metrics_and_headings_explain_them():
    table = grouped_table(_comparison(1), ["asr", "mia_auc"], ["test_acc"], costs=("steps", "comm"))
    assert '<th colspan="2">forgetting (gap to θ_r)</th>' in table
    assert '<th colspan="1">utility (gap to θ_r)</th>' in table
    assert '<th colspan="2">cost ÷ retraining</th>' in table
    assert f'title="{metric_help("asr")}"' in table and "attack success rate" in metric_help("asr")
    assert "membership" in metric_help("mia_auc_loss")  # a starred family of names
    with pytest.raises(ValueError, match="digits-backdoor has no metric canary_exposure; it has asr, mia_auc"):
        grouped_table(_comparison(1), ["canary_exposure"], [])


def test_marks_follow_the_band_and_a_gap_outside_it_is_marked():
    inside, outside = grouped_table(_comparison(1), ["asr"], []), grouped_table(_comparison(1, 0.3), ["asr"], [])

    def sisa_cell(table: str) -> str:
        return re.search(r"<code>sisa</code></td><td>([^<]*)<", table).group(1)

    assert sisa_cell(inside).endswith("✓") and sisa_cell(outside).endswith("✗")


def test_spread_is_shown_only_when_several_seeds_ran():
    one, three = grouped_table(_comparison(1), ["asr"], []), grouped_table(_comparison(3), ["asr"], [])
    assert "[0.3" not in one and "seed 0;" in one
    # sisa's asr over seeds 0, 1, 2: gaps 0.01, 0.02, 0.03 -> values in [0.010, 0.030], median gap +0.020
    assert "+0.020 [0.010, 0.030]" in three and "median over seeds 0, 1, 2" in three


def test_pareto_plot_uses_a_legend_log_cost_and_seed_bars(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    path = pareto_plot(_comparison(3), tmp_path / "p.png", metric="asr", utility="test_acc")
    assert path.stat().st_size > 1000
    (fig,) = figures
    left, right = fig.axes
    assert left.get_xscale() == right.get_xscale() == "symlog"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [f"{k + 1} {label}" for k, label in enumerate(METHODS)]
    # every point is numbered, and no two numbers overlap although sisa's point and others crowd ρ 0..0.5
    for ax in (left, right):
        boxes = [t.get_window_extent() for t in ax.texts]
        assert sorted(t.get_text() for t in ax.texts) == sorted(str(k + 1) for k in range(len(METHODS)))
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    # the vertical bar of sisa spans its seeds' |gaps| 0.01 .. 0.03
    bars = [c for c in left.collections if c.get_segments()]
    spans = sorted(round(abs(seg[1][1] - seg[0][1]), 6) for c in bars for seg in c.get_segments()
                   if seg[0][0] == seg[1][0])
    assert pytest.approx(0.02) in spans
