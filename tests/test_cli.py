"""The ``fedunlearn`` command line: list, cite, check, and the optional-subcommand mechanism."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import bibtexparser
import pytest

from fedunlearn import catalog, cli


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--help")
    assert status == 0
    for name in ("list", "cite", "check"):
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
