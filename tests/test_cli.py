"""The ``fedunlearn`` command line: list, cite, check, and the optional-subcommand mechanism."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import bibtexparser
import pytest

from fedunlearn import catalog, cli, references


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--help")
    assert status == 0
    for name in ("list", "cite", "check", "import-bib", "new"):
        assert name in out


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys)
    assert status == 2
    assert "usage" in err


def test_list_json_structure(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "list", "--format", "json")
    assert status == 0
    listed = json.loads(out)
    entries, _ = catalog.discover(strict=False)
    assert [item["slug"] for item in listed] == [e.slug for e in entries]
    for item, entry in zip(listed, entries, strict=True):
        assert item == entry.as_dict()
        for field in ("slug", "family", "title", "citation_keys", "implementation"):
            assert item[field]
        assert item["family"] in catalog.FAMILIES
        assert item["notebook"] == f"notebooks/{item['family']}/{item['slug']}.py"
        assert item["test"] == f"tests/{item['family']}/test_{item['slug']}.py"


def test_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "list")
    assert status == 0
    entries, _ = catalog.discover(strict=False)
    if entries:
        assert out.splitlines()[0].split() == ["FAMILY", "SLUG", "TITLE", "CITATION", "KEYS"]
        for entry in entries:
            assert entry.slug in out
    else:
        assert "no entries" in out


def test_cite_prints_parseable_bibtex(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "cite", "liu2021federaser", "mcmahan2017communication")
    assert status == 0
    parsed = bibtexparser.parse_string(out)
    assert parsed.failed_blocks == []
    assert [e.key for e in parsed.entries] == ["liu2021federaser", "mcmahan2017communication"]


def test_cite_all(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "cite", "--all")
    assert status == 0
    keys = [e.key for e in bibtexparser.parse_string(out).entries]
    assert keys == sorted(p.stem for p in (catalog.repo_root() / "references").glob("*.bib"))


def test_cite_entry_slug_prints_its_keys(capsys: pytest.CaptureFixture[str]) -> None:
    entries, _ = catalog.discover(strict=False)
    if not entries:
        pytest.skip("no entries in the catalog yet")
    status, out, _ = run(capsys, "cite", entries[0].slug)
    assert status == 0
    keys = [e.key for e in bibtexparser.parse_string(out).entries]
    assert keys == list(dict.fromkeys(entries[0].citation_keys))


def test_cite_unknown_key_exits_2_with_close_matches(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "cite", "liu2021federasr")
    assert status == 2
    assert out == ""
    assert "unknown citation key or entry 'liu2021federasr'" in err
    assert "liu2021federaser" in err
    assert "Traceback" not in err


def test_cite_without_keys_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "cite")
    assert status == 2
    assert "--all" in err


def test_bad_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "list", "--format", "yaml")
    assert status == 2
    assert "invalid choice" in err


def test_check_real_repository(capsys: pytest.CaptureFixture[str]) -> None:
    """Every entry that exists is complete: imports, citations, notebook, test and page."""
    status, out, err = run(capsys, "check")
    assert status == 0, out + err
    assert out.startswith("OK: ")


def test_check_reports_each_missing_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = catalog.Entry(
        slug="demo",
        family="incremental",
        title="Demo",
        citation_keys=("nosuch2020",),
        summary="A fake entry.",
        implementation="fedunlearn.catalog",
    )
    monkeypatch.setattr(catalog, "discover", lambda strict=True: ([fake], []))
    (tmp_path / "references").mkdir()
    page = tmp_path / "docs" / "entries" / "incremental" / "demo.md"
    page.parent.mkdir(parents=True)
    page.write_text("---\nentry: other\n---\n# Demo\n", encoding="utf-8")
    status, out, _ = run(capsys, "check", "--root", str(tmp_path))
    assert status == 1
    lines = out.splitlines()
    assert any("cites 'nosuch2020'" in line for line in lines)
    assert "entry demo: notebook notebooks/incremental/demo.py is missing" in lines
    assert "entry demo: test file tests/incremental/test_demo.py is missing" in lines
    assert any("front matter must say 'entry: demo'" in line for line in lines)
    assert any("names entry 'other', not in the catalog" in line for line in lines)


def test_optional_subcommand_is_imported_only_when_invoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = tmp_path / "fu_fake_bench.py"
    module.write_text(
        '"""Run a fake benchmark.\n\nLonger description."""\n'
        "def add_arguments(parser):\n"
        "    parser.add_argument('--status', type=int, default=0)\n"
        "def run(args):\n"
        "    print('ran')\n"
        "    return args.status\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "OPTIONAL_SUBCOMMANDS", {"fakebench": "fu_fake_bench"})
    status, out, _ = run(capsys, "--help")
    assert status == 0
    assert "fakebench" in out and "Run a fake benchmark" in out
    assert "fu_fake_bench" not in sys.modules
    status, out, _ = run(capsys, "fakebench", "--status", "3")
    assert (status, out) == (3, "ran\n")


def test_absent_optional_subcommand_is_skipped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "OPTIONAL_SUBCOMMANDS", {"ghost": "fedunlearn.no_such_module"})
    status, out, _ = run(capsys, "--help")
    assert status == 0
    assert "ghost" not in out


# --------------------------------------------------------------------------- cite --family


def test_cite_family_prints_the_records_its_entries_cite(
    capsys: pytest.CaptureFixture[str],
) -> None:
    entries, _ = catalog.discover(strict=False)
    family = next((e.family for e in entries), None)
    if family is None:
        pytest.skip("no entries in the catalog yet")
    expected = list(dict.fromkeys(
        key for e in entries if e.family == family for key in e.citation_keys))
    status, out, _ = run(capsys, "cite", "--family", family)
    assert status == 0
    assert [e.key for e in bibtexparser.parse_string(out).entries] == expected


def test_cite_family_with_fake_entries(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def entry(slug: str, family: str, keys: tuple[str, ...]) -> catalog.Entry:
        return catalog.Entry(slug=slug, family=family, title=slug, citation_keys=keys,
                             summary="s", implementation="fedunlearn.catalog")

    fake = [entry("a", "perturbation", ("liu2021federaser", "mcmahan2017communication")),
            entry("b", "incremental", ("hu2022lora",)),
            entry("c", "perturbation", ("mcmahan2017communication", "guo2020certified"))]
    monkeypatch.setattr(catalog, "discover", lambda strict=True: (fake, []))
    status, out, _ = run(capsys, "cite", "--family", "perturbation")
    assert status == 0
    assert [e.key for e in bibtexparser.parse_string(out).entries] == [
        "liu2021federaser", "mcmahan2017communication", "guo2020certified"]
    status, out, err = run(capsys, "cite", "--family", "foundations")
    assert (status, out) == (0, "")
    assert "no entries yet" in err


def test_cite_family_prints_what_the_bibliography_page_offers_for_download(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fedunlearn import sitegen

    downloads = sitegen.family_bibtex_files(catalog.discover(strict=False)[0])
    assert downloads, "no family has entries"
    for path, bibtex in downloads.items():
        family = Path(path).stem
        status, out, _ = run(capsys, "cite", "--family", family)
        assert (status, out) == (0, bibtex)


def test_cite_unknown_family_lists_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "cite", "--family", "perturbaton")
    assert status == 2
    assert out == ""
    assert "unknown family 'perturbaton'; did you mean perturbation?" in err
    assert f"known families: {', '.join(catalog.FAMILIES)}" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- import-bib

CLEAN_BIB = """@inproceedings{whatever,
  title   = {Engines of Difference},
  author  = {Charles Babbage, Mary Somerville, Ada Lovelace},
  journal = {Proceedings of the Difference Engine Society},
  year    = {1850}
}

