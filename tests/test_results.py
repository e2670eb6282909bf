"""Reproduced numbers travel from a notebook's Results to its page, never typed in."""

from __future__ import annotations

import pytest

from fedunlearn import results
from fedunlearn.catalog import ReportedClaim


def test_saved_items_fill_the_placeholders(tmp_path):
    saved = results.Results("toy")
    saved.value("rho", 0.2049, "{:.2f}")
    saved.add("table", "| a |\n|---|\n| 1 |")
    saved.claims("claims", [(ReportedClaim("speed-up", "4x", "Abstract"), "5.0x fewer steps", "holds")])
    saved.save(tmp_path)
    items = results.load("toy", tmp_path)
    page = "# Toy\n\nρ is {{ results.rho }}.\n\n{{results.table}}\n\n{{ results.claims }}\n"
    out = results.render(page, items, "docs/toy.md")
    assert "ρ is 0.20." in out and "| 1 |" in out
    assert "| speed-up | 4x | Abstract | 5.0x fewer steps | holds |" in out


def test_a_missing_item_names_the_page_line_and_what_exists(tmp_path):
    with pytest.raises(results.ResultsError, match=r"docs/toy.md:3: no result 'gap' \(the notebook saved: rho\)"):
        results.render("# T\n\n{{ results.gap }}\n", {"rho": "1"}, "docs/toy.md")
    with pytest.raises(results.ResultsError, match="no results saved"):
        results.load("absent", tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(results.ResultsError, match="unreadable"):
        results.load("broken", tmp_path)
    with pytest.raises(ValueError, match="result name"):
        results.Results("toy").add("has space", "x")


def test_typed_numbers_in_the_case_study_are_found():
    page = "\n".join([
        "## Overview", "reported 4.5x speed-up", "## Case study", "rounds: 20, lr in `0.05`, $r = 0.5$",
        "test accuracy 0.91 against −2.5 points; {{ results.gap }}", "```", "0.33 in code", "```",
        "## Limitations", "0.7 here is fine"])
    assert results.typed_numbers(page) == [(5, "0.91"), (5, "−2.5")]
