"""The derived documentation fragments (taxonomy, bibliography, entry card, cite block)."""

from __future__ import annotations

from pathlib import Path

import bibtexparser

from fedunlearn import catalog, references, sitegen

ENTRY = catalog.Entry(
    slug="federaser",
    family="incremental",
    title="FedEraser",
    citation_keys=("liu2021federaser",),
    summary="Calibrate stored updates | cheaply.",
    implementation="fedunlearn.incremental.federaser",
)
PAGE = "entries/incremental/federaser.md"


def test_link_is_relative_and_only_to_existing_files() -> None:
    existing = {"bibliography.md", PAGE}
    assert sitegen.link("x", "bibliography.md", PAGE, existing, "k") == (
        "[x](../../bibliography.md#k)"
    )
    assert sitegen.link("x", "notebooks/a/b.py", PAGE, existing) == "x"


def test_entry_card_links_the_other_places() -> None:
    existing = {
        PAGE,
        "bibliography.md",
        "taxonomy.md",
        sitegen.notebook_page(ENTRY.notebook),
        sitegen.api_page(ENTRY.implementation),
    }
    card = sitegen.entry_card_markdown(ENTRY, PAGE, existing)
    assert card.startswith('!!! info "Entry card"')
    assert "(../../bibliography.md#liu2021federaser)" in card
    assert "(../../taxonomy.md#incremental)" in card
    assert "(../../notebooks/incremental/federaser.ipynb)" in card
    assert "(../../api/fedunlearn.incremental.federaser.md)" in card
    assert "`implementations/fedunlearn/incremental/federaser.py`" in card
    assert "`tests/incremental/test_federaser.py`" in card


def test_cite_block_holds_parseable_bibtex() -> None:
    block = sitegen.cite_block_markdown(["liu2021federaser", "cao2023fedrecover"])
    assert block.startswith('??? quote "Cite this"')
    lines = block.splitlines()
    start, end = lines.index("    ```bibtex"), len(lines) - 1
    assert lines[end] == "    ```"
    body = "\n".join(line[4:] for line in lines[start + 1 : end])
    keys = [e.key for e in bibtexparser.parse_string(body).entries]
    assert keys == ["liu2021federaser", "cao2023fedrecover"]


def test_taxonomy_has_every_family_and_escapes_cells() -> None:
    text = sitegen.taxonomy_markdown([ENTRY], {PAGE, "bibliography.md"})
    for family, title in catalog.FAMILIES.items():
        assert f"## {title} {{#{family}}}" in text
    assert "[FedEraser](entries/incremental/federaser.md)" in text
    assert "Calibrate stored updates \\| cheaply." in text
    assert text.count("*No entry in this family yet.*") == len(catalog.FAMILIES) - 1


def test_a_family_links_its_side_by_side_page_only_when_it_exists() -> None:
    side_by_side = sitegen.family_notebook("incremental")
    assert side_by_side == "notebooks/harness/incremental-family.ipynb"
    without = sitegen.taxonomy_markdown([ENTRY], {PAGE, "bibliography.md"})
    assert "its own page" not in without
    with_page = sitegen.taxonomy_markdown([ENTRY], {PAGE, "bibliography.md", side_by_side})
    assert "[its own page](notebooks/harness/incremental-family.ipynb)" in with_page


def test_bibliography_anchors_every_key() -> None:
    library = references.load_library()
    text = sitegen.bibliography_markdown(library, [ENTRY], {PAGE})
    for key in library:
        assert f"## `{key}` {{ #{key} }}" in text
    assert "Cited by: [FedEraser](entries/incremental/federaser.md)." in text


def test_insert_after_title() -> None:
    assert sitegen.insert_after_title("# T\n\nbody\n", "CARD\n") == "# T\n\nCARD\n\nbody\n"
    assert sitegen.insert_after_title("body\n", "CARD\n") == "CARD\n\nbody\n"


