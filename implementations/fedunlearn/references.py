"""The bibliography: one BibTeX record per file in ``references/``, key = file stem.

Every citation in the knowledge base points here. A record lives in ``references/<key>.bib``; the
file holds exactly that one record, so adding a paper never edits a shared file. This module reads
the folder with bibtexparser 2.x, checks it, and formats records as BibTeX (for ``fedunlearn cite``
and the pages' *cite this* blocks) or as plain text (for the bibliography page).

Validation reports one line per problem, each naming the file and line (or the key) at fault:

- a file that does not parse (bibtexparser silently moves such blocks to ``failed_blocks``);
- a file with no record, or with more than one;
- a record whose key differs from its file's stem;
- a key defined twice (BibTeX keys compare case-insensitively);
- a record without a title, an author, a year, or a venue (booktitle, journal, school,
  institution, publisher), arXiv eprint or DOI (a bare url does not say what the work is);
- (in [`validate`][fedunlearn.references.validate], for ``fedunlearn check``) a record unfit to
  cite by the rules of [`fedunlearn.bibquality`][fedunlearn.bibquality.quality_problems]:
  truncated or comma-separated authors, ``journal`` on an ``@inproceedings``, an acronym for a
  venue, a DOI written as a link, two files holding the same work (same DOI, arXiv id or
  normalised title);
- a key cited by a catalog entry that no file defines.

Reading never writes: nothing in ``references/`` is modified.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import bibtexparser
from bibtexparser.model import DuplicateBlockKeyBlock, Entry, Field, ParsingFailedBlock

#: Fields every record must have.
REQUIRED_FIELDS: tuple[str, ...] = ("title", "author", "year")
#: A record must also say where it appeared or how to find it: at least one of these.
LOCATOR_FIELDS: tuple[str, ...] = (
    "booktitle", "journal", "school", "institution", "publisher", "eprint", "doi"
)


class ReferenceProblem(Exception):
    """The bibliography in ``references/`` is broken.

    Attributes:
        problems: One line per problem, each naming the file and line or the key at fault.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Reference:
    """One bibliography record.

    Attributes:
        key: The citation key, equal to the file stem.
        entry_type: BibTeX type in lower case (``inproceedings``, ``misc``...).
        fields: Field name (as written) -> raw BibTeX value, braces and LaTeX kept.
        path: The ``.bib`` file the record was read from.
        line: 1-based line of the record in that file.
    """

    key: str
    entry_type: str
    fields: dict[str, str] = field(hash=False)
    path: Path
    line: int

    def get(self, name: str, default: str = "") -> str:
        """The raw value of a field (names compare case-insensitively), or ``default``."""
        for key, value in self.fields.items():
            if key.lower() == name.lower():
                return value
        return default


def default_root() -> Path:
    """The ``references/`` folder of the repository checkout."""
    from fedunlearn.catalog import repo_root

    return repo_root() / "references"


def parse_quietly(text: str):
    """Parse BibTeX text without bibtexparser's own log warnings (we report failures ourselves)."""
    logger = logging.getLogger("bibtexparser")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return bibtexparser.parse_string(text)
    finally:
        logger.setLevel(previous)


def failure_reason(block: ParsingFailedBlock) -> str:
    """Why bibtexparser could not parse a block, in one line."""
    if isinstance(block, DuplicateBlockKeyBlock):
        return f"duplicate key {block.key!r} within the file"
    reason = getattr(block.error, "abort_reason", "")  # BlockAbortedException says why
    if reason:
        return str(reason).strip()
    message = str(block.error).strip().splitlines()
    return message[-1].strip() if message else type(block.error).__name__


