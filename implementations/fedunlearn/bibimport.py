"""Import a multi-record ``.bib`` file into ``references/``, one checked record per file.

``fedunlearn import-bib FILE.bib`` reads every record of the file, proposes its key in the
project's ``<firstauthor><year><word>`` form (see [`propose_key`][fedunlearn.bibimport.propose_key])
and reports, with the file and the line of the record, everything that makes a record unfit:
malformed BibTeX, a missing title / author / year, no venue nor eprint nor DOI, the rules of
[`fedunlearn.bibquality`][fedunlearn.bibquality.quality_problems] (truncated or comma-separated authors,
``journal`` on an ``@inproceedings``, an acronym for a venue), a record that duplicates one already
in the folder or earlier in the file (same DOI, arXiv id or normalised title), and a proposed key
whose file already exists.

It writes nothing unless every record is fit. Files are written atomically (a temporary file in
the folder, then a hard link to the final name, which fails rather than replace an existing
file; where the file system has no hard links, ``os.replace`` after a check), and a failure part
way removes the files this run wrote, so the folder is left as it was.

``--fix`` applies only the normalisations that cannot change what a record says, and reports each:

- ``journal`` -> ``booktitle`` on an ``@inproceedings`` that has no ``booktitle`` (same text,
  the field BibTeX styles read for proceedings);
- ``doi = {https://doi.org/10.1/x}`` -> ``doi = {10.1/x}`` (the same identifier);
- authors joined by commas -> joined by ``and``, when every comma-separated part reads
  "First Last" and either there are three or more parts or the field writes its other names
  "First Last" ([`comma_separated`][fedunlearn.bibquality.comma_separated] returns ``"safe"``).

Not fixed, because fixing would mean guessing: ``Last, First, Last, First`` (the pairing is a
guess), one comma between two multi-word halves (one Spanish name or two people?), ``and
others`` (the missing authors are unknown), an acronym venue (which edition, main track or
workshop?), a missing year or venue, a duplicate, a key clash.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from bibtexparser.model import DuplicateBlockKeyBlock, Entry

from fedunlearn import bibquality
from fedunlearn.references import (
    LOCATOR_FIELDS,
    REQUIRED_FIELDS,
    Reference,
    default_root,
    failure_reason,
    parse_quietly,
    scan,
)

#: Title words skipped when choosing the key's word.
STOP_WORDS = frozenset(
    "a an the on of in for to and or with without via from at by is are "
    "do does can".split()
)

#: BibTeX's month macros, written unbraced (``month = jan``).
MONTHS = frozenset("jan feb mar apr may jun jul aug sep oct nov dec".split())


@dataclass
class Candidate:
    """One record of the input file on its way to ``references/<key>.bib``.

    Attributes:
        record: The record as read (``record.key`` is the input's key).
        key: The proposed key, or "" when the record lacks what a key is made of.
        problems: What makes it unfit (empty when fit).
        changes: The ``--fix`` normalisations applied to it.
    """

    record: Reference
    key: str
    problems: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.record.path}:{self.record.line}"


def family_name(name: str) -> str:
    """The family name of one BibTeX name (``von Last`` of ``First von Last`` or ``Last, First``)."""
    parts = bibquality.split_top_level(name, ",")
    if len(parts) > 1:
        return parts[0]
    words = bibquality.name_words(name)
    for index, word in enumerate(words[1:-1], start=1):
        if word[:1].islower():  # a von particle: "Ludwig van Beethoven"
            return " ".join(words[index:])
    return words[-1] if words else ""


def title_words(title: str) -> list[str]:
    """Lower-case ASCII words of a title, stop words and bare numbers left out."""
    words = []
    for token in re.split(r"[\s\-/:]+", title):
        word = bibquality.ascii_letters(token)
        if word and not word.isdigit() and word not in STOP_WORDS:
            words.append(word)
    return words


def key_parts(record: Reference) -> tuple[str, str, list[str]] | None:
    """(first author's family name, year, significant title words), or None if one is missing."""
    names = bibquality.author_list(record.get("author"))
    first = names[0] if names else ""
    if bibquality.comma_separated(first, bibquality.uses_first_last(names)):
        first = bibquality.split_top_level(first, ",")[0]  # "Alice Smith, Bob Jones": Smith
    author = bibquality.ascii_letters(family_name(first)) if first else ""
    year = re.search(r"\d{4}", record.get("year"))
    words = title_words(record.get("title"))
    if not (author and year and words):
        return None
    return author, year.group(0), words


def propose_key(record: Reference) -> str:
    """``<firstauthor><year><word>``: first author's family name (lower case, ASCII), year, and
    the first title word that is not a stop word (a, an, the, on, of...; "towards" is a word, as in
    the library's keys).

    ``{FedEraser}: Enabling...`` by ``Liu, Gaoyang and ...`` in 2021 gives ``liu2021federaser``;
    returns "" when the author, year or title is missing.
    """
    parts = key_parts(record)
    return f"{parts[0]}{parts[1]}{parts[2][0]}" if parts else ""


def _alternative_keys(record: Reference) -> list[str]:
    parts = key_parts(record)
    return [f"{parts[0]}{parts[1]}{word}" for word in parts[2][1:3]] if parts else []


def apply_safe_fixes(record: Reference) -> tuple[Reference, list[str]]:
    """The record with the safe normalisations applied (see the module docstring), and what changed."""
    fields = dict(record.fields)
    changes = []
    names = {name.lower(): name for name in fields}
    if record.entry_type == "inproceedings" and "journal" in names and "booktitle" not in names:
        journal = names["journal"]
        fields = {("booktitle" if k == journal else k): v for k, v in fields.items()}
        changes.append("@inproceedings: renamed 'journal' to 'booktitle'")
    if "doi" in names and bibquality.bare_doi(fields[names["doi"]]) != fields[names["doi"]]:
        fields[names["doi"]] = bibquality.bare_doi(fields[names["doi"]])
        changes.append("doi: removed the resolver prefix (https://doi.org/, doi:)")
    if "author" in names:
        original = fields[names["author"]]
        authors = bibquality.author_list(original)
        first_last = bibquality.uses_first_last(authors)
        split = []
        for name in authors:
            if bibquality.comma_separated(name, first_last) == "safe":
                split += bibquality.split_top_level(name, ",")
            else:
                split.append(name)
        if split != authors:
            fields[names["author"]] = " and ".join(split)
            changes.append(f"author: commas replaced by 'and' ({len(split)} authors)")
    return replace(record, fields=fields), changes


def _entry_record(entry: Entry, path: Path, raw_values: bool = False) -> Reference:
    fields = {}
    for item in entry.fields:
        value = str(item.value).strip()
        if raw_values and len(value) >= 2 and (value[0], value[-1]) in (("{", "}"), ('"', '"')):
            value = value[1:-1]
        fields[item.key] = " ".join(value.split())
    return Reference(entry.key, entry.entry_type.lower(), fields, path, entry.start_line + 1)


def read_records(path: Path) -> tuple[list[Reference], list[str]]:
    """Every record of a ``.bib`` file (in order) and its parse failures, with file and line."""
    library = parse_quietly(path.read_text(encoding="utf-8"))
    records = [_entry_record(entry, path) for entry in library.entries]
    problems = []
    for block in library.failed_blocks:
        if isinstance(block, DuplicateBlockKeyBlock) and isinstance(block.ignore_error_block, Entry):
            # Keys are proposed afresh, so a repeated input key is no problem by itself.
            records.append(_entry_record(block.ignore_error_block, path, raw_values=True))
            continue
        problems.append(
            f"{path}:{block.start_line + 1}: malformed BibTeX, cannot parse this block: "
            f"{failure_reason(block)}"
        )
    for string in library.strings:  # their uses would be written as literal text
        problems.append(f"{path}:{string.start_line + 1}: @string macro {string.key!r}: "
                        "expand it into the records that use it; macros are not imported")
    records.sort(key=lambda record: record.line)
    if not records and not problems:
        problems.append(f"{path}:1: no BibTeX record in this file")
    return records, problems


def _field_problems(record: Reference) -> list[str]:
    problems = [f"missing {name}" for name in REQUIRED_FIELDS if not record.get(name).strip()]
    if not any(record.get(name).strip() for name in LOCATOR_FIELDS):
        problems.append("no venue (booktitle, journal...), no eprint and no DOI")
    return problems


def _report_key_clashes(candidates: list[Candidate], into: Path) -> None:
    """A proposed key whose file exists, or that an earlier record of the input also gets."""
    taken: dict[str, Candidate] = {}
    existing = {path.stem.lower() for path in into.glob("*.bib")}
    for candidate in candidates:
        key = candidate.key
        if not key or any(p.startswith("duplicates ") for p in candidate.problems):
            continue  # a duplicate is reported as such, not as a clash
        others = ", ".join(k for k in _alternative_keys(candidate.record)
                           if k.lower() not in existing and k not in taken)
        hint = f"; choose another title word, e.g. {others}" if others else ""
        if key.lower() in existing:
            candidate.problems.append(
                f"key clash: proposed key {key!r} but {into / (key + '.bib')} already exists{hint}"
            )
        elif key in taken:
            candidate.problems.append(
                f"key clash: proposed key {key!r} is also proposed for {taken[key].where}{hint}"
            )
        else:
            taken[key] = candidate


def plan_import(source: Path, into: Path, fix: bool = False) -> tuple[list[Candidate], list[str]]:
    """Read ``source``, check every record against itself, the file and the library in ``into``.

    Returns:
        The candidates in file order and every problem (``file:line: ...``); nothing is written.
    """
    records, problems = read_records(source)
    library, _ = scan(into)
    candidates = []
    for record in records:
        changes: list[str] = []
        if fix:
            record, changes = apply_safe_fixes(record)
        candidate = Candidate(record, propose_key(record), changes=changes)
        candidate.problems += _field_problems(record) + bibquality.quality_problems(record)
        candidates.append(candidate)
    by_record = {id(c.record): c for c in candidates}
    for record, original, shared in bibquality.find_duplicates(
        [c.record for c in candidates], library.values()
    ):
        origin = "earlier in this file" if original.path == source else "in the library"
        by_record[id(record)].problems.append(
            f"duplicates {original.key!r} {origin} ({original.path}:{original.line}): same {shared}"
        )
    _report_key_clashes(candidates, into)
    for candidate in candidates:
        label = f"record {candidate.record.key!r}" + (
            f" (key {candidate.key})" if candidate.key else "")
        problems += [f"{candidate.where}: {label}: {p}" for p in candidate.problems]
    problems.sort(key=_line_order)
    return candidates, problems


def _line_order(problem: str) -> int:
    match = re.search(r":(\d+): ", problem)
    return int(match.group(1)) if match else 0


def render(key: str, record: Reference) -> str:
    """The record as the project writes it: ``@type{key,``, aligned ``name = {value}`` lines."""
    width = max((len(name) for name in record.fields), default=0)
    lines = [
        f"  {name.ljust(width)} = "
        + (value if name.lower() == "month" and value.lower() in MONTHS else f"{{{value}}}")
        for name, value in record.fields.items()
    ]
    return f"@{record.entry_type}{{{key},\n" + ",\n".join(lines) + "\n}\n"


def _link_without_replacing(temporary: Path, target: Path) -> None:
    try:
        os.link(temporary, target)  # atomic, and fails if target exists
    except FileExistsError:
        raise
    except OSError:  # no hard links here: check, then rename atomically
        if target.exists():
            raise FileExistsError(target) from None
        os.replace(temporary, target)


def write_records(candidates: list[Candidate], into: Path) -> list[Path]:
    """Write each candidate to ``into/<key>.bib``: all or nothing, never replacing a file.

    Raises:
        FileExistsError: A target appeared meanwhile (every file written by this call is removed).
        OSError: Writing failed (likewise cleaned up).
    """
    staged: list[tuple[Path, Path]] = []
    written: list[Path] = []
    umask = os.umask(0)
    os.umask(umask)
    try:
        for candidate in candidates:
            handle = tempfile.NamedTemporaryFile(
                "w", encoding="utf-8", dir=into, prefix=f".{candidate.key}.", suffix=".tmp",
                delete=False,
            )
            with handle:
                handle.write(render(candidate.key, candidate.record))
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(handle.name, 0o666 & ~umask)  # a plain file, not the temporary 0600
            staged.append((Path(handle.name), into / f"{candidate.key}.bib"))
        for temporary, target in staged:
            _link_without_replacing(temporary, target)
            written.append(target)
    except BaseException:
        for target in written:
            target.unlink(missing_ok=True)
        raise
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    return written


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``fedunlearn import-bib``."""
    parser.add_argument("file", type=Path, metavar="FILE.bib", help="BibTeX file to import")
    parser.add_argument(
        "--fix",
        action="store_true",
        help="apply the safe normalisations (journal -> booktitle on @inproceedings; a DOI "
        "link -> the bare DOI; authors joined by commas -> by 'and' when every part is "
        "'First Last') and report each",
    )
    parser.add_argument(
        "--into",
        type=Path,
        default=None,
        metavar="DIR",
        help="the references folder to import into (default: the project's references/)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``fedunlearn import-bib``: exit 0 when every record was written, 1 otherwise."""
    from fedunlearn.cli import CommandError

    into = args.into if args.into is not None else default_root()
    if not args.file.is_file():
        raise CommandError(f"{args.file}: no such file")
    if not into.is_dir():
        raise CommandError(f"{into}: no such references folder (create it, or fix --into)")
    try:
        candidates, problems = plan_import(args.file, into, fix=args.fix)
    except UnicodeDecodeError as exc:
        raise CommandError(f"{args.file}: not UTF-8 text ({exc.reason} at byte {exc.start})", 1) \
            from None
    verb = "fixed" if not problems else "would fix"
    for candidate in candidates:
        for change in candidate.changes:
            print(f"{candidate.where}: {verb}: {change}")
    if problems:
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s) in {args.file}; nothing written to {into}",
              file=sys.stderr)
        return 1
    try:
        written = write_records(candidates, into)
    except OSError as exc:
        raise CommandError(f"nothing written to {into}: {exc}", status=1) from None
    for candidate, path in zip(candidates, written, strict=True):
        renamed = "" if candidate.key == candidate.record.key else \
            f" (key {candidate.record.key!r} -> {candidate.key!r})"
        print(f"wrote {path} from {candidate.where}{renamed}")
    print(f"{len(written)} record(s) imported into {into}")
    return 0
