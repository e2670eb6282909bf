"""Methods by name, with config overrides.

Every method declares itself with
[`register_method`][fedunlearn.unlearning.base.register_method]; the controls are registered here
by importing them, the entries' methods by importing the catalog's modules.
[`get_method`][fedunlearn.unlearning.registry.get_method] builds one with its paper-default config
changed by keyword (``get_method("federaser", calibration_ratio=1.0)``), and
[`parse_settings`][fedunlearn.unlearning.registry.parse_settings] reads the command line's
``--set federaser.calibration_ratio=1.0`` into such overrides, checking names and types.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from dataclasses import fields, replace

from fedunlearn import catalog
from fedunlearn.unlearning import controls
from fedunlearn.unlearning.base import METHODS, UnlearningMethod

CONTROLS = (controls.Retrain.name, controls.DoNothing.name, controls.ContinueFedAvg.name)


class MethodSettingError(ValueError):
    """An unknown method, an unknown config field, or a value of the wrong type."""


def available_methods() -> dict[str, type[UnlearningMethod]]:
    """Method name -> class: the controls first, then each family's controls (see
    [`family_controls`][fedunlearn.catalog.family_controls]), then the entries' methods in catalog
    order."""
    family = [name for names in catalog.family_controls().values() for name in names]
    names = list(CONTROLS) + family + [name for entry in catalog.entries() for name in entry.methods]
    return {name: METHODS[name] for name in names}


def methods_serving(scenario) -> list[str]:
    """Registered methods (the oracle ``retrain`` aside) that serve the scenario with their default
    settings: its request's granularity, its kind (classification or language), its name for a
    method that names the scenarios it runs on, and the method's own check of the scenario (e.g.
    KNOT's default five clusters need at least five clients)."""
    def fits(cls: type[UnlearningMethod]) -> bool:
        try:
            cls().validate(scenario)
        except ValueError:
            return False
        return True

    return [name for name, cls in available_methods().items() if name != "retrain"
            and scenario.request.kind in cls.granularities and scenario.kind in cls.scenario_kinds
            and (not cls.scenarios or scenario.name in cls.scenarios) and fits(cls)]


def _known(name: str) -> type[UnlearningMethod]:
    methods = available_methods()
    if name not in methods:
        raise MethodSettingError(f"unknown method {name!r}; known methods: {', '.join(methods)}")
    return methods[name]


def _coerce(method: str, field_name: str, annotation, value):
    """``value`` as the field's type (strings from the command line are parsed)."""
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        if type(None) in kinds:
            return None
        raise MethodSettingError(f"{method}.{field_name} cannot be None")
    for kind in kinds:
        if kind is type(None):
            continue
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            continue
        if kind in (int, float, str):
            if isinstance(value, kind) and not isinstance(value, bool):
                return value
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return kind(value)
                except ValueError:
                    continue
    wanted = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
    raise MethodSettingError(f"{method}.{field_name} must be {wanted}, got {value!r}")


def get_method(name: str, **overrides) -> UnlearningMethod:
    """An instance of the named method, its default config changed by ``overrides``.

    Raises:
        MethodSettingError: On an unknown method or field, or a value of the wrong type.
    """
    cls = _known(name)
    config = cls.Config()
    if overrides:
        hints = typing.get_type_hints(cls.Config)
        names = [f.name for f in fields(config)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise MethodSettingError(f"{name} has no setting {', '.join(unknown)}; settings: "
                                     f"{', '.join(names) or '(none)'}")
        values = {k: _coerce(name, k, hints[k], v) for k, v in overrides.items()}
    try:
        return cls(replace(config, **values) if overrides else config)
    except (TypeError, ValueError) as exc:  # a config that checks its values names field and value
        message = str(exc)
        raise MethodSettingError(message if message.startswith(f"{name}:") else f"{name}: {message}") from exc


def parse_settings(settings: Iterable[str]) -> dict[str, dict[str, str]]:
    """``["federaser.interval=1", ...]`` -> ``{"federaser": {"interval": "1"}}``.

    Raises:
        MethodSettingError: On a setting not of the form ``METHOD.FIELD=VALUE``.
    """
    parsed: dict[str, dict[str, str]] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        method, dot, field_name = key.strip().partition(".")
        if not sep or not dot or not method or not field_name:
            raise MethodSettingError(f"--set {setting!r}: expected METHOD.FIELD=VALUE, "
                                     "e.g. federaser.calibration_ratio=1.0")
        parsed.setdefault(method, {})[field_name] = value.strip()
    return parsed
