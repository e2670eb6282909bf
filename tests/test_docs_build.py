"""The documentation site builds offline with ``mkdocs build --strict``, notebooks executed.

One build (a few minutes on a fresh cache: it executes every notebook at smoke size, in parallel)
serves the tests below; the build's notebook step, run again with nothing changed, must execute no
notebook.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedunlearn import catalog, references

pytestmark = pytest.mark.slow

REPO = catalog.repo_root()
ENTRIES = catalog.discover(strict=False)[0]
#: ipykernel's notice when a kernel runs over local TCP (as every nbclient kernel does); it comes
#: from the kernel process, not from MkDocs, and does not fail the strict build.
KERNEL_TCP_NOTICE = "[IPKernelApp] WARNING | Kernel is running over TCP without encryption"


def mkdocs_build(site: Path) -> str:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    log = result.stdout + result.stderr
    # the cause (a notebook that failed, with its output) comes before the warnings it leads to
    causes = [line for line in log.splitlines() if "ERROR" in line or "FAILED" in line or "Error" in line]
    assert result.returncode == 0, "\n".join(causes[:40]) + "\n...\n" + log[-6000:]
    return log


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    site = tmp_path_factory.mktemp("site")
    return site, mkdocs_build(site)


def test_a_rebuild_with_nothing_changed_executes_no_notebook(build) -> None:
    """The build's notebook step (the hook calls ``execute_all`` on every ``notebooks/*/*.py``),
    run again after the build: every notebook comes from the cache (a second whole site build
    would check the same step at the price of rendering every page again)."""
    from fedunlearn import notebook_runner

    sources = sorted((REPO / "notebooks").glob("*/*.py"))
    said: list[str] = []
    executed = notebook_runner.execute_all(sources, report=said.append)
    assert said == [f"notebooks: {len(sources)} of {len(sources)} unchanged (cached); executing 0, 1 at a time"]
    assert [run.seconds for run in executed] == [0.0] * len(sources)


def test_no_warnings(build: tuple[Path, str]) -> None:
    _, log = build
    warnings = [
        line
        for line in log.splitlines()
        if "WARNING" in line and not line.startswith(KERNEL_TCP_NOTICE)
    ]
    assert warnings == []


def test_no_notebook_page_publishes_stderr(build: tuple[Path, str]) -> None:
    """Progress bars and library warnings (stderr) never reach a published page."""
    site, _ = build
    pages = sorted((site / "notebooks").glob("*/*/index.html"))
    assert len(pages) == len(list((REPO / "notebooks").glob("*/*.py")))
    output = re.compile(r'<div [^>]*data-mime-type="application/vnd\.jupyter\.stderr"')  # not the CSS rule
    noisy = [p.parent.name for p in pages if output.search(p.read_text(encoding="utf-8"))]
    assert noisy == []


def test_taxonomy_lists_every_family_and_entry(build: tuple[Path, str]) -> None:
    site, _ = build
    page = (site / "taxonomy" / "index.html").read_text(encoding="utf-8")
    for family in catalog.FAMILIES:
        assert f'id="{family}"' in page
    for entry in ENTRIES:
        assert html.escape(entry.title, quote=False) in page


def test_bibliography_anchors_every_record(build: tuple[Path, str]) -> None:
    site, _ = build
    page = (site / "bibliography" / "index.html").read_text(encoding="utf-8")
    for key in references.load_library():
        assert f'id="{key}"' in page


def test_bibliography_offers_each_familys_bibtex_for_download(build: tuple[Path, str]) -> None:
    """The link on the Bibliography page resolves to a BibTeX file in the site, holding what
    ``fedunlearn cite --family`` prints."""
    from fedunlearn import sitegen

    site, _ = build
    page = (site / "bibliography" / "index.html").read_text(encoding="utf-8")
    downloads = sitegen.family_bibtex_files(ENTRIES)
    assert downloads
    for path, bibtex in downloads.items():
        assert f'href="{Path(path).name}"' in page  # relative to /bibliography/
        assert (site / path).read_text(encoding="utf-8") == bibtex


def test_contributing_page_is_built(build: tuple[Path, str]) -> None:
    site, _ = build
    page = (site / "contributing" / "index.html").read_text(encoding="utf-8")
    assert "<h1" in page and "Contributing an entry" in page
    assert "<code>TODO(fedunlearn new)</code>" in page


def test_api_page_per_module(build: tuple[Path, str]) -> None:
    site, _ = build
    for module in ("fedunlearn.catalog", "fedunlearn.references", "fedunlearn.cli"):
        page = (site / "api" / module / "index.html").read_text(encoding="utf-8")
        assert 'class="doc doc-' in page


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.slug)
def test_entry_page_has_card_and_cite_block(build: tuple[Path, str], entry: catalog.Entry) -> None:
    site, _ = build
    page = site / "entries" / entry.family / entry.slug / "index.html"
    assert page.is_file(), f"docs/{entry.page} was not built"
    text = page.read_text(encoding="utf-8")
    assert "Entry card" in text
    assert "<summary>Cite this</summary>" in text
    for key in entry.citation_keys:
        assert f"bibliography/#{key}" in text
        assert f"{key}</span>" in text  # the BibTeX key, highlighted, inside the cite block


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.slug)
def test_entry_notebook_rendered_with_outputs(
    build: tuple[Path, str], entry: catalog.Entry
) -> None:
    site, _ = build
    page = site / "notebooks" / entry.family / entry.slug / "index.html"
    assert page.is_file(), f"{entry.notebook} was not rendered"
    text = page.read_text(encoding="utf-8")
    assert "jp-OutputArea-output" in text, "the notebook shows no executed output"
    assert "<summary>Cite this</summary>" in text
    assert (page.parent / f"{entry.slug}.py").is_file()  # the source, for download
    stderr_output = re.search(r'<div[^>]*data-mime-type="application/vnd.jupyter.stderr"', text)
    assert stderr_output is None, "stderr output published on the page"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.slug)
def test_entry_page_numbers_come_from_its_notebook(build: tuple[Path, str], entry: catalog.Entry) -> None:
    site, _ = build
    text = (site / "entries" / entry.family / entry.slug / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"\{\{\s*(results|generated)\.", text), "a placeholder was left unfilled"
    source = (REPO / "docs" / entry.page).read_text(encoding="utf-8")
    assert "{{ results." in source, "the page shows no reproduced result from its notebook"


def test_offline_assets_only(build: tuple[Path, str]) -> None:
    site, _ = build
    remote = re.compile(r"""<(?:script|link)[^>]+(?:src|href)=["'](?:https?:)?//""")
    for page in site.glob("**/*.html"):
        text = page.read_text(encoding="utf-8")
        assert not remote.search(text), f"{page.relative_to(site)} loads a remote asset"
    home = (site / "index.html").read_text(encoding="utf-8")
    assert 'src="javascripts/vendor/mathjax/tex-svg.js"' in home
    assert '<div class="arithmatex">' in home
    assert (site / "javascripts" / "vendor" / "mathjax" / "tex-svg.js").is_file()


