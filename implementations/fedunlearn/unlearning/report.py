r"""Result tables for pages that put many methods side by side (the Compare page).

One [`Comparison`][fedunlearn.unlearning.compare.Comparison] becomes an HTML table whose columns
are grouped (forgetting, utility, cost) and whose rows are grouped by family (the harness's
controls first, then each family's methods and its family control), so that a table of fifteen
methods fits the page and reads by family. Each cell holds the median over seeds and, on a second
line, the gap to $\theta_r$ of the same seed and, when more than one seed ran, the range
[min, max]; ✓ marks a median gap within the retrain band, ✗ one outside it. The numbers are the
comparison's own; nothing here computes a metric.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from fedunlearn import catalog
from fedunlearn.unlearning.compare import METRIC_HELP, OWN_ORACLE_NOTE, Comparison
from fedunlearn.unlearning.registry import CONTROLS

#: Row groups, in page order: the harness's controls, then the catalog's families.
FAMILY_TITLES = {"controls": "Controls", **catalog.FAMILIES}


def family_of(label: str) -> str:
    """The family of a method label (``"name"`` or ``"name(setting=value)"``): ``"controls"`` for
    the harness's controls, else the family of the entry or family control that registers it."""
    name = label.split("(", 1)[0]
    if name in CONTROLS:
        return "controls"
    for family, names in catalog.family_controls().items():
        if name in names:
            return family
    for entry in catalog.entries():
        if name in entry.methods:
            return entry.family
    return "controls"


def metric_help(metric: str) -> str:
    """The one-line meaning of a metric (``METRIC_HELP``), or the metric's name."""
    for key, text in METRIC_HELP.items():
        names = [k.strip() for k in key.split("/")]
        if metric in names or any(k.endswith("*") and metric.startswith(k[:-1]) for k in names):
            return text
    return metric


def _range(values: dict, digits: int) -> str:
    return f"[{values['min']:.{digits}f}, {values['max']:.{digits}f}]"


def grouped_table(result: Comparison, forgetting: Sequence[str], utility: Sequence[str],
                  costs: Sequence[str] = ("steps", "comm")) -> str:
    r"""An HTML table of ``result``: forgetting, utility and cost columns under group headings,
    rows grouped by family, a caption saying seeds, marks and bands.

    Args:
        result: The comparison.
        forgetting: Forgetting metrics (judged against $\theta_r$).
        utility: Utility metrics.
        costs: Cost ratios to show (``steps``, ``comm``, ``time``), each over retraining's.

    Raises:
        ValueError: If the comparison lacks one of the metrics (named, with those it has).
    """
    agg = result.aggregate
    many = len(result.seeds) > 1
    columns = [*forgetting, *utility]
    unknown = [m for m in columns if m not in agg["oracle"]]
    if unknown:
        raise ValueError(f"{result.scenario} has no metric {', '.join(unknown)}; it has {', '.join(agg['oracle'])}")

    def cell(main: str, detail: str = "", mark: str = "") -> str:
        small = f"<br><small>{detail}</small>" if detail else ""
        return f"<td>{main}{mark}{small}</td>"

    def reference(values: dict, note: str = "") -> str:
        detail = " ".join(x for x in (_range(values, 3) if many else "", note) if x)
        return cell(f"{values['median']:.3f}", detail)

    head = ['<tr><th rowspan="2">model</th>',
            f'<th colspan="{len(forgetting)}">forgetting (gap to θ_r)</th>' if forgetting else "",
            f'<th colspan="{len(utility)}">utility (gap to θ_r)</th>' if utility else "",
            f'<th colspan="{len(costs)}">cost ÷ retraining</th></tr><tr>' if costs else "</tr><tr>"]
    head += [f'<th title="{html.escape(metric_help(m))}">{m}</th>' for m in columns]
    head += [f'<th title="{html.escape(metric_help("rho_" + c))}">ρ_{c}</th>' for c in costs]
    head.append("</tr>")
    width = 1 + len(columns) + len(costs)
    body = ["<tr class=\"fu-reference\"><td>θ_r (retrain)</td>"
            + "".join(reference(agg["oracle"][m]) for m in columns) + "<td>1</td>" * len(costs) + "</tr>",
            "<tr class=\"fu-reference\"><td>θ_o (original)</td>"
            + "".join(reference(agg["original"][m], "" if agg["informative"][m] else "n.i.") for m in columns)
            + "<td>0</td>" * len(costs) + "</tr>"]
    groups: dict[str, list[str]] = {}
    for label in result.methods:
        groups.setdefault(family_of(label), []).append(label)
    own = False
    for family in sorted(groups, key=lambda f: list(FAMILY_TITLES).index(f) if f in FAMILY_TITLES else 99):
        body.append(f'<tr class="fu-family"><th colspan="{width}">{FAMILY_TITLES.get(family, family)}</th></tr>')
        for label in groups[family]:
            row = agg["methods"][label]
            mark = " †" if "own_oracle" in row else ""
            own = own or bool(mark)
            cells = []
            for m in columns:
                if m not in row["gaps"]:
                    cells.append(cell("–"))
                    continue
                gap = row["gaps"][m]["median"]
                detail = f"{gap:+.3f}" + (f" {_range(row['metrics'][m], 3)}" if many else "")
                cells.append(cell(f"{row['metrics'][m]['median']:.3f}", detail,
                                  " ✓" if row["retrain_equivalent"][m] else " ✗"))
            cells += [cell(f"{row[f'rho_{c}']['median']:.2f}", _range(row[f"rho_{c}"], 2) if many else "")
                      for c in costs]
            body.append(f"<tr><td><code>{html.escape(label)}</code>{mark}</td>{''.join(cells)}</tr>")
    seeds = ", ".join(map(str, result.seeds))
    caption = (f"<code>{html.escape(result.scenario)}</code>, "
               + (f"median over seeds {seeds}; second line: gap to θ_r of the same seed, then [min, max] over seeds"
                  if many else f"seed {seeds}; second line: gap to θ_r of the same seed")
               + f". ✓ within the retrain band {result.band_rule}, ✗ outside it; n.i. = not informative (θ_o already "
               "within the band). Hover a column for its meaning.")
    if own:
        caption += f" {OWN_ORACLE_NOTE}"
    # a class on the table: the theme's and the notebook renderer's rules for plain tables do not apply
    return (f'<div class="fu-compare"><table class="fu-table"><thead>{"".join(head)}</thead><tbody>{"".join(body)}</tbody></table>'
            f"<p class=\"fu-caption\">{caption}</p></div>")
