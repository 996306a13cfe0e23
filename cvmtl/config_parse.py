"""From raw values (YAML, ``a.b=value`` overrides) to typed dataclass fields.

:mod:`cvmtl.config` declares the sections; this module holds the machinery that checks a value
against a field's annotation and writes a nested mapping into a dataclass, so that every error is
a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import types
import typing
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    """A bad config key or value; the message is one line naming the key."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats).

    Optional / union, list and dict annotations are unpacked here; leaves go to _coerce_scalar.
    """
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return _coerce_scalar(key, value, tp)


def _coerce_scalar(key: str, value: Any, tp: Any) -> Any:
    """Check a leaf value against a plain annotation (Any, bool, int, float, str)."""
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def bool_or_word(section: Any, key: str, words: tuple[str, ...]) -> None:
    """Normalize ``section.<name>`` (``key`` = ``"train.<name>"``) to a bool or one of
    ``words``: YAML bools, or the words true / false, or a word; else a ConfigError."""
    name = key.rsplit(".", 1)[-1]
    value = getattr(section, name)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in ("true", "false"):
        value = word == "true"
    elif word in words:
        value = word
    if not isinstance(value, bool) and value not in words:
        expected = "|".join([*words, "true", "false"])
        raise ConfigError(f"{key}: expected {expected}, got {getattr(section, name)!r}")
    setattr(section, name, value)


def _merge(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Write ``values`` (a nested dict) into the dataclass ``obj``, checking every key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"unknown config key '{full}' (known keys here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(full, value, hints[key]))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'a.b=value'`` -> (['a', 'b'], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=1e-3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({err})") from None
    # YAML reads "1e-3" as a string; accept it as a number, as a user would expect.
    if isinstance(value, str) and any(c in value for c in ".eE"):
        with contextlib.suppress(ValueError):
            value = float(value)
    return key.split("."), value


def override_values(cfg: Any, keys: list[str], value: Any) -> dict[str, Any]:
    """An override's keys and value -> the nested mapping :func:`_merge` writes into ``cfg``.

    A path that runs into a mapping-valued field (``loss.balancer_args.weights.depth=0.5``)
    sets that one entry and keeps the field's others (here the config's other task weights);
    naming the field itself (``loss.balancer_args={}``) replaces it whole.
    """
    node = cfg
    for depth, key in enumerate(keys[:-1]):
        current = getattr(node, key, None) if dataclasses.is_dataclass(node) else None
        if isinstance(current, dict):
            merged = copy.deepcopy(current)
            entry = merged
            for inner in keys[depth + 1 : -1]:
                if not isinstance(entry.get(inner), dict):
                    entry[inner] = {}
                entry = entry[inner]
            entry[keys[-1]] = value
            keys, value = keys[: depth + 1], merged
            break
        node = current
    for key in reversed(keys):
        value = {key: value}
    return value


def check_consistency(terms: dict[str, float], depth_loss: str, specs: dict[str, Any]) -> None:
    """``loss.consistency``: term names that a task spec of ``specs`` (the task registry) names
    in its ``extras["consistency"]``, weights >= 0, and no ``depth_normal`` with a depth loss
    that has no per-pixel terms (SILog)."""
    known = sorted({n for spec in specs.values() for n in spec.extras.get("consistency", {})})
    for name, weight in terms.items():
        if name not in known:
            expected = "|".join(known)
            raise ConfigError(f"loss.consistency: unknown term {name!r} (expected {expected})")
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"loss.consistency.{name}: expected a weight >= 0, got {weight!r}")
    if terms.get("depth_normal") and depth_loss == "silog":
        raise ConfigError("loss.consistency.depth_normal: needs a per-pixel loss.depth, not silog")


def check_class_weights(weights: list[float] | None, num_classes: int) -> None:
    """``loss.seg_class_weights``: null, or one weight >= 0 per class (some > 0)."""
    if weights is None:
        return
    if len(weights) != num_classes:
        raise ConfigError(
            f"loss.seg_class_weights: {len(weights)} weights for data.num_classes {num_classes} "
            "(compute them for this data: cvmtl class-weights --config <config>; or set null)"
        )
    if min(weights) < 0 or max(weights) <= 0:
        raise ConfigError(f"loss.seg_class_weights: expected weights >= 0, some > 0, got {weights}")
