"""``import-bib``: key proposal, every unfit case with file and line, --fix, all-or-nothing writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedunlearn import bibimport, catalog, references
from fedunlearn.references import Reference

LIBRARY_RECORD = """@inproceedings{lovelace1843notes,
  title     = {Notes on the Analytical Engine},
  author    = {Lovelace, Ada},
  booktitle = {Scientific Memoirs},
  year      = {1843},
  doi       = {10.1000/engine},
  eprint    = {1843.00001},
  archivePrefix = {arXiv}
}
"""

FIT = """@inproceedings{{{key},
  title     = {{{title}}},
  author    = {{Babbage, Charles and Somerville, Mary}},
  booktitle = {{Proceedings of the Difference Engine Society}},
  year      = {{1850}}
}}
"""


@pytest.fixture
def into(tmp_path: Path) -> Path:
    """A references folder holding one record."""
    root = tmp_path / "references"
    root.mkdir()
    (root / "lovelace1843notes.bib").write_text(LIBRARY_RECORD, encoding="utf-8")
    return root


def source(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "input.bib"
    path.write_text(text, encoding="utf-8")
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(root.iterdir())}


def record(**fields: str) -> Reference:
    return Reference("k", "article", fields, Path("x.bib"), 1)


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("author", "year", "title", "key"),
    [
        ("Liu, Gaoyang and Ma, Xiaoqiang", "2021", "{FedEraser}: Enabling Efficient", "liu2021federaser"),
        ("Nicholas Carlini and Chang Liu", "2019", "The Secret Sharer", "carlini2019secret"),
        ("McMahan, H. Brendan", "2017", "Communication-Efficient Learning", "mcmahan2017communication"),
        ("M{\\\"u}ller, J{\\\"o}rg", "2021", "On the {Über} Model", "muller2021uber"),
        ("Ludwig van Beethoven", "1808", "Towards a Symphony", "vanbeethoven1808towards"),
        ("van der Maaten, Laurens", "2008", "Of 3 Dimensions", "vandermaaten2008dimensions"),
        ("Alice Smith, Bob Jones", "2020", "A Paper", "smith2020paper"),
    ],
)
def test_propose_key(author: str, year: str, title: str, key: str) -> None:
    assert bibimport.propose_key(record(author=author, year=year, title=title)) == key


def test_propose_key_needs_author_year_and_title() -> None:
    assert bibimport.propose_key(record(author="Smith, A", title="Paper")) == ""


def test_propose_key_reproduces_the_library() -> None:
    """Every key of the project's library is the one the form proposes for its record."""
    library = references.load_library(catalog.repo_root() / "references")
    differing = {key: bibimport.propose_key(r) for key, r in library.items()
                 if bibimport.propose_key(r) != key}
    assert differing == {}


# --------------------------------------------------------------------------- unfit records

UNFIT = [
    ("author    = {Babbage, Charles and others},", "truncated author list"),
    ("author    = {Charles Babbage, Mary Somerville, Ada Lovelace},", "separated by commas"),
    ("journal   = {Proceedings of the Difference Engine Society},", "carries 'journal'"),
    ("booktitle = {ICML},", "booktitle = {ICML} is only an acronym"),
    ("year      = {},", "missing year"),
]


@pytest.mark.parametrize(("replacement", "expected"), UNFIT)
def test_each_unfit_case_names_file_and_line_and_writes_nothing(
    tmp_path: Path, into: Path, replacement: str, expected: str
) -> None:
    lines = FIT.format(key="second", title="Second Paper").splitlines()
    field = replacement.split("=")[0].strip()
    target = {"journal": "booktitle"}.get(field, field)
    lines = [replacement if line.strip().startswith(target) else line for line in lines]
    text = FIT.format(key="first", title="First Paper") + "\n" + "\n".join(lines) + "\n"
    path = source(tmp_path, text)
    before = snapshot(into)
    candidates, problems = bibimport.plan_import(path, into)
    assert len(candidates) == 2
    message = next(p for p in problems if expected in p)
    assert message.startswith(f"{path}:8: record 'second'"), problems
    assert all(p.startswith(f"{path}:8:") for p in problems)
    assert snapshot(into) == before