def scan(root: Path | str | None = None) -> tuple[dict[str, Reference], list[str]]:
    """Read every ``*.bib`` file of the folder (not recursive), without raising.

    Args:
        root: The references folder; defaults to the checkout's ``references/``.

    Returns:
        The well-formed records (key -> record, sorted by key) and one line per problem.
    """
    root = Path(root) if root is not None else default_root()
    records: dict[str, Reference] = {}
    problems: list[str] = []
    if not root.is_dir():
        return records, [f"{root}: references folder not found"]
    seen: dict[str, Reference] = {}
    for path in sorted(root.glob("*.bib")):
        library = parse_quietly(path.read_text(encoding="utf-8"))
        for block in library.failed_blocks:
            problems.append(
                f"{path}:{block.start_line + 1}: cannot parse this BibTeX block: "
                f"{failure_reason(block)}"
            )
        entries: list[Entry] = list(library.entries)
        if not entries and not library.failed_blocks:
            problems.append(f"{path}:1: no BibTeX record in this file")
        duplicates = [b for b in library.failed_blocks if isinstance(b, DuplicateBlockKeyBlock)]
        if len(entries) + len(duplicates) > 1:
            problems.append(
                f"{path}:1: holds more than one record; keep exactly one record per file"
            )
        for entry in entries:
            line = entry.start_line + 1
            reference = Reference(
                key=entry.key,
                entry_type=entry.entry_type.lower(),
                fields={f.key: str(f.value) for f in entry.fields},
                path=path,
                line=line,
            )
            where = f"{path}:{line}"
            if entry.key != path.stem:
                problems.append(
                    f"{where}: key {entry.key!r} differs from the file name; "
                    f"rename the file to {entry.key}.bib or the key to {path.stem!r}"
                )
            missing = [name for name in REQUIRED_FIELDS if not reference.get(name).strip()]
            if missing:
                problems.append(
                    f"{where}: record {entry.key!r} lacks required field(s): {', '.join(missing)}"
                )
            if not any(reference.get(name).strip() for name in LOCATOR_FIELDS):
                problems.append(
                    f"{where}: record {entry.key!r} needs one of: {', '.join(LOCATOR_FIELDS)}"
                )
            folded = entry.key.lower()
            if folded in seen:
                first = seen[folded]
                problems.append(
                    f"{where}: duplicate key {entry.key!r}, already defined at "
                    f"{first.path}:{first.line}"
                )
                continue
            seen[folded] = reference
            records[entry.key] = reference
    return dict(sorted(records.items())), problems


def _cited_pairs(cited_keys: Mapping[str, Iterable[str]] | Iterable[str]) -> list[tuple[str, str]]:
    if isinstance(cited_keys, Mapping):
        return [(citer, key) for citer, keys in cited_keys.items() for key in keys]
    return [("", key) for key in cited_keys]


def validate(
    root: Path | str | None = None,
    cited_keys: Mapping[str, Iterable[str]] | Iterable[str] = (),
) -> list[str]:
    """Check the bibliography, the quality of its records, and the keys cited against it.

    Args:
        root: The references folder; defaults to the checkout's ``references/``.
        cited_keys: Keys that must exist: either plain keys, or a mapping from who cites them
            (e.g. ``"entry federaser"``) to keys, which makes the messages name the citer.

    Returns:
        One line per problem (empty when all is well), each naming the file and line or the key.
    """
    from fedunlearn.bibquality import find_duplicates, quality_problems

    root = Path(root) if root is not None else default_root()
    records, problems = scan(root)
    for record in records.values():
        problems += [f"{record.path}:{record.line}: record {record.key!r}: {problem}"
                     for problem in quality_problems(record)]
    for record, original, shared in find_duplicates(records.values()):
        problems.append(f"{record.path}:{record.line}: record {record.key!r} duplicates "
                        f"{original.key!r} ({original.path}:{original.line}): same {shared}")
    for citer, key in _cited_pairs(cited_keys):
        if key in records:
            continue
        who = f"{citer}: " if citer else ""
        hint = close_matches(key, records)
        suggestion = f"; did you mean {', '.join(hint)}?" if hint else ""
        problems.append(
            f"{who}cites {key!r}, but {root / (key + '.bib')} does not exist{suggestion}"
        )
    return problems


def load_library(root: Path | str | None = None) -> dict[str, Reference]:
    """Read and validate every record.

    Args:
        root: The references folder; defaults to the checkout's ``references/``.

    Returns:
        Key -> record, sorted by key.

    Raises:
        ReferenceProblem: When any file fails validation (all problems are listed).
    """
    root = Path(root) if root is not None else default_root()
    records, problems = scan(root)
    if problems:
        raise ReferenceProblem(problems)
    return records