# ---------------------------------------------------------------- the built site in a real browser
# Headless Chromium (Debian's package; scripts/test installs it where the user may) drives the site
# served on 127.0.0.1 through the DevTools protocol (tests/browser.py). Every host name other than
# 127.0.0.1 resolves to nothing, and every request the pages make is recorded.


@pytest.fixture(scope="module")
def browser(build: tuple[Path, str]):
    from browser import INSTALL_HINT, Browser, chromium, serve

    executable = chromium()
    if executable is None:
        pytest.skip(INSTALL_HINT)
    site, _ = build
    base, stop = serve(str(site))
    with Browser(executable) as driver:
        driver.base = base
        yield driver
    stop()


def test_browser_entry_page_renders_its_math(browser) -> None:
    browser.open(f"{browser.base}/entries/decomposition/fused/")
    assert browser.wait_for("document.querySelectorAll('mjx-container svg').length", "MathJax SVG") > 0


def test_browser_cite_button_copies_the_bibtex(browser) -> None:
    """The copy button of the page's cite block puts that block's BibTeX on the clipboard."""
    browser.open(f"{browser.base}/entries/decomposition/fused/")
    browser.grant_clipboard(browser.base)  # nothing else in the session writes the clipboard
    browser.evaluate("document.querySelectorAll('details.quote').forEach(d => d.open = true)")
    browser.click("details.quote button[data-md-type=copy]")
    copied = browser.wait_for("navigator.clipboard.readText()", "the clipboard to fill")
    assert copied.startswith("@inproceedings{zhong2025unlearning,")


