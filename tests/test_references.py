"""The bibliography loader rejects every kind of broken ``references/`` with a precise message."""

from __future__ import annotations

from pathlib import Path

import bibtexparser
import pytest

from fedunlearn import catalog, references

GOOD = """@inproceedings{{{key},
  title     = {{A Title ({key})}},
  author    = {{Lovelace, Ada and Babbage, Charles}},
  booktitle = {{Proceedings of Somewhere}},
  year      = {{1843}}
}}
"""


def write(root: Path, stem: str, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{stem}.bib"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def refs(tmp_path: Path) -> Path:
    """A valid two-record library."""
    root = tmp_path / "references"
    write(root, "lovelace1843a", GOOD.format(key="lovelace1843a"))
    write(root, "lovelace1843b", GOOD.format(key="lovelace1843b"))
    return root


def only(problems: list[str]) -> str:
    assert len(problems) == 1, problems
    return problems[0]


def test_valid_library_loads(refs: Path) -> None:
    assert references.validate(refs) == []
    library = references.load_library(refs)
    assert list(library) == ["lovelace1843a", "lovelace1843b"]
    record = library["lovelace1843a"]
    assert record.path == refs / "lovelace1843a.bib"
    assert record.line == 1
    assert record.get("YEAR") == "1843"


def test_parse_failure_names_file_and_line(refs: Path) -> None:
    path = write(refs, "broken2020", "\n\n@misc{broken2020,\n  title = {never closed,\n")
    message = only(references.validate(refs))
    assert message.startswith(f"{path}:3:")
    assert "cannot parse" in message


def test_two_records_in_one_file(refs: Path) -> None:
    path = write(
        refs, "twice2020", GOOD.format(key="twice2020") + "\n" + GOOD.format(key="other2020")
    )
    problems = references.validate(refs)
    assert any(p.startswith(f"{path}:1:") and "more than one record" in p for p in problems)


def test_duplicate_key_within_a_file(refs: Path) -> None:
    path = write(refs, "dup2020", GOOD.format(key="dup2020") + "\n" + GOOD.format(key="dup2020"))
    problems = references.validate(refs)
    assert any(p.startswith(f"{path}:8:") and "duplicate key 'dup2020'" in p for p in problems)


def test_duplicate_key_across_files(refs: Path) -> None:
    # This file's key differs from its stem and repeats lovelace1843a (keys ignore case).
    path = write(refs, "zz_copy", GOOD.format(key="Lovelace1843A"))
    problems = references.validate(refs)
    assert len(problems) == 2, problems
    assert any("differs from the file name" in p and p.startswith(f"{path}:1:") for p in problems)
    duplicate = next(p for p in problems if "duplicate key" in p)
    assert duplicate.startswith(f"{path}:1:")
    assert f"{refs / 'lovelace1843a.bib'}:1" in duplicate


def test_key_must_equal_file_stem(refs: Path) -> None:
    path = write(refs, "right2020", GOOD.format(key="wrong2020"))
    message = only(references.validate(refs))
    assert message.startswith(f"{path}:1:")
    assert "'wrong2020' differs from the file name" in message


@pytest.mark.parametrize("field", ["title", "author", "year"])
def test_missing_required_field(refs: Path, field: str) -> None:
    text = "\n".join(
        line
        for line in GOOD.format(key="partial2020").splitlines()
        if not line.strip().startswith(field)
    )
    path = write(refs, "partial2020", text)
    message = only(references.validate(refs))
    assert message.startswith(f"{path}:1:")
    assert f"lacks required field(s): {field}" in message


@pytest.mark.parametrize("extra", ["", ", url = {https://example.org/t}"])
def test_missing_venue_or_locator(refs: Path, extra: str) -> None:
    """Neither venue, eprint nor DOI: a bare url does not say what the work is."""
    text = f"@misc{{nowhere2020, title = {{T}}, author = {{A, B}}, year = {{2020}}{extra}}}\n"
    path = write(refs, "nowhere2020", text)
    message = only(references.validate(refs))
    assert message.startswith(f"{path}:1:")
    assert "booktitle, journal, school, institution, publisher, eprint, doi" in message


def test_empty_file(refs: Path) -> None:
    path = write(refs, "empty2020", "% nothing here\n")
    assert only(references.validate(refs)).startswith(f"{path}:1: no BibTeX record")


def test_cited_but_absent_key_names_citer_and_key(refs: Path) -> None:
    problems = references.validate(refs, {"entry demo": ["lovelace1843a", "lovelace1843c"]})
    message = only(problems)
    assert message.startswith("entry demo: cites 'lovelace1843c'")
    assert "did you mean lovelace1843a" in message or "lovelace1843b" in message


def test_load_library_raises_with_all_problems(refs: Path) -> None:
    write(refs, "right2020", GOOD.format(key="wrong2020"))
    write(refs, "broken2020", "@misc{broken2020, title = {x\n")
    with pytest.raises(references.ReferenceProblem) as caught:
        references.load_library(refs)
    assert len(caught.value.problems) == 2
    assert "right2020.bib:1" in str(caught.value)


def test_reading_modifies_nothing(refs: Path) -> None:
    write(refs, "broken2020", "@misc{broken2020, title = {x\n")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in refs.iterdir()}
    references.validate(refs)
    references.scan(refs)
    with pytest.raises(references.ReferenceProblem):
        references.load_library(refs)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in refs.iterdir()}
    assert before == after