def test_no_venue_eprint_or_doi(tmp_path: Path, into: Path) -> None:
    path = source(tmp_path, "\n@misc{x, title = {T}, author = {Doe, J}, year = {2020},\n"
                  "  url = {https://example.org}}\n")
    _, problems = bibimport.plan_import(path, into)
    assert problems == [f"{path}:2: record 'x' (key doe2020t): no venue (booktitle, journal...), "
                        "no eprint and no DOI"]


def test_malformed_bibtex(tmp_path: Path, into: Path) -> None:
    text = FIT.format(key="first", title="First Paper") + "\n@article{broken,\n  title = {Never\n"
    path = source(tmp_path, text)
    _, problems = bibimport.plan_import(path, into)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:8: malformed BibTeX")


def test_file_without_records(tmp_path: Path, into: Path) -> None:
    _, problems = bibimport.plan_import(source(tmp_path, "% nothing\n"), into)
    assert problems == [f"{tmp_path / 'input.bib'}:1: no BibTeX record in this file"]


@pytest.mark.parametrize(
    ("extra", "title", "shared"),
    [
        ("doi = {https://doi.org/10.1000/ENGINE},", "Other Title", "DOI '10.1000/engine'"),
        ("eprint = {arXiv:1843.00001v2},", "Other Title", "arXiv id '1843.00001'"),
        ("", "{NOTES} on the analytical-engine.", "title 'notes on the analytical engine'"),
    ],
)
def test_duplicate_of_the_library(
    tmp_path: Path, into: Path, extra: str, title: str, shared: str
) -> None:
    text = (f"@article{{again,\n  title = {{{title}}},\n  author = {{Babbage, Charles}},\n"
            f"  {extra}\n  journal = {{Journal of Engines}},\n  year = {{1850}}\n}}\n")
    path = source(tmp_path, text)
    _, problems = bibimport.plan_import(path, into)
    message = next(p for p in problems if "duplicates" in p)
    assert message.startswith(f"{path}:1: record 'again'")
    assert f"duplicates 'lovelace1843notes' in the library ({into / 'lovelace1843notes.bib'}:1)" \
        in message
    assert f"same {shared}" in message


def test_duplicate_earlier_in_the_same_file(tmp_path: Path, into: Path) -> None:
    text = FIT.format(key="one", title="Engines") + "\n" + FIT.format(key="two", title="ENGINES!")
    path = source(tmp_path, text)
    _, problems = bibimport.plan_import(path, into)
    assert problems == [f"{path}:8: record 'two' (key babbage1850engines): duplicates 'one' "
                        f"earlier in this file ({path}:1): same title 'engines'"]


def test_key_clash_is_a_problem_not_an_overwrite(tmp_path: Path, into: Path) -> None:
    (into / "babbage1850engines.bib").write_text(
        FIT.format(key="babbage1850engines", title="A Different Work"), encoding="utf-8")
    path = source(tmp_path, FIT.format(key="mine", title="Engines of Difference"))
    before = snapshot(into)
    _, problems = bibimport.plan_import(path, into)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:1: record 'mine' (key babbage1850engines): key clash")
    assert "e.g. babbage1850difference" in problems[0]
    assert snapshot(into) == before


def test_key_clash_within_the_file(tmp_path: Path, into: Path) -> None:
    text = (FIT.format(key="a", title="Engines of Difference") + "\n"
            + FIT.format(key="b", title="Engines of Analysis"))
    _, problems = bibimport.plan_import(source(tmp_path, text), into)
    assert len(problems) == 1
    assert ":8: record 'b' (key babbage1850engines): key clash" in problems[0]
    assert "also proposed for" in problems[0] and "babbage1850analysis" in problems[0]


# --------------------------------------------------------------------------- --fix and writing


