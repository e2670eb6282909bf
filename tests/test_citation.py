"""``CITATION.cff`` parses, carries the package's version and licence, and lists the survey."""

from __future__ import annotations

import re
import tomllib

import pytest

import fedunlearn
from fedunlearn import catalog, references

ROOT = catalog.repo_root()


@pytest.fixture(scope="module")
def cff() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed; see test_cff_structure")
    return yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))


def test_cff_required_keys_and_values(cff: dict) -> None:
    assert cff["cff-version"] == "1.2.0"
    assert cff["title"] == "fedunlearn"
    assert cff["message"].strip()
    assert cff["authors"] == [{"name": "The fedunlearn contributors"}]
    assert cff["type"] == "software"


def test_cff_version_and_license_follow_the_package(cff: dict) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert str(cff["version"]) == fedunlearn.__version__ == pyproject["project"]["version"]
    assert cff["license"] == pyproject["project"]["license"]["text"]


def test_cff_references_the_survey_as_recorded(cff: dict) -> None:
    """The survey is a reference, not the preferred citation, and agrees with references/."""
    assert "preferred-citation" not in cff
    (survey,) = cff["references"]
    record = references.load_library(ROOT / "references")["qu2024federated"]
    assert survey["title"] == references.to_text(record.get("title"))
    assert survey["year"] == int(record.get("year"))
    assert survey["doi"] == f"10.48550/arXiv.{record.get('eprint')}"
    assert survey["authors"] == [{"family-names": "Qu", "given-names": "Youyang"}]


def test_cff_structure_without_yaml() -> None:
    """A plain-text check that holds whether or not a YAML loader is installed."""
    text = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    top = dict(re.findall(r"^([a-z-]+):[ ]*(.*)$", text, flags=re.MULTILINE))
    for key in ("cff-version", "message", "title", "authors", "version", "license"):
        assert key in top, key
    assert top["version"] == fedunlearn.__version__
    assert "\t" not in text
