"""MkDocs hook: generate the derived pages and decorate entry pages.

What this hook adds to the build (all derived from the catalog and ``references/``):

- ``taxonomy.md`` and ``bibliography.md``, and ``bibliography/<family>.bib``: the records cited by
  each family's entries, linked from the Bibliography page for download;
- ``api/<module>.md``: one mkdocstrings page per module of the package;
- ``notebooks/<family>/<slug>.ipynb``: every jupytext notebook of the repository's ``notebooks/``,
  executed by [`notebook_runner`][fedunlearn.notebook_runner] (in parallel, reused while its
  inputs are unchanged) and rendered by mkdocs-jupyter; its source is published beside the page
  for download;
- on every page whose front matter says ``entry: <slug>``: an entry card after the title, every
  ``{{ results.NAME }}`` replaced by what the entry's notebook saved, and a collapsed "Cite this"
  BibTeX block at the end;
- on every notebook page: a line linking back to its entry, the same cite block, and the removal
  of nbconvert's CDN script tags (MathJax 2, mermaid), since the site is served offline;
- in ``nav``: the sections whose value is ``entries/``, ``notebooks/`` or ``api/`` are expanded
  from the files, and pages listed in ``nav`` that do not exist yet are dropped (logged at INFO).

Problems (an entry module that fails to import, a broken reference, a page naming an unknown
entry) are logged as warnings, so ``mkdocs build --strict`` fails on them.
"""

from __future__ import annotations

import html
import logging
import re
import shutil
import tempfile
from pathlib import Path

import markdown as markdown_lib
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from mkdocs.utils import get_relative_url

from fedunlearn import catalog, notebook_runner, references, results, sitegen

log = logging.getLogger("mkdocs.plugins.fedunlearn_site")

#: nav values replaced by a generated section.
GENERATED_SECTIONS = ("entries/", "notebooks/", "api/")

_state: dict = {}


