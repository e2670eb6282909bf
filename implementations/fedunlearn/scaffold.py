"""``fedunlearn new``: the files of a new entry, written from templates that fail until filled in.

An entry lives in five places sharing its slug (see the "Contributing an entry" page): its record
``references/<key>.bib`` (imported first, with ``fedunlearn import-bib``), and four files this
module writes from the templates in ``fedunlearn/templates/``:

- ``implementations/fedunlearn/<family>/<module>.py``: a frozen ``Config``, a registered
  [`UnlearningMethod`][fedunlearn.unlearning.base.UnlearningMethod] whose ``unlearn`` raises
  ``NotImplementedError`` saying what to write, and ``ENTRY`` with placeholder claims;
- ``notebooks/<family>/<slug>.py``: the claim (reported), setup, run, reported vs reproduced
  (through [`Results`][fedunlearn.results.Results]) and what not to conclude;
- ``docs/entries/<family>/<slug>.md``: overview, algorithm, deviations, case study with
  ``{{ results.NAME }}`` placeholders, limitations, cite this;
- ``tests/<family>/test_<slug>.py``: a test that fails listing every placeholder left, and
  skeleton tests that fail until written.

There is no registration file: the catalog imports every module of the family package and
collects its ``ENTRY`` ([`discover`][fedunlearn.catalog.discover]), and ``@register_method``
registers the method when that module is imported. ``<module>`` is the slug with ``_`` for ``-``.

Every spot left to fill in carries the marker ``TODO(fedunlearn new)``;
[`placeholder_problems`][fedunlearn.scaffold.placeholder_problems] reports them in
``fedunlearn check`` with file and line, so an unfinished entry cannot pass.

Writing is all or nothing: every input is checked first, no existing file is ever replaced (if one
target exists, nothing is written and it is named), and each file is staged then linked into
place, so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import json
import keyword
import os
import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

#: The marker of every spot a scaffolded entry leaves to fill in.
MARKER = "TODO(fedunlearn new)"
#: Template file (in ``fedunlearn/templates/``) of each generated file, by label.
TEMPLATES: dict[str, str] = {
    "implementation": "module.py.tmpl",
    "notebook": "notebook.py.tmpl",
    "docs page": "page.md.tmpl",
    "test file": "test.py.tmpl",
}
#: Names the module template imports: a method class may not be called like one of them.
_TEMPLATE_NAMES = frozenset({"Entry", "ReportedClaim", "CostCounter", "ForgetRequest", "State",
                             "TrainedFederation", "UnlearningMethod", "dataclass"})
_TOKEN = re.compile(r"@@([a-z_]+)@@")
_SLUG_LINE = re.compile(r"^\s*slug\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)


class ScaffoldError(Exception):
    """An input ``fedunlearn new`` refuses (unknown family or key, bad or taken slug, existing file)."""


@dataclass(frozen=True)
class EntryFiles:
    """The four files of a scaffolded entry, as repository-relative paths by label.

    Attributes:
        family: The family slug.
        slug: The entry slug.
    """

    family: str
    slug: str

    @property
    def module(self) -> str:
        """The module name: the slug with ``_`` for ``-``."""
        return self.slug.replace("-", "_")

    @property
    def class_name(self) -> str:
        """The method class: the slug in CamelCase (``class-pruning`` -> ``ClassPruning``)."""
        return "".join(part[:1].upper() + part[1:] for part in self.slug.split("-"))

    @property
    def paths(self) -> dict[str, str]:
        """Label -> repository-relative path, the same paths ``fedunlearn check`` expects."""
        return {
            "implementation": f"implementations/fedunlearn/{self.family}/{self.module}.py",
            "notebook": f"notebooks/{self.family}/{self.slug}.py",
            "docs page": f"docs/entries/{self.family}/{self.slug}.md",
            "test file": f"tests/{self.family}/test_{self.slug}.py",
        }


def template(name: str) -> str:
    """The text of a template file of ``fedunlearn/templates/``."""
    return resources.files("fedunlearn").joinpath("templates", name).read_text(encoding="utf-8")


def _authors_year(reference) -> str:
    from fedunlearn.references import author_names

    names = [name.split()[-1] for name in author_names(reference) if name.split()]
    if not names:
        who = "the authors"
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    year = reference.get("year")
    return f"{who} {year}".strip()


def check_inputs(root: Path, family: str, slug: str, keys: list[str]) -> EntryFiles:
    """Every reason not to scaffold, checked before anything is written.

    Raises:
        ScaffoldError: Naming the problem and what to do about it.
    """
    from fedunlearn.catalog import FAMILIES, SLUG_PATTERN, discover
    from fedunlearn.references import close_matches, load_library
    from fedunlearn.unlearning.base import METHODS

    if family not in FAMILIES:
        hint = close_matches(family, FAMILIES, limit=1)
        suggestion = f"did you mean {hint[0]}? " if hint else ""
        raise ScaffoldError(f"unknown family {family!r}; {suggestion}known families: {', '.join(FAMILIES)}")
    if not SLUG_PATTERN.fullmatch(slug):
        raise ScaffoldError(f"bad slug {slug!r}: use lower-case letters and digits in words joined by "
                            f"single hyphens, starting with a letter (e.g. 'fedau', 'class-pruning'); "
                            f"pattern {SLUG_PATTERN.pattern}")
    files = EntryFiles(family, slug)
    if keyword.iskeyword(files.module) or files.class_name in _TEMPLATE_NAMES:
        raise ScaffoldError(f"slug {slug!r} would name a module {files.module!r} and a class "
                            f"{files.class_name!r} that Python cannot import or that clash; choose another")
    entries, _ = discover(strict=False)
    taken = {e.slug: e.implementation for e in entries}
    if slug in taken:
        raise ScaffoldError(f"slug {slug!r} is taken by the entry declared in {taken[slug]}")
    import fedunlearn.unlearning.controls  # noqa: F401 - registers the controls' names

    if slug in METHODS:
        raise ScaffoldError(f"slug {slug!r} is already a registered method name "
                            f"({METHODS[slug].__module__}); the entry's method is named after its slug")
    if not keys:
        raise ScaffoldError("give the paper's citation key with --cite KEY")
    references = root / "references"
    if not references.is_dir():
        raise ScaffoldError(f"{references} does not exist: --root must be a repository checkout")
    library = load_library(references)
    for key in keys:
        if key not in library:
            hint = close_matches(key, library)
            suggestion = f" (close matches: {', '.join(hint)})" if hint else ""
            raise ScaffoldError(
                f"unknown citation key {key!r}: no references/{key}.bib{suggestion}; import the "
                f"paper's record first with 'fedunlearn import-bib FILE.bib'"
            )
    if len(set(keys)) != len(keys):
        raise ScaffoldError(f"a citation key is given twice: {', '.join(keys)}")
    existing = [path for path in files.paths.values() if (root / path).exists()]
    if existing:
        raise ScaffoldError(f"nothing written: {', '.join(existing)} already exist(s); "
                            "'fedunlearn new' never replaces a file")
    return files


def render(root: Path, family: str, slug: str, keys: list[str]) -> dict[str, str]:
    """The four files' text, by repository-relative path (no check, no writing).

    Raises:
        KeyError: If a template names an unknown token (a bug in a template).
    """
    from fedunlearn.references import format_citation, load_library, to_text

    library = load_library(root / "references")
    reference = library[keys[0]]
    files = EntryFiles(family, slug)
    title = to_text(reference.get("title")).rstrip(".") or slug
    tokens = {
        "slug": slug,
        "family": family,
        "module": files.module,
        "class": files.class_name,
        "module_path": files.paths["implementation"],
        "key": keys[0],
        "keys_literal": "(" + ", ".join(json.dumps(k) for k in keys) + ("," if len(keys) == 1 else "") + ")",
        "title": title,
        "title_literal": json.dumps(title, ensure_ascii=False),
        "authors_year": _authors_year(reference),
        "citation": format_citation(reference),
    }
    return {path: _TOKEN.sub(lambda m: tokens[m.group(1)], template(TEMPLATES[label]))
            for label, path in files.paths.items()}


def _link_new(staged: Path, target: Path) -> None:
    """Put ``staged`` at ``target`` atomically, failing if ``target`` exists."""
    try:
        os.link(staged, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: check, then rename
        if target.exists():
            raise FileExistsError(target) from None
        os.replace(staged, target)


def write_entry(root: Path, family: str, slug: str, keys: list[str]) -> list[Path]:
    """Check the inputs, then write the entry's four files under ``root``: all or nothing.

    Args:
        root: The repository checkout.
        family: A family of [`FAMILIES`][fedunlearn.catalog.FAMILIES].
        slug: A new slug matching [`SLUG_PATTERN`][fedunlearn.catalog.SLUG_PATTERN].
        keys: Citation keys present in ``root/references``; the first is the method's paper.

    Returns:
        The files written.

    Raises:
        ScaffoldError: On any refused input (see [`check_inputs`][fedunlearn.scaffold.check_inputs]),
            or when a target appeared while writing (then every file written is removed).
    """
    check_inputs(root, family, slug, keys)
    texts = render(root, family, slug, keys)
    created_dirs: list[Path] = []
    staged: list[tuple[Path, Path]] = []
    written: list[Path] = []
    umask = os.umask(0)
    os.umask(umask)
    try:
        for relative, text in texts.items():
            target = root / relative
            missing = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
            for directory in reversed(missing):
                directory.mkdir()
                created_dirs.append(directory)
            with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=target.parent, prefix=".new-",
                                             suffix=".tmp", delete=False) as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(handle.name, 0o666 & ~umask)
            staged.append((Path(handle.name), target))
        for temporary, target in staged:
            _link_new(temporary, target)
            written.append(target)
    except FileExistsError as exc:
        _undo(written, staged, created_dirs)
        raise ScaffoldError(f"nothing written: {exc.args[0] if exc.args else exc} appeared meanwhile") from exc
    except BaseException:
        _undo(written, staged, created_dirs)
        raise
    for temporary, _ in staged:
        temporary.unlink(missing_ok=True)
    return written


def _undo(written: list[Path], staged: list[tuple[Path, Path]], created_dirs: list[Path]) -> None:
    for target in written:
        target.unlink(missing_ok=True)
    for temporary, _ in staged:
        temporary.unlink(missing_ok=True)
    for directory in reversed(created_dirs):
        try:
            directory.rmdir()
        except OSError:
            pass


def placeholders(text: str) -> list[tuple[int, str]]:
    """``(line, text of the line)`` for every line of ``text`` holding the marker."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)
            if MARKER in line]


