"""The catalog: every entry of the knowledge base, declared once.

An entry is declared by the module that implements it, as a module-level ``ENTRY``
(an [`Entry`][fedunlearn.catalog.Entry]). The catalog finds entries by importing every module of
the family subpackages (``fedunlearn.foundations``, ``fedunlearn.perturbation``,
``fedunlearn.decomposition``, ``fedunlearn.incremental``); nothing else lists them. Index tables,
the taxonomy page, the bibliography and each page's entry card are derived from here and from
``references/``.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from fedunlearn.unlearning.base import METHODS

#: Family slug -> human title. The three unlearning families come from the survey
#: (Qu et al., arXiv 2406.09831); ``foundations`` holds the federated-learning entries they build on.
FAMILIES: dict[str, str] = {
    "foundations": "Federated learning foundations",
    "perturbation": "Perturbation",
    "decomposition": "Model decomposition",
    "incremental": "Incremental learning (retraining)",
}

#: What a slug may be: lower-case letters and digits in words joined by single hyphens, starting with a
#: letter (``fedavg``, ``class-pruning``). The module is the slug with ``_`` for ``-``.
SLUG_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")

#: One-paragraph description of each family, used on the taxonomy page.
FAMILY_DESCRIPTIONS: dict[str, str] = {
    "foundations": (
        "The federated training every unlearning method starts from: FedAvg aggregation and "
        "federated instruction tuning of a language model through LoRA adapters."
    ),
    "perturbation": (
        "Remove influence by changing the trained weights directly: gradient ascent on the "
        "data to forget, noise, or projections, usually followed by a short repair."
    ),
    "decomposition": (
        "Structure the model so that a contribution lives in separable parts (shards, adapters, "
        "sub-models) and can be dropped or re-trained alone."
    ),
    "incremental": (
        "Retrain without the data to forget, but cheaper than from scratch: reuse the stored "
        "training history, calibrate it, or correct it with approximate second-order steps."
    ),
}


@dataclass(frozen=True)
class ReportedClaim:
    """A number or qualitative result as the cited paper reports it.

    Attributes:
        claim: What is claimed, in our words (e.g. "speed-up over retraining").
        reported: The value as reported (e.g. "4x"), or "figure only".
        where: Its place in the paper (e.g. "Table 3", "Fig. 4", "Sec. V-B").
    """

    claim: str
    reported: str
    where: str


@dataclass(frozen=True)
class Entry:
    """One entry: a citation, a page, an implementation, a notebook and tests sharing a slug.

    Attributes:
        slug: Identifier used in every path (``fedavg``, ``federaser``).
        family: One of [`FAMILIES`][fedunlearn.catalog.FAMILIES].
        title: Human title of the method.
        citation_keys: BibTeX keys in ``references/``; the first is the method's paper.
        summary: One sentence for index tables.
        claims: Reported claims that the notebook reproduces.
        implementation: The module declaring the entry (by default, the module whose code
            creates the ``Entry``).
    """

    slug: str
    family: str
    title: str
    citation_keys: tuple[str, ...]
    summary: str
    claims: tuple[ReportedClaim, ...] = ()
    implementation: str = ""

    def __post_init__(self) -> None:
        if not self.implementation:  # the module-level ENTRY names the module that declares it
            object.__setattr__(self, "implementation", sys._getframe(2).f_globals.get("__name__", ""))

    @property
    def methods(self) -> tuple[str, ...]:
        """Names under which the harness runs it (``fedunlearn bench --methods``): the methods its
        module registers with ``@register_method``, in declaration order; never typed."""
        return tuple(name for name, cls in METHODS.items() if cls.__module__ == self.implementation)

    @property
    def notebook(self) -> str:
        """Repository-relative path of the jupytext notebook."""
        return f"notebooks/{self.family}/{self.slug}.py"

    @property
    def test(self) -> str:
        """Repository-relative path of the entry's tests."""
        return f"tests/{self.family}/test_{self.slug}.py"

    @property
    def page(self) -> str:
        """Path of the entry's page relative to ``docs/``."""
        return f"entries/{self.family}/{self.slug}.md"

    def claims_markdown(self) -> str:
        """The reported claims as a Markdown table (claim, reported, where), for notebooks."""
        rows = [f"| {c.claim} | {c.reported} | {c.where} |" for c in self.claims]
        return "\n".join(["| claim | reported | where |", "|---|---|---|", *rows])

    def as_dict(self) -> dict:
        """Plain-data view used by ``fedunlearn list --format json``."""
        return {
            "slug": self.slug,
            "family": self.family,
            "title": self.title,
            "citation_keys": list(self.citation_keys),
            "summary": self.summary,
            "implementation": self.implementation,
            "notebook": self.notebook,
            "test": self.test,
            "page": self.page,
            "methods": list(self.methods),
            "claims": [vars(c) for c in self.claims],
        }