def test_format_bibtex_reparses(refs: Path) -> None:
    text = references.format_bibtex(["lovelace1843b", "lovelace1843a"], refs)
    parsed = bibtexparser.parse_string(text)
    assert parsed.failed_blocks == []
    assert [e.key for e in parsed.entries] == ["lovelace1843b", "lovelace1843a"]
    assert parsed.entries[0]["author"] == "Lovelace, Ada and Babbage, Charles"


def test_format_bibtex_unknown_key_suggests(refs: Path) -> None:
    with pytest.raises(KeyError, match="lovelace1843a"):
        references.format_bibtex("lovelace1834a", refs)


def test_format_citation(refs: Path) -> None:
    record = references.load_library(refs)["lovelace1843a"]
    assert references.format_citation(record) == (
        "Ada Lovelace and Charles Babbage (1843). A Title (lovelace1843a). Proceedings of Somewhere."
    )


def test_format_citation_plain_text_from_latex(tmp_path: Path) -> None:
    root = tmp_path / "references"
    write(
        root,
        "arcas2020x",
        "@misc{arcas2020x, title = {{GPT} \\& Friends}, "
        'author = {Ag{\\"u}era y Arcas, Blaise}, year = {2020}, eprint = {2001.00001}, '
        "archivePrefix = {arXiv}}\n",
    )
    record = references.load_library(root)["arcas2020x"]
    assert references.format_citation(record) == (
        "Blaise Agüera y Arcas (2020). GPT & Friends. arXiv preprint arXiv:2001.00001."
    )
    assert ("arXiv", "https://arxiv.org/abs/2001.00001") in references.links(record)


def test_real_references_validate_clean() -> None:
    entries, _ = catalog.discover(strict=False)
    cited = {f"entry {e.slug}": list(e.citation_keys) for e in entries}
    root = catalog.repo_root() / "references"
    assert references.validate(root, cited) == []
    library = references.load_library(root)
    assert "qu2024federated" in library
    text = references.format_bibtex(list(library), root)
    assert len(bibtexparser.parse_string(text).entries) == len(list(root.glob("*.bib")))


# --------------------------------------------------------------------------- record quality
# `validate` (what `fedunlearn check` runs) applies the rules of fedunlearn.bibquality to every
# record; each message names the file and the line of the record.

QUALITY = """% a comment line, so the record starts on line 2
@{kind}{{{key},
  title     = {{{title}}},
  author    = {{{author}}},
  {venue},
  year      = {{2020}}
}}
"""


