"""Methods by name: the controls, plus every method an entry declares.

An entry module exposes ``METHODS = {"name": MethodClass, ...}`` and lists the names in its
``ENTRY.methods``; nothing else registers them.
"""

from __future__ import annotations

import importlib

from fedunlearn import catalog
from fedunlearn.unlearning.base import UnlearningMethod
from fedunlearn.unlearning.controls import ContinueFedAvg, DoNothing, Retrain

CONTROLS: dict[str, type[UnlearningMethod]] = {
    "retrain": Retrain,
    "do-nothing": DoNothing,
    "continue-fedavg": ContinueFedAvg,
}


def available_methods() -> dict[str, type[UnlearningMethod]]:
    """Method name -> class, controls first, then entries in catalog order."""
    methods = dict(CONTROLS)
    for entry in catalog.entries():
        if not entry.methods:
            continue
        module = importlib.import_module(entry.implementation)
        declared = getattr(module, "METHODS", {})
        for name in entry.methods:
            if name not in declared:
                raise catalog.CatalogError(f"{entry.implementation}: ENTRY.methods names {name!r} but METHODS lacks it")
            methods[name] = declared[name]
    return methods


def get_method(name: str) -> UnlearningMethod:
    """An instance of the named method with its paper-default config.

    Raises:
        KeyError: Listing the known names when ``name`` is unknown.
    """
    methods = available_methods()
    if name not in methods:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(methods)}")
    return methods[name]()