class CatalogError(Exception):
    """A problem with the catalog (duplicate slug, unknown family, import failure)."""


def _family_modules(family: str) -> list[str]:
    package = importlib.import_module(f"fedunlearn.{family}")
    return sorted(
        f"{package.__name__}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_")
    )


def discover(strict: bool = True) -> tuple[list[Entry], list[str]]:
    """Import every family module and collect its ``ENTRY``.

    Args:
        strict: Raise on the first problem instead of collecting it.

    Returns:
        The entries sorted by family order then slug, and a list of problems (one line each).

    Raises:
        CatalogError: When ``strict`` and a module fails to import, an entry names an unknown
            family or a slug is declared twice.
    """
    entries: list[Entry] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for family in FAMILIES:
        for module_name in _family_modules(family):
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # noqa: BLE001 - reported, not hidden
                problems.append(f"{module_name}: import failed: {type(exc).__name__}: {exc}")
                continue
            entry = getattr(module, "ENTRY", None)
            if entry is None:
                continue
            if entry.implementation != module_name:
                problems.append(f"{module_name}: ENTRY.implementation is {entry.implementation!r}; "
                                "declare ENTRY in the module that implements it")
                continue
            if entry.family != family:
                problems.append(
                    f"{module_name}: ENTRY.family is {entry.family!r} but the module lives in "
                    f"fedunlearn.{family}"
                )
            if not SLUG_PATTERN.fullmatch(entry.slug):
                problems.append(f"{module_name}: slug {entry.slug!r} must match {SLUG_PATTERN.pattern} "
                                "(lower-case words joined by hyphens)")
            if entry.slug in seen:
                problems.append(
                    f"{module_name}: slug {entry.slug!r} already declared by {seen[entry.slug]}"
                )
                continue
            seen[entry.slug] = module_name
            entries.append(entry)
    if strict and problems:
        raise CatalogError("\n".join(problems))
    order = list(FAMILIES)
    entries.sort(key=lambda e: (order.index(e.family) if e.family in order else 99, e.slug))
    return entries, problems


def citation_keys_of(entries: list[Entry], family: str) -> list[str]:
    """The keys cited by ``family``'s entries among ``entries``, in their order, each once (what
    ``fedunlearn cite --family`` prints and the Bibliography page's download holds)."""
    return list(dict.fromkeys(key for e in entries if e.family == family for key in e.citation_keys))


def entries() -> list[Entry]:
    """All entries (strict discovery)."""
    return discover(strict=True)[0]


def family_controls() -> dict[str, tuple[str, ...]]:
    """Family -> methods registered by a family module that declares no ``ENTRY``: a family's
    control, run beside its entries (e.g. the perturbation family's negated update)."""
    implementations = {entry.implementation for entry in entries()}
    out: dict[str, tuple[str, ...]] = {}
    for family in FAMILIES:
        prefix = f"fedunlearn.{family}."
        names = tuple(name for name, cls in METHODS.items()
                      if cls.__module__.startswith(prefix) and cls.__module__ not in implementations)
        if names:
            out[family] = names
    return out


def get(slug: str) -> Entry:
    """The entry with this slug.

    Raises:
        KeyError: With the list of known slugs when ``slug`` is unknown.
    """
    for entry in entries():
        if entry.slug == slug:
            return entry
    known = ", ".join(e.slug for e in entries())
    raise KeyError(f"unknown entry {slug!r}; known entries: {known}")


def repo_root() -> Path:
    """The repository checkout this package is installed from (``implementations/..``)."""
    return Path(__file__).resolve().parents[2]