def quality_record(root: Path, key: str, **overrides: str) -> Path:
    values = {
        "kind": "inproceedings",
        "key": key,
        "title": f"Distinct Title of {key}",
        "author": "Lovelace, Ada and Babbage, Charles",
        "venue": "booktitle = {Proceedings of Somewhere}",
    }
    values.update(overrides)
    return write(root, key, QUALITY.format(**values))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"author": "Lovelace, Ada and others"}, "truncated author list"),
        ({"author": "Ada Lovelace et al."}, "truncated author list"),
        ({"author": "Ada Lovelace, Charles Babbage, Mary Somerville"}, "separated by commas"),
        ({"author": "Lovelace, Ada, Babbage, Charles"}, "separated by commas"),
        ({"author": "Ada Lovelace, Charles Babbage"}, "separated by commas"),
        ({"venue": "journal = {Proceedings of Somewhere}"}, "carries 'journal' instead of"),
        ({"venue": "booktitle = {ICML}"}, "booktitle = {ICML} is only an acronym"),
        ({"venue": "booktitle = {NeurIPS'22}"}, "is only an acronym"),
        ({"kind": "article", "venue": "journal = {CoRR}"}, "journal = {CoRR} is only an acronym"),
        ({"venue": "doi = {https://doi.org/10.1/x}"}, "give the bare DOI '10.1/x'"),
    ],
)
def test_quality_problem_names_file_line_and_kind(
    refs: Path, overrides: dict[str, str], expected: str
) -> None:
    path = quality_record(refs, "unfit2020", **overrides)
    message = only(references.validate(refs))
    assert message.startswith(f"{path}:2: record 'unfit2020': ")
    assert expected in message


@pytest.mark.parametrize(
    "author",
    [
        "van der Maaten, Laurens and Hinton, Geoffrey",
        "Ag{\\\"u}era y Arcas, Blaise",
        "{Garcia Marquez}, Gabriel Jose",
        "Smith, Jr, John and Kolter, J. Zico",
        "Ada Lovelace and Charles Babbage",
        "{Barnes and Noble, Inc.}",
    ],
)
def test_well_formed_authors_pass(refs: Path, author: str) -> None:
    quality_record(refs, "fine2020", author=author)
    assert references.validate(refs) == []


@pytest.mark.parametrize(
    "venue",
    ["booktitle = {USENIX Security}", "booktitle = {Nature}", "booktitle = {IEEE Access}",
     "journal = {arXiv preprint arXiv:2001.00001}"],
)
def test_venues_with_a_word_pass(refs: Path, venue: str) -> None:
    quality_record(refs, "fine2020", kind="misc", venue=venue)
    assert references.validate(refs) == []


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        ("doi = {10.1000/ABC}", "doi = {https://doi.org/10.1000/abc}", "DOI '10.1000/abc'"),
        ("eprint = {2001.00001}", "url = {https://arxiv.org/abs/2001.00001v3}",
         "arXiv id '2001.00001'"),
    ],
)
def test_duplicate_identifier_across_files(
    refs: Path, first: str, second: str, shared: str
) -> None:
    quality_record(refs, "first2020", kind="misc", venue=first)
    path = quality_record(refs, "second2020", kind="misc", venue=second)
    problems = [p for p in references.validate(refs) if "duplicates" in p]
    message = only(problems)
    assert message.startswith(f"{path}:2: record 'second2020' duplicates 'first2020'")
    assert f"same {shared}" in message


def test_duplicate_normalised_title_across_files(refs: Path) -> None:
    quality_record(refs, "first2020", title="{FedThing}: Forgetting, Fast!")
    path = quality_record(refs, "second2020", title="Fedthing -- forgetting   fast")
    message = only(references.validate(refs))
    assert message.startswith(f"{path}:2: record 'second2020' duplicates 'first2020'")
    assert "same title 'fedthing forgetting fast'" in message


def test_real_references_meet_the_quality_rules() -> None:
    """Every record of the project's references/ passes the import-time quality rules."""
    from fedunlearn import bibquality

    library = references.load_library(catalog.repo_root() / "references")
    for record in library.values():
        assert bibquality.quality_problems(record) == [], record.key
    assert bibquality.find_duplicates(library.values()) == []