def test_fix_applies_only_safe_normalisations(tmp_path: Path, into: Path) -> None:
    text = """@inproceedings{orig,
  title   = {Engines},
  author  = {Charles Babbage, Mary Somerville, Ada Lovelace},
  journal = {Proceedings of the Difference Engine Society},
  year    = {1850},
  doi     = {https://doi.org/10.1000/fix}
}
"""
    path = source(tmp_path, text)
    _, problems = bibimport.plan_import(path, into)
    assert len(problems) == 3  # commas, journal, DOI link
    candidates, problems = bibimport.plan_import(path, into, fix=True)
    assert problems == []
    (candidate,) = candidates
    assert len(candidate.changes) == 3
    fixed = candidate.record
    assert fixed.get("author") == "Charles Babbage and Mary Somerville and Ada Lovelace"
    assert fixed.get("booktitle") == "Proceedings of the Difference Engine Society"
    assert fixed.get("journal") == "" and fixed.get("doi") == "10.1000/fix"
    assert list(fixed.fields) == ["title", "author", "booktitle", "year", "doi"]


@pytest.mark.parametrize(
    "author", ["Babbage, Charles, Somerville, Mary", "Charles Babbage, Mary Somerville"]
)
def test_fix_leaves_ambiguous_commas_alone(tmp_path: Path, into: Path, author: str) -> None:
    text = FIT.format(key="x", title="Engines").replace(
        "Babbage, Charles and Somerville, Mary", author)
    candidates, problems = bibimport.plan_import(source(tmp_path, text), into, fix=True)
    assert candidates[0].changes == []
    assert len(problems) == 1 and "separated by commas" in problems[0]


def test_fix_does_not_touch_truncated_authors(tmp_path: Path, into: Path) -> None:
    text = FIT.format(key="x", title="Engines").replace("Somerville, Mary", "others")
    candidates, problems = bibimport.plan_import(source(tmp_path, text), into, fix=True)
    assert candidates[0].changes == [] and "truncated" in problems[0]


def test_written_records_validate_and_keep_the_values(tmp_path: Path, into: Path) -> None:
    text = (FIT.format(key="A1", title="Engines of Difference") + "\n"
            + FIT.format(key="A1", title="{\\\"U}ber Engines"))  # a repeated input key is fine
    candidates, problems = bibimport.plan_import(source(tmp_path, text), into)
    assert problems == []
    written = bibimport.write_records(candidates, into)
    assert [p.name for p in written] == ["babbage1850engines.bib", "babbage1850uber.bib"]
    assert references.validate(into) == []
    library = references.load_library(into)
    assert library["babbage1850uber"].get("title") == "{\\\"U}ber Engines"
    assert library["babbage1850engines"].get("author") == "Babbage, Charles and Somerville, Mary"
    assert not list(into.glob(".*"))  # no temporary file left


def test_write_is_all_or_nothing_and_never_replaces(
    tmp_path: Path, into: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target that appears between the check and the write: nothing replaced, nothing left."""
    text = (FIT.format(key="a", title="Engines of Difference") + "\n"
            + FIT.format(key="b", title="Analysis"))
    candidates, problems = bibimport.plan_import(source(tmp_path, text), into)
    assert problems == []
    (into / "babbage1850analysis.bib").write_text("someone else's\n", encoding="utf-8")
    before = snapshot(into)
    with pytest.raises(FileExistsError):
        bibimport.write_records(candidates, into)
    assert snapshot(into) == before


def test_write_without_hard_links_falls_back_to_replace(
    tmp_path: Path, into: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source, target):
        raise OSError("hard links not supported")

    monkeypatch.setattr(bibimport.os, "link", no_links)
    candidates, _ = bibimport.plan_import(source(tmp_path, FIT.format(key="a", title="T")), into)
    (written,) = bibimport.write_records(candidates, into)
    assert written.name == "babbage1850t.bib" and references.validate(into) == []
    before = snapshot(into)
    with pytest.raises(FileExistsError):
        bibimport.write_records(candidates, into)
    assert snapshot(into) == before


def test_string_macros_are_reported_not_imported(tmp_path: Path, into: Path) -> None:
    text = '@string{sme = "Scientific Memoirs"}\n' + FIT.format(key="a", title="T")
    path = source(tmp_path, text)
    _, problems = bibimport.plan_import(path, into)
    assert problems == [f"{path}:1: @string macro 'sme': expand it into the records that use it; "
                        "macros are not imported"]


def test_render_keeps_month_macros_unbraced() -> None:
    text = bibimport.render("k2020t", record(title="T", month="mar", year="2020"))
    assert text == "@article{k2020t,\n  title = {T},\n  month = mar,\n  year  = {2020}\n}\n"