def _repo(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def _entries() -> list[catalog.Entry]:
    if "entries" not in _state:
        found, problems = catalog.discover(strict=False)
        for problem in problems:
            log.warning("catalog: %s", problem)
        _state["entries"] = found
    return _state["entries"]


def _entry_by_slug() -> dict[str, catalog.Entry]:
    return {entry.slug: entry for entry in _entries()}


def _notebook_sources(repo: Path) -> list[Path]:
    return sorted((repo / "notebooks").glob("*/*.py"))


# --------------------------------------------------------------------------- nav


#: Section titles of the notebook folders that are not a family.
FOLDER_TITLES = {"harness": "Comparisons across entries"}


def _family_sections(paths: list[str], titles: dict[str, str] | None = None) -> list:
    """Group docs paths ``<top>/<family>/<name>`` into nav sections titled by family."""
    by_family: dict[str, list] = {}
    for path in paths:
        family = path.split("/")[1]
        item = {titles[path]: path} if titles and path in titles else path
        by_family.setdefault(family, []).append(item)
    order = [f for f in catalog.FAMILIES if f in by_family]
    order += sorted(f for f in by_family if f not in catalog.FAMILIES)
    return [{catalog.FAMILIES.get(f, FOLDER_TITLES.get(f, f)): by_family[f]} for f in order]


def _api_section() -> list:
    groups: dict[str, list] = {}
    top: list = []
    for module in sitegen.api_modules():
        parts = module.split(".")
        item = {module: sitegen.api_page(module)}
        if len(parts) == 1 or (len(parts) == 2 and not _is_package(module)):
            top.append(item)
        else:
            groups.setdefault(".".join(parts[:2]), []).append(item)
    return top + [{name: items} for name, items in sorted(groups.items())]


def _is_package(module: str) -> bool:
    import importlib.util

    spec = importlib.util.find_spec(module)
    return bool(spec and spec.submodule_search_locations)


def _expand_nav(items: list, config: MkDocsConfig, repo: Path) -> list:
    docs = Path(config.docs_dir)
    expanded = []
    for item in items:
        if isinstance(item, dict):
            ((title, value),) = item.items()
        else:
            title, value = None, item
        if isinstance(value, list):
            value = _expand_nav(value, config, repo)
        elif value == "entries/":
            pages = sorted(p.relative_to(docs).as_posix() for p in docs.glob("entries/*/*.md"))
            value = _family_sections(pages)
        elif value == "notebooks/":
            by_slug = _entry_by_slug()
            paths = [sitegen.notebook_page(p.relative_to(repo).as_posix()) for p in _notebook_sources(repo)]
            titles = {
                path: by_slug[Path(path).stem].title for path in paths if Path(path).stem in by_slug
            }
            value = _family_sections(paths, titles)
        elif value == "api/":
            value = _api_section()
        elif isinstance(value, str) and value.endswith(".md") and "://" not in value:
            generated = value in (sitegen.TAXONOMY_PAGE, sitegen.BIBLIOGRAPHY_PAGE)
            if not generated and not (docs / value).is_file():
                log.info("nav: %s does not exist yet; left out of the navigation", value)
                continue
        if isinstance(value, list) and not value:
            continue
        expanded.append({title: value} if title is not None else value)
    return expanded


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Reset per-build state and expand the generated nav sections."""
    _state.clear()
    if config.nav:
        config.nav = _expand_nav(config.nav, config, _repo(config))
    return config


# --------------------------------------------------------------------------- files


@event_priority(100)  # before mkdocs-jupyter wraps notebooks
def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated pages and the notebooks to the build."""
    repo = _repo(config)
    for module in sitegen.api_modules():
        files.append(
            File.generated(
                config, sitegen.api_page(module), content=sitegen.api_page_markdown(module)
            )
        )
    _add_notebooks(files, config, repo)
    entries = _entries()
    library_root = repo / "references"
    cited = {f"entry {e.slug}": list(e.citation_keys) for e in entries}
    for problem in references.validate(library_root, cited):
        log.warning("references: %s", problem)
    library, _ = references.scan(library_root)
    try:
        downloads = sitegen.family_bibtex_files(entries, library_root)
    except (KeyError, references.ReferenceProblem) as exc:
        log.warning("bibliography: no BibTeX downloads: %s", exc)
        downloads = {}
    for path, bibtex in downloads.items():
        files.append(File.generated(config, path, content=bibtex))
    existing = {f.src_uri for f in files} | {sitegen.TAXONOMY_PAGE, sitegen.BIBLIOGRAPHY_PAGE}
    _state["existing"] = existing
    files.append(
        File.generated(
            config, sitegen.TAXONOMY_PAGE, content=sitegen.taxonomy_markdown(entries, existing)
        )
    )
    files.append(
        File.generated(
            config,
            sitegen.BIBLIOGRAPHY_PAGE,
            content=sitegen.bibliography_markdown(library, entries, existing),
        )
    )
    return files


def _add_notebooks(files: Files, config: MkDocsConfig, repo: Path) -> None:
    """Execute (or reuse) every notebook; add its executed page, its source and its results."""
    sources = _notebook_sources(repo)
    try:
        executed = notebook_runner.execute_all(sources, report=log.info)
    except RuntimeError as exc:
        log.warning("%s", exc)
        return
    staging = Path(tempfile.mkdtemp(prefix="fedunlearn-notebooks-"))
    _state["results"] = {}
    for run in executed:
        relative = run.source.relative_to(repo).as_posix()
        page = sitegen.notebook_page(relative)
        target = staging / page
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.notebook, target)
        files.append(File(page, src_dir=str(staging), dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
        files.append(File.generated(config, sitegen.notebook_download(relative), abs_src_path=str(run.source)))
        if run.results.is_dir():
            _state["results"][run.source.stem] = run.results


# --------------------------------------------------------------------------- pages


def _cite_markdown(entry: catalog.Entry, config: MkDocsConfig) -> str:
    try:
        return sitegen.cite_block_markdown(entry.citation_keys, _repo(config) / "references")
    except (KeyError, references.ReferenceProblem) as exc:
        log.warning("entry %s: no cite block: %s", entry.slug, exc)
        return ""


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Fill generated snippets; add the entry card, results and cite block to entry pages."""
    if sitegen.GENERATED.search(markdown):
        try:
            markdown = sitegen.render_generated(markdown, _entries(), page.file.src_uri, _state.get("existing", set()))
        except KeyError as exc:
            log.warning("%s", exc.args[0])
    slug = page.meta.get("entry")
    if not slug:
        return markdown
    entry = _entry_by_slug().get(str(slug))
    if entry is None:
        log.warning(
            "%s: front matter names entry %r, which is not in the catalog", page.file.src_uri, slug
        )
        return markdown
    card = sitegen.entry_card_markdown(entry, page.file.src_uri, _state.get("existing", set()))
    markdown = sitegen.insert_after_title(markdown, card)
    if results.PLACEHOLDER.search(markdown):
        try:
            directory = _state.get("results", {}).get(entry.slug)
            if directory is None:
                raise results.ResultsError(f"the notebook of entry {entry.slug} saved no results")
            markdown = results.render(markdown, results.load(entry.slug, directory), f"docs/{page.file.src_uri}")
        except results.ResultsError as exc:
            log.warning("%s", exc)
    cite = _cite_markdown(entry, config)
    return f"{markdown.rstrip()}\n\n{cite}" if cite else markdown


_CDN_BLOCKS = (
    re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.DOTALL),
    re.compile(r'<script type="module">(?:(?!</script>).)*?mermaid.*?</script>', re.DOTALL),
)


def _notebook_entry(page: Page) -> catalog.Entry | None:
    uri = page.file.src_uri
    if not (uri.startswith("notebooks/") and uri.endswith(".ipynb")):
        return None
    return _entry_by_slug().get(Path(uri).stem)


#: Notebook pages whose tables need the width of the table of contents (hidden there).
WIDE_NOTEBOOKS = ("notebooks/harness/compare.ipynb",)


def on_page_content(html_text: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """On notebook pages: drop CDN scripts, link back to the entry, append the cite block."""
    uri = page.file.src_uri
    if not (uri.startswith("notebooks/") and uri.endswith(".ipynb")):
        return html_text
    if uri in WIDE_NOTEBOOKS:
        page.meta["hide"] = [*page.meta.get("hide", []), "toc"]
    for pattern in _CDN_BLOCKS:
        html_text = pattern.sub("", html_text)
    source = uri[: -len(".ipynb")] + ".py"
    note = (
        f"Executed when the site was built. Source: <code>{html.escape(source)}</code> "
        f'(<a href="{html.escape(Path(source).name)}">download</a>), a jupytext percent-format '
        "script that runs at smoke size; set <code>FULL=1</code> for the larger run."
    )
    entry = _notebook_entry(page)
    cite = ""
    if entry is not None:
        target = files.get_file_from_path(entry.page)
        if target is not None:
            href = get_relative_url(target.url, page.url)
            note = (
                f'Notebook of the entry <a href="{html.escape(href)}">'
                f"{html.escape(entry.title)}</a>. {note}"
            )
        cite_md = _cite_markdown(entry, config)
        if cite_md:
            cite = markdown_lib.markdown(
                cite_md,
                extensions=config.markdown_extensions,
                extension_configs=config.mdx_configs,
            )
    card = f'<div class="admonition info fu-notebook-card"><p>{note}</p></div>\n'
    return f"{card}{html_text}\n{cite}"
