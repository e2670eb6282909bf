"""Markdown for the derived parts of the documentation site.

The docs build (``docs/_hooks/fedunlearn_site.py``, a MkDocs hook) calls these functions to write
the taxonomy page, the bibliography page and its per-family BibTeX downloads, one API page per
module, and each entry page's *entry card* and *cite this* block. They are plain functions of the
catalog and ``references/`` (no MkDocs import), so what the site shows is derived, never typed
twice, and testable without a build.

Paths are "docs paths": relative to ``docs/`` as MkDocs sees them, including generated files
(``taxonomy.md``, ``bibliography.md``, ``api/<module>.md``, ``notebooks/<family>/<slug>.ipynb``).
Links are only written to docs paths that exist in the build (``existing``); anything else is
shown as plain text, so an entry still in progress does not break a strict build.
"""

from __future__ import annotations

import pkgutil
import posixpath
import re
from collections.abc import Collection, Iterable
from pathlib import Path

from fedunlearn.catalog import FAMILIES, FAMILY_DESCRIPTIONS, Entry, citation_keys_of
from fedunlearn.references import Reference, format_bibtex, format_citation, links

TAXONOMY_PAGE = "taxonomy.md"
BIBLIOGRAPHY_PAGE = "bibliography.md"

_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)
_ENTRY_LINE = re.compile(r"^entry:\s*['\"]?([\w.-]+)['\"]?\s*$", re.MULTILINE)


def page_entry_slug(path: Path) -> str | None:
    """The ``entry:`` value of a Markdown page's YAML front matter, or None.

    Args:
        path: A Markdown file.
    """
    match = _FRONT_MATTER.match(path.read_text(encoding="utf-8"))
    if not match:
        return None
    slug = _ENTRY_LINE.search(match.group(1))
    return slug.group(1) if slug else None


