"""Reproduced numbers, from the notebook that computed them to the page that shows them.

A notebook collects what its entry page reports in a
[`Results`][fedunlearn.results.Results] (tables, values, the reported-vs-reproduced table of
the entry's claims) and saves it as JSON; the docs build executes the notebook and replaces each
``{{ results.NAME }}`` on the entry's page with the saved item. A page therefore never carries a
reproduced number typed by hand, and a page that names an item the notebook did not save fails
the strict build. ``fedunlearn check`` flags decimal numbers typed into an entry page's *Case
study* section.

Results go to ``$FEDUNLEARN_RESULTS_DIR/<slug>.json`` (the docs build sets it), else
``$FEDUNLEARN_CACHE/results/``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from fedunlearn.paths import cache_dir

#: A placeholder on a page: ``{{ results.NAME }}``.
PLACEHOLDER = re.compile(r"\{\{\s*results\.([A-Za-z0-9_-]+)\s*\}\}")


def results_dir() -> Path:
    """Where notebooks save results: ``$FEDUNLEARN_RESULTS_DIR``, else the cache's ``results/``."""
    configured = os.environ.get("FEDUNLEARN_RESULTS_DIR")
    return Path(configured) if configured else cache_dir() / "results"


class ResultsError(Exception):
    """Results that are missing, unreadable or lack a named item."""


class Results:
    """The reproduced items of one notebook, keyed by name.

    Args:
        slug: The entry (or notebook) they belong to.
    """

    def __init__(self, slug: str) -> None:
        self.slug = slug
        self.items: dict[str, str] = {}

    def add(self, name: str, markdown: str) -> str:
        """Store a Markdown fragment (a table, a sentence, a formatted number); returns it.

        Raises:
            ValueError: On a name that a placeholder cannot spell.
        """
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"result name {name!r}: use letters, digits, '_' and '-'")
        self.items[name] = str(markdown)
        return self.items[name]

    def value(self, name: str, number: float, fmt: str = "{:.2f}") -> str:
        """Store ``number`` formatted with ``fmt``; returns the text."""
        return self.add(name, fmt.format(number))

    def claims(self, name: str, rows: Sequence[tuple[object, str, str]]) -> str:
        """Store the reported-vs-reproduced table of the entry's claims.

        Args:
            name: Item name (e.g. ``"claims"``).
            rows: ``(claim, reproduced, verdict)`` per claim, where ``claim`` is a
                [`ReportedClaim`][fedunlearn.catalog.ReportedClaim] and ``verdict`` says whether
                it holds here (e.g. "holds", "does not hold", "not informative here").
        """
        lines = ["| claim | reported | where | reproduced here | verdict |", "|---|---|---|---|---|"]
        for claim, reproduced, verdict in rows:
            cells = (claim.claim, claim.reported, claim.where, reproduced, verdict)
            lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        return self.add(name, "\n".join(lines))

    def save(self, directory: str | Path | None = None) -> Path:
        """Write ``<slug>.json`` atomically; returns its path."""
        target = Path(directory) if directory is not None else results_dir()
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{self.slug}.json"
        tmp = target / f".{self.slug}.json.tmp"
        tmp.write_text(json.dumps({"slug": self.slug, "items": self.items}, indent=1, sort_keys=True))
        tmp.replace(path)
        return path


def load(slug: str, directory: str | Path | None = None) -> dict[str, str]:
    """The items a notebook saved for ``slug``.

    Raises:
        ResultsError: If the file is missing or unreadable.
    """
    path = (Path(directory) if directory is not None else results_dir()) / f"{slug}.json"
    try:
        data = json.loads(path.read_text())
        return dict(data["items"])
    except FileNotFoundError as exc:
        raise ResultsError(f"{path}: no results saved (did the notebook call Results.save()?)") from exc
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ResultsError(f"{path}: unreadable results ({exc})") from exc


def render(markdown: str, items: dict[str, str], where: str) -> str:
    """Replace every ``{{ results.NAME }}`` of ``markdown`` with its item.

    Raises:
        ResultsError: Naming the page (``where``), its line and the missing item.
    """
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in items:
            line = markdown.count("\n", 0, match.start()) + 1
            known = ", ".join(sorted(items)) or "none"
            raise ResultsError(f"{where}:{line}: no result {name!r} (the notebook saved: {known})")
        return items[name]

    return PLACEHOLDER.sub(replace, markdown)


def typed_numbers(markdown: str, section: str = "Case study") -> list[tuple[int, str]]:
    """Decimal numbers written into a page's ``## <section>`` outside placeholders, code and math.

    Returns:
        ``(line number, text)`` for each; a reproduced number belongs in a placeholder.
    """
    lines = markdown.splitlines()
    found, inside, fence = [], False, False
    for number, line in enumerate(lines, start=1):
        if line.startswith("## "):
            inside = line[3:].strip().lower() == section.lower()
            continue
        if line.lstrip().startswith("```"):
            fence = not fence
        if not inside or fence:
            continue
        text = PLACEHOLDER.sub("", line)
        text = re.sub(r"`[^`]*`|\$[^$]*\$", "", text)
        for match in re.finditer(r"(?<![\w.])[−-]?\d+\.\d+", text):
            found.append((number, match.group(0)))
    return found