def test_page_entry_slug(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("---\ntitle: X\nentry: 'federaser'\n---\n# X\n", encoding="utf-8")
    assert sitegen.page_entry_slug(page) == "federaser"
    page.write_text("# X\nentry: federaser\n", encoding="utf-8")
    assert sitegen.page_entry_slug(page) is None


def test_api_modules_cover_the_package() -> None:
    modules = sitegen.api_modules()
    assert {"fedunlearn", "fedunlearn.catalog", "fedunlearn.references"} <= set(modules)
    assert "fedunlearn.__main__" not in modules


def test_notebook_pages_and_downloads_sit_under_notebooks() -> None:
    assert sitegen.notebook_page("notebooks/incremental/federaser.py") == "notebooks/incremental/federaser.ipynb"
    assert sitegen.notebook_download("notebooks/incremental/federaser.py") == (
        "notebooks/incremental/federaser/federaser.py")


def test_explorer_lists_each_method_with_its_facets_for_the_filter() -> None:
    """One row per method of the entries and per family control, its facets in data attributes the
    page's script filters on, and one checkbox per value seen; the script ships with the site."""
    entries = catalog.entries()
    text = sitegen.explorer_markdown(entries, "taxonomy.md", {e.page for e in entries})
    methods = [name for entry in entries for name in entry.methods]
    methods += [name for names in catalog.family_controls().values() for name in names]
    rows = [line for line in text.splitlines() if 'class="fu-facets"' in line]
    assert len(rows) == len(methods)
    for name in methods:
        assert sum(f"`{name}`" in row for row in rows) == 1
    sisa = next(row for row in rows if "`sisa`" in row)
    assert 'data-exactness="exact"' in sisa and 'data-models="digits network"' in sisa
    fedrecovery = next(row for row in rows if "`fedrecovery`" in row)
    assert 'data-guarantee="differential privacy"' in fedrecovery and 'data-workers="server only"' in fedrecovery
    assert 'data-facet="history" value="needs stored history"' in text
    repo = catalog.repo_root()
    assert (repo / "docs" / "javascripts" / "explorer.js").is_file()
    assert "javascripts/explorer.js" in (repo / "mkdocs.yml").read_text(encoding="utf-8")


def test_every_registered_method_says_who_does_the_work() -> None:
    from fedunlearn.unlearning.registry import available_methods

    silent = [name for name, cls in available_methods().items() if not cls.workers and name != "do-nothing"]
    assert silent == []


def test_bibliography_links_a_bibtex_download_per_family_with_entries() -> None:
    fedavg = catalog.Entry(slug="fedavg", family="foundations", title="FedAvg",
                           citation_keys=("mcmahan2017communication",), summary="s",
                           implementation="fedunlearn.foundations.fedavg")
    entries = [fedavg, ENTRY]
    downloads = sitegen.family_bibtex_files(entries)
    assert list(downloads) == ["bibliography/foundations.bib", "bibliography/incremental.bib"]
    for path, family in (("bibliography/foundations.bib", "foundations"),
                         ("bibliography/incremental.bib", "incremental")):
        keys = [e.key for e in bibtexparser.parse_string(downloads[path]).entries]
        assert keys == catalog.citation_keys_of(entries, family)  # what cite --family prints
    existing = {PAGE, "taxonomy.md", *downloads}
    text = sitegen.bibliography_markdown(references.load_library(), entries, existing)
    assert "[download BibTeX](bibliography/foundations.bib)" in text
    assert "[download BibTeX](bibliography/incremental.bib)" in text
    assert "`fedunlearn cite --family incremental` prints the same" in text
    assert "bibliography/perturbation.bib" not in text  # no entry in that family: no download
    assert text.index("download BibTeX") < text.index("## `")  # above the records
    # a download that is not in the build is named, not linked (the strict build stays green)
    assert "[download BibTeX]" not in sitegen.bibliography_markdown(
        references.load_library(), entries, {PAGE, "taxonomy.md"})
