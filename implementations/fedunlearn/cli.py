"""Command-line interface: ``fedunlearn list | cite | check | import-bib | new | bench`` and
``--version``.

Each subcommand is a [`Subcommand`][fedunlearn.cli.Subcommand]: a name, a help line, a function
that adds its arguments and a function that runs it and returns the exit status. Built-in
subcommands are listed in [`SUBCOMMANDS`][fedunlearn.cli.SUBCOMMANDS]. Another module can contribute
one without editing this file's logic: name it in
[`OPTIONAL_SUBCOMMANDS`][fedunlearn.cli.OPTIONAL_SUBCOMMANDS] and give it two module-level
functions, ``add_arguments(parser)`` and ``run(args) -> int``; the first line of its docstring is
the help text. It is imported only when its subcommand is invoked, and skipped while the module
does not exist.

Exit statuses: 0 success, 1 ``check`` or ``import-bib`` found problems, 2 a usage error (unknown
key or family, bad option, missing file, a slug that is taken or a file ``new`` would replace).
User errors print one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROG = "fedunlearn"


class CommandError(Exception):
    """A user error: printed as one line on stderr, exit status ``status``."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Subcommand:
    """One ``fedunlearn`` subcommand.

    Attributes:
        name: What the user types (``list``).
        help: One line shown by ``fedunlearn --help``.
        add_arguments: Adds the subcommand's options to its parser.
        run: Runs it on the parsed arguments and returns the exit status.
        description: Longer text for ``fedunlearn NAME --help`` (defaults to ``help``).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


# --------------------------------------------------------------------------- list


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    from fedunlearn.catalog import FAMILIES

    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="'table' (default) for reading, 'json' for scripts: one object per entry with "
        "slug, family, title, citation_keys, implementation, notebook, test and page",
    )
    parser.add_argument(
        "--family", choices=tuple(FAMILIES), help="show only the entries of this family"
    )
    parser.add_argument(
        "--methods",
        action="store_true",
        help="list the registered unlearning methods instead: name, entry, request kinds served, "
        "history needed and settings with their defaults (change them with bench --set)",
    )


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _run_list(args: argparse.Namespace) -> int:
    from fedunlearn.catalog import discover

    entries, problems = discover(strict=False)
    for problem in problems:
        print(f"{PROG}: warning: {problem}", file=sys.stderr)
    if args.family:
        entries = [e for e in entries if e.family == args.family]
    if args.methods:
        return _list_methods(entries, args.format, with_controls=not args.family)
    if args.format == "json":
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print("no entries yet")
        return 0
    rows = [["FAMILY", "SLUG", "TITLE", "CITATION KEYS"]]
    rows += [[e.family, e.slug, e.title, ", ".join(e.citation_keys)] for e in entries]
    print(_table(rows))
    return 0


def _list_methods(entries: list, output: str, with_controls: bool) -> int:
    from dataclasses import asdict

    from fedunlearn.unlearning.registry import CONTROLS, available_methods

    owner = {name: e.slug for e in entries for name in e.methods}
    rows = []
    for name, cls in available_methods().items():
        if name not in owner and not (with_controls and name in CONTROLS):
            continue
        method = cls()
        rows.append({"name": name, "entry": owner.get(name, "(control)"),
                     "granularities": sorted(cls.granularities), "history_interval": method.history_interval(),
                     "owns_training": cls.owns_training, "settings": asdict(method.config)})
    if output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    table = [["METHOD", "ENTRY", "REQUESTS", "HISTORY", "SETTINGS (defaults)"]]
    for row in rows:
        history = "-" if row["history_interval"] is None else f"every {row['history_interval']} round(s)"
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "-"
        table.append([row["name"], row["entry"], ",".join(row["granularities"]), history, settings])
    print(_table(table))
    return 0


# --------------------------------------------------------------------------- cite


def _cite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "keys",
        nargs="*",
        metavar="KEY",
        help="citation key (a file stem in references/, e.g. liu2021federaser) or an entry "
        "slug (e.g. federaser), which stands for all of that entry's keys",
    )
    parser.add_argument(
        "--all", action="store_true", help="print every record of references/, sorted by key"
    )
    parser.add_argument(
        "--family",
        metavar="FAMILY",
        help="print every record cited by the entries of this family (e.g. decomposition), "
        "in catalog order; combines with KEYs",
    )


def family_citation_keys(family: str) -> list[str]:
    """The keys cited by a family's entries, in catalog order, each once.

    Raises:
        CommandError: For an unknown family, listing the known ones.
    """
    from fedunlearn.catalog import FAMILIES, citation_keys_of, discover
    from fedunlearn.references import close_matches

    if family not in FAMILIES:
        hint = close_matches(family, FAMILIES, limit=1)
        suggestion = f"did you mean {hint[0]}? " if hint else ""
        raise CommandError(
            f"unknown family {family!r}; {suggestion}known families: {', '.join(FAMILIES)}"
        )
    return citation_keys_of(discover(strict=False)[0], family)


def _run_cite(args: argparse.Namespace) -> int:
    from fedunlearn.references import close_matches, format_bibtex, load_library

    if not args.keys and not args.all and args.family is None:
        raise CommandError(
            "give at least one KEY, --family FAMILY or --all (see 'fedunlearn cite --help')"
        )
    keys: list[str] = family_citation_keys(args.family) if args.family is not None else []
    library = load_library()
    if args.all:
        print(format_bibtex(list(library)), end="")
        return 0
    if args.family is not None and not keys and not args.keys:
        print(f"{PROG}: family {args.family!r} has no entries yet; nothing to cite",
              file=sys.stderr)
        return 0
    slugs: dict[str, tuple[str, ...]] | None = None
    for name in args.keys:
        if name in library:
            keys.append(name)
            continue
        if slugs is None:
            from fedunlearn.catalog import discover

            slugs = {e.slug: e.citation_keys for e in discover(strict=False)[0]}
        if name in slugs:
            keys.extend(slugs[name])
            continue
        hint = close_matches(name, [*library, *slugs])
        suggestion = f"; close matches: {', '.join(hint)}" if hint else ""
        raise CommandError(
            f"unknown citation key or entry {name!r}{suggestion} "
            f"('fedunlearn cite --all' prints every record)"
        )
    print(format_bibtex(dict.fromkeys(keys)), end="")
    return 0


# --------------------------------------------------------------------------- check


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="repository checkout to check (default: the one this package is installed from)",
    )


def check_repository(root: Path | None = None) -> tuple[list[str], int]:
    """Every consistency problem of the knowledge base, one line each.

    Checks the catalog (imports, families, duplicate slugs), the bibliography (the quality rules
    of [`fedunlearn.bibquality`][fedunlearn.bibquality.quality_problems], duplicate works, keys cited by
    entries), and that each entry's implementation imports and its notebook, test file
    and docs page exist, the page naming the entry in its front matter (``entry: <slug>``), and that
    no entry file still holds a ``TODO(fedunlearn new)`` placeholder of
    [`fedunlearn new`][fedunlearn.scaffold] (found by path under ``root``, so a scaffold whose
    module does not import yet is reported too).

    Args:
        root: The repository checkout; defaults to [`repo_root`][fedunlearn.catalog.repo_root].

    Returns:
        The problems, and the number of entries checked.
    """
    from fedunlearn.catalog import discover, repo_root
    from fedunlearn.references import validate
    from fedunlearn.results import typed_numbers
    from fedunlearn.scaffold import placeholder_problems
    from fedunlearn.sitegen import page_entry_slug

    root = root or repo_root()
    entries, problems = discover(strict=False)
    cited = {f"entry {e.slug}": list(e.citation_keys) for e in entries}
    problems += validate(root / "references", cited)
    for entry in entries:
        try:
            importlib.import_module(entry.implementation)
        except Exception as exc:  # noqa: BLE001 - reported as a problem
            problems.append(f"entry {entry.slug}: {entry.implementation} does not import: {exc}")
        if not entry.citation_keys:
            problems.append(f"entry {entry.slug}: no citation keys")
        for label, relative in (
            ("notebook", entry.notebook),
            ("test file", entry.test),
            ("docs page", f"docs/{entry.page}"),
        ):
            if not (root / relative).is_file():
                problems.append(f"entry {entry.slug}: {label} {relative} is missing")
        page = root / "docs" / entry.page
        if page.is_file() and page_entry_slug(page) != entry.slug:
            problems.append(
                f"docs/{entry.page}:1: front matter must say 'entry: {entry.slug}' "
                "(the entry card and cite block are generated from it)"
            )
        if page.is_file():
            for line, number in typed_numbers(page.read_text(encoding="utf-8")):
                problems.append(
                    f"docs/{entry.page}:{line}: reproduced number {number} typed into the Case study; "
                    "save it in the notebook's Results and write {{ results.NAME }} instead"
                )
    known = {e.slug for e in entries}
    for page in sorted((root / "docs" / "entries").glob("**/*.md")):
        slug = page_entry_slug(page)
        if slug is not None and slug not in known:
            relative = page.relative_to(root).as_posix()
            problems.append(f"{relative}:1: front matter names entry {slug!r}, not in the catalog")
    problems += placeholder_problems(root)
    return problems, len(entries)


def _run_check(args: argparse.Namespace) -> int:
    from fedunlearn.references import load_library

    problems, count = check_repository(args.root)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    references = len(load_library(args.root / "references" if args.root else None))
    print(f"OK: {count} entries, {references} references, all consistent")
    return 0


# --------------------------------------------------------------------------- import-bib


def _import_arguments(parser: argparse.ArgumentParser) -> None:
    from fedunlearn.bibimport import add_arguments

    add_arguments(parser)


def _run_import(args: argparse.Namespace) -> int:
    from fedunlearn.bibimport import run

    return run(args)


# --------------------------------------------------------------------------- new


def _new_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("family", metavar="FAMILY", help="the entry's family (e.g. decomposition)")
    parser.add_argument("slug", metavar="SLUG",
                        help="the new entry's slug: lower-case words joined by hyphens (e.g. fed-knot)")
    parser.add_argument("--cite", action="append", default=[], metavar="KEY", required=True,
                        help="a citation key present in references/ (repeat for more; the first is the "
                        "method's paper); import a missing record with 'fedunlearn import-bib FILE.bib'")
    parser.add_argument("--root", type=Path, default=None,
                        help="repository checkout to write into (default: the one this package is "
                        "installed from)")


def _run_new(args: argparse.Namespace) -> int:
    from fedunlearn.catalog import repo_root
    from fedunlearn.scaffold import MARKER, ScaffoldError, write_entry

    root = args.root or repo_root()
    try:
        written = write_entry(root, args.family, args.slug, list(args.cite))
    except ScaffoldError as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote entry {args.slug} ({args.family}):")
    for path in written:
        print(f"  {path.relative_to(root).as_posix()}")
    print(f"Next: replace every {MARKER} (the new test and 'fedunlearn check' list them with file "
          "and line), implement unlearn, run the notebook; see the 'Contributing an entry' page.")
    return 0


#: The built-in subcommands, in the order ``--help`` shows them.
SUBCOMMANDS: list[Subcommand] = [
    Subcommand(
        "list",
        "list the catalog's entries",
        _list_arguments,
        _run_list,
        "List every entry of the knowledge base (declared by ENTRY in the family modules), "
        "or with --methods every registered unlearning method, as a table or as JSON.",
    ),
    Subcommand(
        "cite",
        "print BibTeX for citation keys or entries",
        _cite_arguments,
        _run_cite,
        "Print BibTeX records from references/ (one file per record): given keys, the keys of "
        "given entries, every record cited by a family's entries (--family), or all (--all). "
        "Unknown keys and families exit with status 2 and a list of close or known names.",
    ),
    Subcommand(
        "check",
        "check catalog, references, notebooks, tests and pages",
        _check_arguments,
        _run_check,
        "Validate the knowledge base: every entry imports, every record of references/ is fit "
        "to cite (full author list, venue names, no duplicate works), every cited key exists in "
        "references/, every entry has its notebook, test file and docs page. Prints one line "
        "per problem and exits 1 if there is any.",
    ),
    Subcommand(
        "import-bib",
        "split a .bib file into checked records under references/",
        _import_arguments,
        _run_import,
        "Import every record of a BibTeX file into references/<key>.bib, one record per file, "
        "with keys proposed as <firstauthor><year><word>. Every record is checked first (parse "
        "errors, missing fields, truncated or comma-separated authors, journal on "
        "@inproceedings, acronym venues, duplicates of the library or of the file, key clashes) "
        "and problems are listed with file and line; nothing is written unless every record is "
        "fit. --fix applies the safe normalisations and reports each. Exit 0 when written, 1 "
        "when problems were found.",
    ),
    Subcommand(
        "new",
        "scaffold a new entry's module, notebook, page and test from templates",
        _new_arguments,
        _run_new,
        "Write the files of a new entry from templates: implementations/fedunlearn/FAMILY/"
        "<slug with _>.py (Config, a registered method whose unlearn raises NotImplementedError, "
        "ENTRY), notebooks/FAMILY/SLUG.py, docs/entries/FAMILY/SLUG.md and tests/FAMILY/"
        "test_SLUG.py. The entry registers itself: the catalog imports every module of the family. "
        "Every spot to fill in is marked TODO(fedunlearn new); the new test and 'fedunlearn check' "
        "fail listing them until none is left. The keys must exist in references/, the family must "
        "be known and the slug new; nothing is written if any target file exists.",
    ),
]

#: Subcommands contributed by other modules: name -> module. The module defines
#: ``add_arguments(parser)`` and ``run(args) -> int``; its docstring's first line is the help.
OPTIONAL_SUBCOMMANDS: dict[str, str] = {
    "bench": "fedunlearn.unlearning.bench",
}


def _module_docstring(module_name: str) -> str | None:
    """The docstring of a module found on the path, read without importing it; None if absent."""
    try:
        spec = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    source = Path(spec.origin).read_text(encoding="utf-8")
    return ast.get_docstring(ast.parse(source)) or ""


def _load_optional(name: str, module_name: str, invoked: bool) -> Subcommand | None:
    """The optional subcommand, imported only if ``invoked``; None while its module is absent."""
    docstring = _module_docstring(module_name)
    if docstring is None:
        return None
    lines = docstring.strip().splitlines()
    help_line = lines[0].rstrip(".") if lines else f"run {module_name}"
    if not invoked:
        # Listed in --help without paying for the import (it may pull in torch).
        return Subcommand(name, help_line, lambda parser: None, lambda args: 0)
    module = importlib.import_module(module_name)
    add_arguments = getattr(module, "add_arguments", None)
    run = getattr(module, "run", None)
    if not callable(add_arguments) or not callable(run):
        raise CommandError(
            f"{module_name} does not define add_arguments(parser) and run(args)", status=1
        )
    return Subcommand(name, help_line, add_arguments, run, docstring)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser with every available subcommand.

    Args:
        argv: The command line, used only to decide which optional subcommand to import.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="An executable knowledge base on federated learning of LLMs and federated "
        "machine unlearning: list its entries, print citations, check its consistency.",
        epilog="Run 'fedunlearn COMMAND --help' for the options of a command.",
    )
    from fedunlearn import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subcommands = list(SUBCOMMANDS)
    for name, module_name in OPTIONAL_SUBCOMMANDS.items():
        optional = _load_optional(name, module_name, invoked=name in argv)
        if optional is not None:
            subcommands.append(optional)
    for command in subcommands:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv[1:]``.
    """
    from fedunlearn.catalog import CatalogError
    from fedunlearn.references import ReferenceProblem

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if getattr(args, "run", None) is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.run(args))
    except CommandError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.status
    except ReferenceProblem as exc:
        print(f"{PROG}: references/ is invalid:\n{exc}", file=sys.stderr)
        return 1
    except CatalogError as exc:
        print(f"{PROG}: the catalog is invalid:\n{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `fedunlearn cite --all | head`: the reader left, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except SystemExit as exc:  # argparse: --help exits 0, bad options exit 2
        return exc.code if isinstance(exc.code, int) else 2


if __name__ == "__main__":
    raise SystemExit(main())