def close_matches(key: str, known: Iterable[str], limit: int = 3) -> list[str]:
    """Known keys that look like ``key`` (for "did you mean" messages)."""
    known = list(known)
    by_fold = {k.lower(): k for k in known}
    matches = difflib.get_close_matches(key.lower(), list(by_fold), n=limit, cutoff=0.6)
    return [by_fold[m] for m in matches]


def _as_entry(reference: Reference) -> Entry:
    return Entry(
        entry_type=reference.entry_type,
        key=reference.key,
        fields=[Field(name, value) for name, value in reference.fields.items()],
    )


def format_bibtex(key_or_keys: str | Iterable[str], root: Path | str | None = None) -> str:
    """BibTeX text for one or more keys, in the order given.

    Args:
        key_or_keys: A key or an iterable of keys.
        root: The references folder; defaults to the checkout's ``references/``.

    Returns:
        The records, separated by blank lines; the text parses back with bibtexparser.

    Raises:
        KeyError: For an unknown key, naming close matches.
        ReferenceProblem: When the bibliography itself is broken.
    """
    keys = [key_or_keys] if isinstance(key_or_keys, str) else list(key_or_keys)
    library = load_library(root)
    entries = []
    for key in keys:
        if key not in library:
            hint = close_matches(key, library)
            suggestion = f"; did you mean {', '.join(hint)}?" if hint else ""
            raise KeyError(f"unknown citation key {key!r}{suggestion}")
        entries.append(_as_entry(library[key]))
    style = bibtexparser.BibtexFormat()
    style.indent = "  "
    style.block_separator = "\n"
    text = bibtexparser.write_string(bibtexparser.Library(entries), bibtex_format=style)
    return text.strip() + "\n"


def to_text(value: str) -> str:
    r"""Turn a BibTeX value with LaTeX markup (``{\"u}``, ``\&``, ``{GPT}``) into plain text."""
    from pylatexenc.latex2text import LatexNodes2Text

    text = LatexNodes2Text().latex_to_text(value)
    return " ".join(text.split())


def author_names(reference: Reference) -> list[str]:
    """Authors as "First Last" strings, in order."""
    names = []
    for raw in reference.get("author").split(" and "):
        raw = raw.strip()
        if not raw:
            continue
        if "," in raw:
            last, first = (part.strip() for part in raw.split(",", 1))
            raw = f"{first} {last}".strip()
        names.append(to_text(raw))
    return names


def _join_authors(names: list[str], limit: int = 6) -> str:
    if len(names) > limit:
        return f"{', '.join(names[:3])} et al."
    if len(names) <= 2:
        return " and ".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def venue(reference: Reference) -> str:
    """Where the work appeared: booktitle or journal, else the arXiv identifier, else empty."""
    for name in ("booktitle", "journal"):
        if reference.get(name):
            return to_text(reference.get(name))
    if reference.get("eprint"):
        prefix = reference.get("archiveprefix") or "arXiv"
        prefix = to_text(prefix)
        return f"{prefix} preprint {prefix}:{reference.get('eprint')}"
    return ""


def links(reference: Reference) -> list[tuple[str, str]]:
    """(label, URL) pairs for the record: DOI, arXiv and any explicit URL, without repeats."""
    found: list[tuple[str, str]] = []
    if reference.get("doi"):
        found.append(("DOI", f"https://doi.org/{reference.get('doi')}"))
    prefix = reference.get("archiveprefix").lower()
    if reference.get("eprint") and prefix in ("arxiv", ""):
        found.append(("arXiv", f"https://arxiv.org/abs/{reference.get('eprint')}"))
    url = reference.get("url")
    if url and all(url != known for _, known in found):
        found.append(("URL", url))
    return found


def format_citation(reference: Reference) -> str:
    """Plain-text citation: ``Authors (year). Title. Venue.``"""
    parts = [f"{_join_authors(author_names(reference))} ({reference.get('year')})."]
    parts.append(f"{to_text(reference.get('title')).rstrip('.')}.")
    where = venue(reference)
    if where:
        parts.append(f"{where.rstrip('.')}.")
    return " ".join(parts)
