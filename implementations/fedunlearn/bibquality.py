"""Quality rules for bibliography records, shared by ``fedunlearn check`` and ``import-bib``.

A record can parse and still be unfit to cite. These rules catch what BibTeX exports from
publishers, Google Scholar and DBLP commonly get wrong:

- a truncated author list (``and others``, ``et al.``);
- authors separated by commas instead of ``and`` (BibTeX then reads one long name);
- an ``@inproceedings`` carrying ``journal`` instead of ``booktitle``;
- a venue given only as an acronym (``booktitle = {ICML}``, ``journal = {CoRR}``);
- a DOI written as a link (the pages prepend ``https://doi.org/`` themselves);
- two records of the same work: the same DOI, the same arXiv identifier, or the same title once
  lower-cased with LaTeX, braces and punctuation removed.

Required fields (title, author, year) and the need for a venue, eprint or DOI are checked where
the library is read ([`scan`][fedunlearn.references.scan]); these rules come on top. Every
function here takes [`Reference`][fedunlearn.references.Reference] records and returns messages
without a location: the caller prefixes ``file:line``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from fedunlearn.references import Reference, to_text

#: Fields that name where a work appeared.
VENUE_FIELDS: tuple[str, ...] = ("booktitle", "journal")
#: Name suffixes BibTeX allows between two commas: ``Last, Jr, First``.
NAME_SUFFIXES = frozenset({"jr", "jr.", "sr", "sr.", "ii", "iii", "iv"})


def split_top_level(text: str, separator: str) -> list[str]:
    """Split at a separator (a regular expression) outside braces; parts are stripped."""
    parts, depth, start = [], 0, 0
    pattern = re.compile(separator, re.IGNORECASE)
    position = 0
    while position < len(text):
        char = text[position]
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(depth - 1, 0)
        elif depth == 0:
            match = pattern.match(text, position)
            if match and match.end() > position:
                parts.append(text[start:position].strip())
                start = position = match.end()
                continue
        position += 1
    parts.append(text[start:].strip())
    return parts


def author_list(value: str) -> list[str]:
    """The names of an author field, split at ``and`` outside braces."""
    return [name for name in split_top_level(" ".join(value.split()), r"\s+and\s+") if name]


def name_words(part: str) -> list[str]:
    """Words of a name part; a braced group counts as one word."""
    return [word for word in split_top_level(part, r"\s+") if word]


def _looks_like_first_last(part: str) -> bool:
    """"Alice Smith": two or more words, the first one capitalised (not a ``von`` particle)."""
    words = name_words(part)
    return len(words) >= 2 and words[0].lstrip("{\\'\"`").strip()[:1].isupper()


def comma_separated(name: str, field_uses_first_last: bool = False) -> str | None:
    """Whether one name of an author field is really several authors joined by commas.

    A BibTeX name holds at most two commas (``von Last, Jr, First``), so commas that are not
    that form mean a list. Splitting it is only *safe* when every comma-separated part reads
    "First Last" and either there are three or more parts, or another name of the same field is
    written "First Last" (``Alice Smith, Bob Jones and Carol White``). ``Smith, Alice, Jones,
    Bob`` cannot be paired with confidence, and one comma between two multi-word halves on its own
    (``Alice Smith, Bob Jones`` or ``García Márquez, Gabriel José``?) may be a single author.

    Args:
        name: One name of the author field (already split at ``and``).
        field_uses_first_last: Another name of the same field is written "First Last".

    Returns:
        ``"safe"`` (split at the commas), ``"ambiguous"`` (a list, or maybe one name, that only
        a person can rewrite), or None (a well-formed name).
    """
    parts = split_top_level(name, ",")
    if len(parts) < 2:
        return None
    if len(parts) == 3 and parts[1].lower() in NAME_SUFFIXES and all(parts):
        return None
    first_last = all(part and _looks_like_first_last(part) for part in parts)
    if len(parts) == 2 and not first_last:
        return None if all(parts) else "ambiguous"
    if first_last and (len(parts) >= 3 or field_uses_first_last):
        return "safe"
    return "ambiguous"


def uses_first_last(names: list[str]) -> bool:
    """Some name of the field is written "First Last" (no comma, two or more words)."""
    return any("," not in name and len(name_words(name)) >= 2 for name in names)


def _plain(value: str) -> str:
    return to_text(value) if "\\" in value or "{" in value else " ".join(value.split())


def is_acronym(venue: str) -> bool:
    """True when a venue has no word, only acronyms and numbers (``ICML``, ``NeurIPS'22``).

    A word is all lower case (``of``, ``preprint``) or capitalised with three or more letters
    (``Proceedings``, ``Nature``); ``CoRR``, ``arXiv`` and ``SIGKDD`` are not words.
    """
    tokens = re.findall(r"[^\W\d_]+", _plain(venue))
    words = [t for t in tokens if t.islower() and len(t) >= 2 or (len(t) >= 3 and t[1:].islower())]
    return bool(tokens) and not words


def quality_problems(record: Reference) -> list[str]:
    """What makes one record unfit, beyond missing fields: one message per problem."""
    problems = []
    names = author_list(record.get("author"))
    if any(name.strip("{}").lower() in ("others", "et al.", "et al") for name in names) or re.search(
        r"\bet\s+al\b", record.get("author"), re.IGNORECASE
    ):
        problems.append(
            "truncated author list ('and others' / 'et al.'); list every author from the paper"
        )
    first_last = uses_first_last(names)
    for name in names:
        if comma_separated(name, first_last):
            problems.append(
                f"authors separated by commas instead of 'and' in {name!r}; write "
                "'Last, First and Last, First' (a multi-word family name goes in braces: "
                "'{García Márquez}, Gabriel')"
            )
            break
    if record.entry_type == "inproceedings" and record.get("journal").strip():
        problems.append("@inproceedings carries 'journal' instead of 'booktitle'")
    doi = record.get("doi").strip()
    if doi and bare_doi(doi) != doi:
        problems.append(f"doi = {{{doi}}} is a link; give the bare DOI {bare_doi(doi)!r}")
    for field_name in VENUE_FIELDS:
        value = record.get(field_name).strip()
        if value and is_acronym(value):
            problems.append(
                f"venue {field_name} = {{{value}}} is only an acronym; give the full name, "
                f"e.g. 'International Conference on Machine Learning (ICML)'"
            )
    return problems


# --------------------------------------------------------------------------- duplicates

_DOI_PREFIX = re.compile(r"^(https?://(dx\.)?doi\.org/|doi:\s*)", re.IGNORECASE)
_ARXIV_ID = re.compile(r"(\d{4}\.\d{4,5}|[a-z-]+(\.[A-Z]{2})?/\d{7})(v\d+)?")
_ARXIV_URL = re.compile(r"arxiv\.org/(abs|pdf)/([^\s?#]+?)(\.pdf)?/?$", re.IGNORECASE)


def bare_doi(value: str) -> str:
    """A DOI without its resolver prefix (``https://doi.org/``, ``doi:``)."""
    return _DOI_PREFIX.sub("", value.strip())


def normalised_title(value: str) -> str:
    """Lower case, LaTeX and braces removed, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", _plain(value)).casefold()
    return " ".join(re.sub(r"[^\w\s]|_", " ", text).split())


def arxiv_id(record: Reference) -> str:
    """The arXiv identifier, without version, from eprint, url or an ``arXiv:`` journal; or ''."""
    prefix = (record.get("archiveprefix") or record.get("eprinttype")).strip().lower()
    candidates = []
    if prefix in ("", "arxiv"):
        candidates.append(re.sub(r"^arxiv:\s*", "", record.get("eprint").strip(), flags=re.I))
    url = _ARXIV_URL.search(record.get("url").strip())
    if url:
        candidates.append(url.group(2))
    journal = re.search(r"arxiv:\s*(\S+)", record.get("journal"), re.IGNORECASE)
    if journal:
        candidates.append(journal.group(1))
    for candidate in candidates:
        match = _ARXIV_ID.fullmatch(candidate.strip())
        if match:
            return match.group(1)
    return ""


def identities(record: Reference) -> list[tuple[str, str]]:
    """(label, value) pairs that identify the work: DOI, arXiv id, normalised title."""
    found = []
    doi = bare_doi(record.get("doi")).lower()
    if doi:
        found.append(("DOI", doi))
    arxiv = arxiv_id(record)
    if arxiv:
        found.append(("arXiv id", arxiv))
    title = normalised_title(record.get("title"))
    if title:
        found.append(("title", title))
    return found


def find_duplicates(
    records: Iterable[Reference], known: Iterable[Reference] = ()
) -> list[tuple[Reference, Reference, str]]:
    """Records that repeat a known one or an earlier one of ``records``.

    Returns:
        (duplicate, original, label) triples; label says what they share (``DOI 10.1/x``).
    """
    seen: dict[tuple[str, str], Reference] = {}
    for record in known:
        for identity in identities(record):
            seen.setdefault(identity, record)
    duplicates = []
    for record in records:
        for identity in identities(record):
            if identity in seen:
                label, value = identity
                duplicates.append((record, seen[identity], f"{label} {value!r}"))
                break
        for identity in identities(record):
            seen.setdefault(identity, record)
    return duplicates


def ascii_letters(value: str) -> str:
    r"""Lower-case ASCII letters and digits of a BibTeX value (``Ag{\"u}era`` -> ``aguera``)."""
    folded = unicodedata.normalize("NFKD", _plain(value))
    return re.sub(r"[^a-z0-9]", "", folded.encode("ascii", "ignore").decode().lower())