def test_browser_search_finds_an_entry_by_a_word_of_its_title(browser) -> None:
    browser.open(f"{browser.base}/")
    browser.type_text(".md-search__input", "FedEraser")
    hits = browser.wait_for("Array.from(document.querySelectorAll('.md-search-result__item a'))"
                            ".map(a => a.getAttribute('href')).join(' ')", "search results")
    assert "/entries/incremental/federaser/" in hits


def test_browser_explorer_filter_hides_rows_that_do_not_match(browser) -> None:
    """Ticking "exact" keeps exactly the exact methods; ticking "LoRA language model" too keeps
    those of them that run on the language model."""
    from fedunlearn.unlearning.registry import available_methods

    browser.open(f"{browser.base}/taxonomy/")
    visible = ("Array.from(document.querySelectorAll('.fu-explorer span.fu-facets'))"
               ".filter(s => !s.closest('tr').hidden).map(s => s.closest('tr').querySelector('code').textContent)")
    everything = browser.evaluate(visible)
    assert len(everything) >= 20
    browser.click("input[data-facet=exactness][value=exact]")
    exact = sorted(browser.evaluate(visible))
    methods = available_methods()
    assert exact == sorted(name for name in everything if methods[name].exact)
    assert 0 < len(exact) < len(everything)
    browser.click("input[data-facet=models][value='LoRA language model']")
    both = sorted(browser.evaluate(visible))
    assert both == sorted(n for n in exact if "language" in methods[n].scenario_kinds)
    assert browser.evaluate("document.querySelector('.fu-explorer-count').textContent") == (
        f"{len(both)} of {len(everything)} methods shown")


@pytest.mark.parametrize("page", ["notebooks/harness/compare/", "notebooks/harness/perturbation-family/",
                                  "notebooks/harness/decomposition-family/"])
def test_browser_comparison_pages_show_their_plots(browser, page: str) -> None:
    browser.open(f"{browser.base}/{page}")
    sizes = browser.evaluate("Array.from(document.images).filter(i => i.closest('.jp-OutputArea'))"
                             ".map(i => i.complete ? i.naturalWidth : 0)")
    assert sizes and all(width > 100 for width in sizes)


def test_browser_explorer_table_fits_the_page(browser) -> None:
    """At 1280 px the explorer's table (ten facet columns) needs no sideways scrolling."""
    browser.open(f"{browser.base}/taxonomy/")
    table, room = browser.evaluate("(() => { const t = document.querySelector('.fu-explorer table'); "
                                   "const w = t.closest('.md-typeset__scrollwrap') || t.parentElement; "
                                   "return [Math.ceil(t.getBoundingClientRect().width), w.clientWidth]; })()")
    assert table <= room


def test_browser_compare_page_tables_fit_and_group_their_columns(browser) -> None:
    """Every grouped table of the Compare page fits the content column at 1280 px (no sideways
    scrolling), has its three column groups, and no output shows stderr."""
    browser.open(f"{browser.base}/notebooks/harness/compare/")
    tables = browser.evaluate("Array.from(document.querySelectorAll('.fu-compare')).map(d => "
                              "[Math.ceil(d.querySelector('table').getBoundingClientRect().width), d.clientWidth, "
                              "d.querySelectorAll('thead th[colspan]').length])")
    assert len(tables) >= 8
    assert all(table <= room and groups == 3 for table, room, groups in tables), tables
    assert browser.evaluate("document.querySelectorAll('[data-mime-type=\"application/vnd.jupyter.stderr\"]')"
                            ".length") == 0


def test_browser_saw_no_console_error_and_no_request_off_the_machine(browser) -> None:
    """Runs after the page tests above (same module, file order)."""
    assert browser.requests, "the browser recorded no request at all"
    assert [u for u in browser.requests if not u.startswith((browser.base, "data:", "blob:"))] == []
    assert browser.console_errors == []