def api_modules(package: str = "fedunlearn") -> list[str]:
    """Every module of the package (dotted names, sorted), except ``__main__``."""
    root = __import__(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return sorted(names)


def api_page(module: str) -> str:
    """Docs path of a module's API page (``api/fedunlearn.catalog.md``)."""
    return f"api/{module}.md"


def api_page_markdown(module: str) -> str:
    """The API page of one module: a mkdocstrings directive."""
    return f"# `{module}`\n\n::: {module}\n"


def link(label: str, target: str, page: str, existing: Collection[str], anchor: str = "") -> str:
    """A Markdown link from docs path ``page`` to docs path ``target``, or plain text if absent.

    Args:
        label: Link text (Markdown).
        target: Docs path linked to.
        page: Docs path of the page the link is written on.
        existing: Docs paths present in the build.
        anchor: Optional ``#fragment`` without the ``#``.
    """
    if target not in existing:
        return label
    relative = posixpath.relpath(target, posixpath.dirname(page) or ".")
    return f"[{label}]({relative}{'#' + anchor if anchor else ''})"


def _citations(keys: Iterable[str], page: str, existing: Collection[str]) -> str:
    return ", ".join(
        link(f"`{key}`", BIBLIOGRAPHY_PAGE, page, existing, anchor=key) for key in keys
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def notebook_page(source: str) -> str:
    """Docs path of the executed page of a notebook (``notebooks/f/s.py`` -> ``notebooks/f/s.ipynb``)."""
    return source[: -len(".py")] + ".ipynb"


def notebook_download(source: str) -> str:
    """Docs path of a notebook's source, published beside its page (``notebooks/f/s/s.py``)."""
    stem = posixpath.splitext(source)[0]
    return f"{stem}/{posixpath.basename(source)}"


#: The executed page that compares every registered method on every scenario it serves.
COMPARE_NOTEBOOK = notebook_page("notebooks/harness/compare.py")


def family_notebook(family: str) -> str:
    """The page of the notebook that compares a family's methods side by side (it may not exist)."""
    return notebook_page(f"notebooks/harness/{family}-family.py")


#: The explorer's facet columns: facet name -> column heading.
FACET_HEADINGS = {"granularity": "Forgets", "exactness": "Exact?", "guarantee": "Guarantee",
                  "history": "Stored history", "workers": "Who works", "models": "Models",
                  "flower": "Flower"}


def _facet_attribute(values: Iterable[str]) -> str:
    return "|".join(values).replace('"', "&quot;")


def explorer_markdown(entries: list[Entry], page: str, existing: Collection[str]) -> str:
    """The taxonomy explorer: every entry's method and every family control, one row each, with
    its facets, and checkbox filters (``javascripts/explorer.js`` hides the rows that match no
    chosen value of some facet)."""
    from fedunlearn.catalog import family_controls
    from fedunlearn.unlearning.base import facets
    from fedunlearn.unlearning.registry import available_methods

    methods = available_methods()
    rows: list[tuple[str, str, str, dict[str, tuple[str, ...]]]] = []
    for entry in entries:
        for name in entry.methods:
            rows.append((name, link(_cell(entry.title), entry.page, page, existing), FAMILIES[entry.family],
                         facets(methods[name])))
    for family, names in family_controls().items():
        for name in names:
            rows.append((name, "family control (no entry)", FAMILIES[family], facets(methods[name])))
    if not rows:
        return ""
    values: dict[str, list[str]] = {facet: [] for facet in FACET_HEADINGS}
    for *_, row_facets in rows:
        for facet, found in row_facets.items():
            values[facet] += [v for v in found if v not in values[facet]]
    values = {facet: sorted(found) for facet, found in values.items()}
    filters = ['<form class="fu-explorer-filters" aria-label="Filter the methods">']
    for facet, heading in FACET_HEADINGS.items():
        boxes = "".join(f'<label><input type="checkbox" data-facet="{facet}" value="{_facet_attribute([v])}"> '
                        f"{v}</label>" for v in values[facet])
        filters.append(f'<fieldset><legend>{heading}</legend>{boxes}</fieldset>')
    filters.append('<p class="fu-explorer-count" aria-live="polite"></p></form>')
    lines = ['<div class="fu-explorer" markdown>', "", "".join(filters), "",
             "| Method | Entry | Family | " + " | ".join(FACET_HEADINGS.values()) + " |",
             "|---" * (3 + len(FACET_HEADINGS)) + "|"]
    for name, entry_link, family, row_facets in rows:
        data = " ".join(f'data-{facet}="{_facet_attribute(found)}"' for facet, found in row_facets.items())
        cells = [f'<span class="fu-facets" {data}></span>`{name}`', entry_link, family,
                 *(", ".join(row_facets[facet]) or "—" for facet in FACET_HEADINGS)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "</div>", ""]
    return "\n".join(lines)


def taxonomy_markdown(entries: list[Entry], existing: Collection[str]) -> str:
    """The taxonomy page: every family, its description and a table of its entries."""
    page = TAXONOMY_PAGE
    lines = [
        "---",
        "hide:",
        "  - toc",  # the explorer's table needs the width; the families are in the navigation
        "---",
        "",
        "# Taxonomy",
        "",
        (
            "The three unlearning families follow the survey by Qu et al. "
            f"({link('`qu2024federated`', BIBLIOGRAPHY_PAGE, page, existing, 'qu2024federated')}); "
            "*foundations* holds the federated-learning methods they build on. This page is "
            "generated from the catalog: an entry appears here as soon as its module declares "
            "`ENTRY`."
        ),
        "",
    ]
    explorer = explorer_markdown(entries, page, existing)
    if explorer:
        lines += [
            "## Explorer {#explorer}",
            "",
            "Every method of every entry, and each family's control, with the facets its "
            "registration declares: what it forgets, whether it is exact, what it guarantees, "
            "whether it needs the stored training history, who does the unlearning work (the "
            "server on states it holds, the client holding the forgotten data, the remaining "
            "clients), which models it runs on, and whether it runs on Flower. Tick values to "
            "keep only the methods that have one of the ticked values in every facet you filter.",
            "",
            explorer,
        ]
    for family, title in FAMILIES.items():
        members = [e for e in entries if e.family == family]
        lines += [f"## {title} {{#{family}}}", "", FAMILY_DESCRIPTIONS.get(family, ""), ""]
        if not members:
            lines += ["*No entry in this family yet.*", ""]
            continue
        lines += [
            "| Entry | Cites | Summary | Notebook | API |",
            "|---|---|---|---|---|",
        ]
        for entry in members:
            lines.append(
                "| "
                + " | ".join(
                    [
                        link(_cell(entry.title), entry.page, page, existing),
                        _citations(entry.citation_keys, page, existing),
                        _cell(entry.summary),
                        link("notebook", notebook_page(entry.notebook), page, existing),
                        link(
                            f"`{entry.implementation}`",
                            api_page(entry.implementation),
                            page,
                            existing,
                        ),
                    ]
                )
                + " |"
            )
        lines.append("")
        side_by_side = family_notebook(family)
        if side_by_side in existing:
            lines += [
                f"The family's methods and its control are compared side by side, on digits and on the "
                f"federated language model, on {link('its own page', side_by_side, page, existing)} "
                "(tables and a utility-vs-forgetting plot with the retrain band, computed when the "
                "site is built).",
                "",
            ]
        elif any(e.methods for e in members):
            comparison = link("Compare", COMPARE_NOTEBOOK, page, existing)
            lines += [
                f"The methods of this family are compared side by side against the retrain oracle "
                f"on the {comparison} page (table and Pareto plot computed when the site is built).",
                "",
            ]
    return "\n".join(lines)


def family_bibtex_page(family: str) -> str:
    """Docs path of the BibTeX download of a family's records (``bibliography/<family>.bib``)."""
    return f"bibliography/{family}.bib"


def family_bibtex_files(entries: list[Entry], root: Path | None = None) -> dict[str, str]:
    """Docs path -> BibTeX of the records cited by each family's entries (families without
    entries have none): the text ``fedunlearn cite --family FAMILY`` prints.

    Args:
        entries: The catalog's entries.
        root: The references folder; defaults to the checkout's ``references/``.

    Raises:
        KeyError: For a cited key without a record.
        ReferenceProblem: When the bibliography itself is broken.
    """
    files = {}
    for family in FAMILIES:
        keys = citation_keys_of(entries, family)
        if keys:
            files[family_bibtex_page(family)] = format_bibtex(keys, root)
    return files


def bibliography_markdown(
    library: dict[str, Reference], entries: list[Entry], existing: Collection[str]
) -> str:
    """The bibliography page: a BibTeX download per family with entries, then every record under a
    heading whose anchor is its key."""
    page = BIBLIOGRAPHY_PAGE
    cited_by: dict[str, list[Entry]] = {}
    for entry in entries:
        for key in entry.citation_keys:
            cited_by.setdefault(key, []).append(entry)
    lines = [
        "# Bibliography",
        "",
        (
            "Every record of `references/` (one BibTeX file per key, the key being the file "
            "name). `fedunlearn cite KEY` prints a record's BibTeX."
        ),
        "",
    ]
    downloads = []
    for family, title in FAMILIES.items():
        keys = citation_keys_of(entries, family)
        if keys:
            target = family_bibtex_page(family)
            label = link("download BibTeX", target, page, existing)
            downloads.append(f"- {link(title, TAXONOMY_PAGE, page, existing, family)}: {label} "
                             f"(`{posixpath.basename(target)}`, {len(keys)} record{'s' if len(keys) > 1 else ''}; "
                             f"`fedunlearn cite --family {family}` prints the same)")
    if downloads:
        lines += ["The records cited by each family's entries, as one BibTeX file per family:", "",
                  *downloads, ""]
    for key, reference in library.items():
        urls = " · ".join(f"[{label}]({url})" for label, url in links(reference))
        lines += [f"## `{key}` {{ #{key} }}", "", format_citation(reference), ""]
        if urls:
            lines += [urls, ""]
        users = cited_by.get(key, [])
        if users:
            names = ", ".join(link(_cell(e.title), e.page, page, existing) for e in users)
            lines += [f"Cited by: {names}.", ""]
    return "\n".join(lines)


def entry_card_markdown(entry: Entry, page: str, existing: Collection[str]) -> str:
    """The card placed at the top of an entry page: family, citations and the four other places."""
    source = entry.implementation.replace(".", "/")
    source = f"implementations/{source}.py"
    rows = [
        (
            "Family",
            link(
                FAMILIES.get(entry.family, entry.family),
                TAXONOMY_PAGE,
                page,
                existing,
                entry.family,
            ),
        ),
        ("Cites", _citations(entry.citation_keys, page, existing)),
        (
            "Implementation",
            link(f"`{entry.implementation}`", api_page(entry.implementation), page, existing)
            + f" (source: `{source}`)",
        ),
        (
            "Notebook",
            link("rendered and executed", notebook_page(entry.notebook), page, existing)
            + f" (source: `{entry.notebook}`)",
        ),
        ("Tests", f"`{entry.test}`"),
    ]
    body = "\n".join(f"    - **{name}:** {value}" for name, value in rows)
    return f'!!! info "Entry card"\n\n{body}\n'


def cite_block_markdown(keys: Iterable[str], root: Path | None = None) -> str:
    """A collapsed *cite this* admonition holding the BibTeX of ``keys``."""
    bibtex = format_bibtex(list(keys), root)
    indented = "\n".join(f"    {line}" if line else "" for line in bibtex.splitlines())
    return f'??? quote "Cite this"\n\n    ```bibtex\n{indented}\n    ```\n'


def insert_after_title(markdown: str, block: str) -> str:
    """Insert ``block`` after the page's first ``# `` heading (or at the top if it has none)."""
    match = re.search(r"^# .*$", markdown, re.MULTILINE)
    if match is None:
        return f"{block}\n{markdown}"
    end = match.end()
    return f"{markdown[:end]}\n\n{block}\n{markdown[end:].lstrip(chr(10))}"


#: A generated snippet on a hand-written page: ``{{ generated.NAME }}``.
GENERATED = re.compile(r"\{\{\s*generated\.([a-z_]+)\s*\}\}")


def tolerance_table() -> str:
    """The retrain-equivalence tolerances (``TOLERANCES``) as a Markdown table."""
    from fedunlearn.unlearning.compare import TOLERANCES

    rows = [f"| metrics containing `{key}` | {value:g} |" for key, value in TOLERANCES.items()]
    return "\n".join(["| metric family | tolerance |", "|---|---|", *rows])


def methods_table(entries: list[Entry], page: str, existing: Collection[str]) -> str:
    """Every registered method: entry, request kinds, history, start of a later request, settings with defaults."""
    from dataclasses import asdict

    from fedunlearn.unlearning.registry import available_methods

    owner = {name: e for e in entries for name in e.methods}
    lines = ["| method | entry | requests | history needed | next request starts from | settings (defaults) |",
             "|---|---|---|---|---|---|"]
    for name, cls in available_methods().items():
        method = cls()
        entry = owner.get(name)
        where = link(_cell(entry.title), entry.page, page, existing) if entry else "control"
        every = method.history_interval()
        history = "none" if every is None else f"every {every} round(s)"
        settings = ", ".join(f"`{k}={v}`" for k, v in asdict(method.config).items()) or "none"
        start = "θ_o (cumulative request)" if cls.sequential_start == "original" else "its last model"
        lines.append(f"| `{name}` | {where} | {', '.join(sorted(cls.granularities))} | {history} | {start} | {settings} |")
    return "\n".join(lines)


def render_generated(markdown: str, entries: list[Entry], page: str, existing: Collection[str]) -> str:
    """Replace ``{{ generated.tolerances }}`` and ``{{ generated.methods }}``.

    Raises:
        KeyError: On an unknown snippet name.
    """
    snippets = {"tolerances": lambda: tolerance_table(), "methods": lambda: methods_table(entries, page, existing)}

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in snippets:
            raise KeyError(f"{page}: unknown snippet generated.{name}; known: {', '.join(snippets)}")
        return snippets[name]()

    return GENERATED.sub(replace, markdown)