def entry_placeholders(root: Path, family: str, slug: str) -> list[str]:
    """Every placeholder left in an entry's four files, as ``path:line: text`` (the generated test
    fails with this list)."""
    found = []
    for relative in EntryFiles(family, slug).paths.values():
        path = root / relative
        if path.is_file():
            found += [f"{relative}:{line}: {text}"
                      for line, text in placeholders(path.read_text(encoding="utf-8"))]
    return found


def _candidate_files(root: Path) -> list[tuple[str, Path]]:
    """(slug, file) for every file that can belong to an entry, per family folder."""
    from fedunlearn.catalog import FAMILIES

    out = []
    for family in FAMILIES:
        for path in sorted((root / "implementations" / "fedunlearn" / family).glob("*.py")):
            if not path.name.startswith("_"):
                out.append((path.stem.replace("_", "-"), path))
        out += [(p.stem, p) for p in sorted((root / "notebooks" / family).glob("*.py"))]
        out += [(p.stem, p) for p in sorted((root / "docs" / "entries" / family).glob("*.md"))]
        out += [(p.stem[len("test_"):], p) for p in sorted((root / "tests" / family).glob("test_*.py"))]
    return out


def _shorten(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def placeholder_problems(root: Path) -> list[str]:
    """One line per entry file that still holds placeholders, for ``fedunlearn check``:
    ``entry X: <file> still has N unfilled placeholder(s) (line L: ...; also lines ...)``.

    Files are found by path in every family folder of ``root`` (not through the catalog), so an
    entry whose module does not import yet is reported too.
    """
    problems = []
    for slug, path in _candidate_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        if MARKER not in text:
            continue
        found = placeholders(text)
        if path.suffix == ".py" and path.parent.parent.name == "fedunlearn":
            declared = _SLUG_LINE.search(text)
            slug = declared.group(1) if declared else slug
        first_line, first_text = found[0]
        more = [str(line) for line, _ in found[1:]]
        also = f"; also line{'s' if len(more) > 1 else ''} {', '.join(more)}" if more else ""
        relative = path.relative_to(root).as_posix()
        problems.append(
            f"entry {slug}: {relative} still has {len(found)} unfilled placeholder"
            f"{'s' if len(found) > 1 else ''} (line {first_line}: {_shorten(first_text)}{also}); "
            f"replace each {MARKER}"
        )
    return problems