@article{other,
  title   = {Notes on the Analytical Engine},
  author  = {Lovelace, Ada},
  journal = {Scientific Memoirs},
  year    = {1843},
  eprint  = {1843.00001}
}
"""


def test_import_bib_rejects_unfit_file_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    into = tmp_path / "references"
    into.mkdir()
    (into / "keep.bib").write_text("@misc{keep, title={K}, author={K, K}, year={1}, doi={1}}\n")
    bib = tmp_path / "in.bib"
    bib.write_text(CLEAN_BIB, encoding="utf-8")
    before = {p.name: p.read_bytes() for p in into.iterdir()}
    status, out, err = run(capsys, "import-bib", str(bib), "--into", str(into))
    assert status == 1
    assert f"{bib}:1: record 'whatever' (key babbage1850engines): authors separated by commas" \
        in out
    assert f"{bib}:1: record 'whatever' (key babbage1850engines): @inproceedings carries" in out
    assert f"2 problem(s) in {bib}; nothing written to {into}" in err
    assert "Traceback" not in out + err
    assert {p.name: p.read_bytes() for p in into.iterdir()} == before


def test_import_bib_fix_writes_and_check_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    into = tmp_path / "references"
    into.mkdir()
    bib = tmp_path / "in.bib"
    bib.write_text(CLEAN_BIB, encoding="utf-8")
    status, out, _ = run(capsys, "import-bib", str(bib), "--into", str(into), "--fix")
    assert status == 0, out
    lines = out.splitlines()
    assert f"{bib}:1: fixed: @inproceedings: renamed 'journal' to 'booktitle'" in lines
    assert f"{bib}:1: fixed: author: commas replaced by 'and' (3 authors)" in lines
    assert (f"wrote {into / 'babbage1850engines.bib'} from {bib}:1 "
            "(key 'whatever' -> 'babbage1850engines')") in lines
    assert lines[-1] == f"2 record(s) imported into {into}"
    assert sorted(p.name for p in into.iterdir()) == [
        "babbage1850engines.bib", "lovelace1843notes.bib"]
    assert references.validate(into) == []
    # importing the same file again: every record is now a duplicate, exit 1
    status, out, _ = run(capsys, "import-bib", str(bib), "--into", str(into), "--fix")
    assert status == 1 and out.count("duplicates") == 2


@pytest.mark.parametrize("missing", ["file", "into"])
def test_import_bib_missing_paths_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    bib = tmp_path / "in.bib"
    if missing == "into":
        bib.write_text(CLEAN_BIB, encoding="utf-8")
    status, out, err = run(capsys, "import-bib", str(bib), "--into", str(tmp_path / "nope"))
    assert status == 2 and out == ""
    assert ("no such file" if missing == "file" else "no such references folder") in err
    assert "Traceback" not in err


def test_import_bib_non_utf8_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bib = tmp_path / "latin1.bib"
    bib.write_bytes("@misc{x, title = {Caf\u00e9}}\n".encode("latin-1"))
    status, out, err = run(capsys, "import-bib", str(bib), "--into", str(tmp_path))
    assert (status, out) == (1, "")
    assert "not UTF-8 text" in err and "Traceback" not in err
