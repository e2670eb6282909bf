"""``fedunlearn new``: the scaffold of an entry, written into a temporary repository root only.

Each test copies ``references/`` into ``tmp_path`` and scaffolds there (``--root``); nothing is
written into the checkout. The generated module and test are loaded from the temporary files under
their package names, and the method registry is restored afterwards.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fedunlearn import catalog, cli, scaffold
from fedunlearn.unlearning.base import METHODS

FAMILY, SLUG, KEY = "decomposition", "demo-method", "gu2024unlearning"
FILES = scaffold.EntryFiles(FAMILY, SLUG)
MODULE = f"fedunlearn.{FAMILY}.{FILES.module}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(catalog.repo_root() / "references", tmp_path / "references")
    return tmp_path


@pytest.fixture
def registry():
    """The method registry, restored after the test (loading a generated module registers into it)."""
    before = dict(METHODS)
    yield METHODS
    METHODS.clear()
    METHODS.update(before)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def new(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> tuple[int, str, str]:
    return run(capsys, "new", *argv, "--root", str(root))


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if not p.relative_to(root).as_posix().startswith("references"))


def load(name: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_new_writes_the_four_files_with_their_sections(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = new(capsys, root, FAMILY, SLUG, "--cite", KEY, "--cite", "hu2022lora")
    assert status == 0, err
    paths = FILES.paths
    assert paths == {
        "implementation": "implementations/fedunlearn/decomposition/demo_method.py",
        "notebook": "notebooks/decomposition/demo-method.py",
        "docs page": "docs/entries/decomposition/demo-method.md",
        "test file": "tests/decomposition/test_demo-method.py",
    }
    for path in paths.values():
        assert f"  {path}" in out.splitlines()
        assert (root / path).is_file()
    # only the four files (and their folders), no staging file left behind
    assert [p for p in files_under(root) if (root / p).is_file()] == sorted(paths.values())
    module = (root / paths["implementation"]).read_text(encoding="utf-8")
    compile(module, paths["implementation"], "exec")
    assert "key ``gu2024unlearning``" in module
    assert 'citation_keys=("gu2024unlearning", "hu2022lora")' in module
    assert "@dataclass(frozen=True)\nclass DemoMethodConfig:" in module
    assert "raise NotImplementedError(" in module
    notebook = (root / paths["notebook"]).read_text(encoding="utf-8")
    compile(notebook, paths["notebook"], "exec")
    headings = [line for line in notebook.splitlines() if line.startswith("# ## ")]
    assert headings == ["# ## The claim (reported)", "# ## Setup", "# ## Run",
                        "# ## Reported vs reproduced", "# ## What not to conclude"]
    assert 'results.claims("claims"' in notebook and "results.save()" in notebook
    page = (root / paths["docs page"]).read_text(encoding="utf-8")
    assert page.startswith("---\nentry: demo-method\n---\n# Unlearning during Learning")
    assert [line for line in page.splitlines() if line.startswith("## ")] == [
        "## Overview", "## Algorithm", "## Deviations from the paper", "## Case study",
        "## Limitations", "## Cite this"]
    assert "{{ results.claims }}" in page and "$$" in page
    compile((root / paths["test file"]).read_text(encoding="utf-8"), paths["test file"], "exec")


def test_an_existing_target_means_nothing_is_written(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = root / FILES.paths["docs page"]
    page.parent.mkdir(parents=True)
    page.write_text("mine\n", encoding="utf-8")
    before = files_under(root)
    status, out, err = new(capsys, root, FAMILY, SLUG, "--cite", KEY)
    assert status == 2
    assert out == ""
    assert f"nothing written: {FILES.paths['docs page']} already exist(s)" in err
    assert "Traceback" not in err
    assert files_under(root) == before  # no other file, no new folder
    assert page.read_text(encoding="utf-8") == "mine\n"


@pytest.mark.parametrize(("argv", "message"), [
    (("decompositon", SLUG, "--cite", KEY),
     "unknown family 'decompositon'; did you mean decomposition? known families: "),
    ((FAMILY, SLUG, "--cite", "gu2024unlearnin"),
     ("unknown citation key 'gu2024unlearnin': no references/gu2024unlearnin.bib (close matches: "
      "gu2024unlearning", "); import the paper's record first with 'fedunlearn import-bib FILE.bib'")),
    ((FAMILY, "Demo_Method", "--cite", KEY), "bad slug 'Demo_Method'"),
    ((FAMILY, "demo--method", "--cite", KEY), "bad slug 'demo--method'"),
    ((FAMILY, "fedau", "--cite", KEY), "slug 'fedau' is taken by the entry declared in "
     "fedunlearn.decomposition.fedau"),
    ((FAMILY, "do-nothing", "--cite", KEY), "slug 'do-nothing' is already a registered method name"),
    ((FAMILY, "entry", "--cite", KEY), "choose another"),
])
def test_refused_inputs_are_one_clean_line(
    root: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str | tuple[str, ...]
) -> None:
    status, out, err = new(capsys, root, *argv)
    assert status == 2
    assert out == ""
    assert err.startswith("fedunlearn: error: ") and len(err.strip().splitlines()) == 1
    for fragment in (message,) if isinstance(message, str) else message:
        assert fragment in err
    assert "Traceback" not in err
    assert files_under(root) == []


def test_cite_is_required(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = new(capsys, root, FAMILY, SLUG)
    assert status == 2
    assert "--cite" in err


def test_the_slug_pattern_admits_every_real_slug() -> None:
    for entry in catalog.entries():
        assert catalog.SLUG_PATTERN.fullmatch(entry.slug), entry.slug
    for bad in ("Fedau", "fed_au", "-fedau", "fedau-", "2fed", "fed au", ""):
        assert not catalog.SLUG_PATTERN.fullmatch(bad), bad


def test_the_generated_module_imports_and_registers(
    root: Path, registry: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    scaffold.write_entry(root, FAMILY, SLUG, [KEY])
    module = load(MODULE, root / FILES.paths["implementation"], monkeypatch)
    entry = module.ENTRY
    assert (entry.slug, entry.family, entry.citation_keys) == (SLUG, FAMILY, (KEY,))
    assert entry.implementation == MODULE
    assert entry.methods == (SLUG,)
    assert registry[SLUG] is module.DemoMethod
    assert len(entry.claims) == 1 and scaffold.MARKER in entry.claims[0].claim
    method = module.DemoMethod()
    assert isinstance(method.config, module.DemoMethodConfig)
    with pytest.raises(NotImplementedError, match=r"demo-method is scaffolded but not implemented: "
                       r"write DemoMethod\.unlearn in implementations/fedunlearn/decomposition/demo_method\.py"):
        method.unlearn(None, None, None)


def test_the_generated_test_fails_listing_the_placeholders(
    root: Path, registry: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    scaffold.write_entry(root, FAMILY, SLUG, [KEY])
    load(MODULE, root / FILES.paths["implementation"], monkeypatch)
    generated = load("generated_test_demo_method", root / FILES.paths["test file"], monkeypatch)
    generated.test_the_entry_registers_its_method()  # the skeleton is consistent ...
    with pytest.raises(AssertionError) as failure:  # ... but not filled in
        generated.test_every_placeholder_is_filled_in()
    message = str(failure.value)
    assert message.startswith("entry demo-method is not filled in yet; replace:\n")
    for path in FILES.paths.values():
        text = (root / path).read_text(encoding="utf-8")
        lines = scaffold.placeholders(text)
        assert lines, path
        for line, content in lines:
            assert f"{path}:{line}: {content}" in message
    for name in ("test_the_update_by_hand", "test_bad_inputs_are_refused",
                 "test_the_claim_holds_at_smoke_size_and_fails_under_the_control"):
        with pytest.raises(pytest.fail.Exception, match="not written yet"):
            getattr(generated, name)()
    # filled in: every marker replaced, the placeholder test passes and check has nothing to say
    for path in FILES.paths.values():
        target = root / path
        target.write_text(target.read_text(encoding="utf-8").replace(scaffold.MARKER, "done"),
                          encoding="utf-8")
    generated.test_every_placeholder_is_filled_in()
    assert scaffold.placeholder_problems(root) == []


def test_check_reports_the_placeholders_with_file_and_line(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scaffold.write_entry(root, FAMILY, SLUG, [KEY])
    status, out, _ = run(capsys, "check", "--root", str(root))
    assert status == 1
    reported = [line for line in out.splitlines() if "unfilled placeholder" in line]
    assert len(reported) == 4
    for path, line in zip(FILES.paths.values(), reported, strict=True):
        found = scaffold.placeholders((root / path).read_text(encoding="utf-8"))
        first, text = found[0]
        assert line.startswith(f"entry {SLUG}: {path} still has {len(found)} unfilled placeholders "
                               f"(line {first}: {text[:40]}")
        assert f"also lines {', '.join(str(n) for n, _ in found[1:])})" in line


def test_the_real_repository_has_no_placeholder() -> None:
    assert scaffold.placeholder_problems(catalog.repo_root()) == []


def test_discover_reports_a_slug_outside_the_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    module = ModuleType("fu_bad_slug")
    module.ENTRY = catalog.Entry(slug="Bad_Slug", family="incremental", title="t",
                                 citation_keys=(KEY,), summary="s", implementation="fu_bad_slug")
    monkeypatch.setitem(sys.modules, "fu_bad_slug", module)
    monkeypatch.setattr(catalog, "_family_modules",
                        lambda family: ["fu_bad_slug"] if family == "incremental" else [])
    _, problems = catalog.discover(strict=False)
    assert problems == ["fu_bad_slug: slug 'Bad_Slug' must match [a-z][a-z0-9]*(?:-[a-z0-9]+)* "
                        "(lower-case words joined by hyphens)"]


def test_new_then_fill_in_then_check_passes_in_a_copy_of_the_repository(tmp_path: Path) -> None:
    """End to end, in a copy of the checkout's files (those git does not ignore) whose package is the one imported
    (``PYTHONPATH``): ``new`` -> ``check`` lists exactly the placeholders -> filled in -> ``check`` OK
    with one more entry."""
    import os
    import subprocess

    repo = catalog.repo_root()
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                                 "implementations", "references", "docs/entries", "notebooks", "tests"],
                                cwd=repo, capture_output=True, text=True,
                                check=True, timeout=60).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("needs git to list the checkout's files")
    for relative in listed:
        source = repo / relative
        if source.is_file():
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tmp_path / relative)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "implementations")}

    def fedunlearn(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedunlearn", *argv, "--root", str(tmp_path)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    count = len(catalog.discover(strict=False)[0])  # the copy's entries, imported here from the checkout
    made = fedunlearn("new", FAMILY, SLUG, "--cite", KEY)
    assert made.returncode == 0, made.stderr
    unfilled = fedunlearn("check")
    assert unfilled.returncode == 1
    problems = unfilled.stdout.splitlines()
    assert [line.split(" still has ")[0] for line in problems] == [
        f"entry {SLUG}: {path}" for path in FILES.paths.values()]
    for path in FILES.paths.values():
        target = tmp_path / path
        target.write_text(target.read_text(encoding="utf-8").replace(scaffold.MARKER, "done"),
                          encoding="utf-8")
    filled = fedunlearn("check")
    assert filled.returncode == 0, filled.stdout + filled.stderr
    assert filled.stdout.startswith(f"OK: {count + 1} entries")
