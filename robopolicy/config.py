"""Typed configs from plain dicts (YAML files, ``key=value`` overrides, ``config.json``).

Every config is a dataclass with defaults. :func:`build_config` is the one way a dict becomes
one: unknown keys are refused with the known ones listed, floats that YAML 1.1 leaves as
strings ("1e-3") are parsed, and every field is type-checked by dacite (``"horizon": "16"``
is an error, not a string that fails later). Each failure is one :class:`ConfigError` line
naming where the values came from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import dacite

from robopolicy.errors import ConfigError

T = TypeVar("T")


def coerce_floats(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Turn strings such as "1e-3" and ints into floats for the fields whose default is a
    float (YAML reads ``lr: 1e-3`` as a string and ``eta: 1`` as an int)."""
    out = dict(values)
    for f in dataclasses.fields(cls):
        value = out.get(f.name)
        if isinstance(f.default, float) and isinstance(value, str | int) \
                and not isinstance(value, bool):
            try:
                out[f.name] = float(value)
            except ValueError:
                raise ConfigError(f"{where}: {f.name}: {value!r} is not a number") from None
    return out


def build_config(cls: type[T], values: dict[str, Any], where: str) -> T:
    """``cls(**values)`` with unknown keys refused and every field type-checked."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of config fields, got "
                          f"{type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(values) - known))  # YAML keys may be numbers or null
    if unknown:
        raise ConfigError(f"{where}: unknown config key(s) {unknown}; known: {sorted(known)}")
    try:
        return dacite.from_dict(cls, coerce_floats(cls, values, where))
    except dacite.DaciteError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def read_values(path: str | None, overrides: list[str], nested: tuple[str, ...] = ()
                ) -> dict[str, Any]:
    """A YAML file of config fields (or none), then ``key=value`` overrides whose values
    parse as YAML; ``section.field=value`` sets a field of a nested mapping named in
    ``nested`` (e.g. ``model.horizon=16``). Not yet type-checked: :func:`build_config` does
    that."""
    import yaml

    values: dict[str, Any] = {}
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8
            # YAML's messages span lines: make it one
            raise ConfigError(f"{path}: cannot read config ({' '.join(str(exc).split())})"
                              ) from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields, got "
                              f"{type(values).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}' is not key=value")
        target, name = values, key
        section, dot, field = key.partition(".")
        if dot and section in nested:
            target, name = values.setdefault(section, {}), field
            if not isinstance(target, dict):
                raise ConfigError(f"{path}: {section} must be a mapping of fields, got "
                                  f"{type(target).__name__}")
        try:
            target[name] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': not a YAML value "
                              f"({' '.join(str(exc).split())})") from None
    return values
