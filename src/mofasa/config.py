"""The one config system: dataclass configs from YAML with type-checked dotted overrides.

    cfg = load_config(TrainConfig, "small", ["optim.lr=1e-4", "data.path=prepared/qmof"])

Unknown keys and wrong types raise `ConfigError` naming the key (no Hydra, no eval). Named
configs ship inside the package (`mofasa/configs/<kind>_<name>.yaml`, read with
importlib.resources) and are the only presets: model presets are their ``model`` sections
(`load_section`). This module is pure (stdlib + PyYAML), so every room may import it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

__all__ = [
    "ConfigError",
    "apply_overrides",
    "from_dict",
    "load_config",
    "load_section",
    "merge",
    "named_configs",
    "to_dict",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key that does not exist or a value of the wrong type."""


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of plain types (safe inside a weights_only checkpoint)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, checking keys and types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(_join(where, k) for k in unknown)}")
    values = {k: _coerce(hints[k], v, _join(where, k)) for k, v in data.items()}
    return cls(**values)


def merge(cfg: T, data: dict) -> T:
    """``cfg`` with the (partial, nested) ``data`` applied on top, checked like `from_dict`."""
    return from_dict(type(cfg), _deep_update(to_dict(cfg), data))


def _deep_update(base: dict, data: dict) -> dict:
    out = dict(base)
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``hint``; convert only lossless cases."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, where)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {hint}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        out = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if hint is Any or ((hint is dict or origin is dict) and isinstance(value, dict)):
        return value
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint in (int, str, bool) and (type(value) is hint):
        return value
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (values parsed as YAML scalars) to a nested dict."""
    data = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def named_configs(kind: str) -> list[str]:
    """Names of the configs shipped in the package for ``kind`` (e.g. 'autoencoder')."""
    root = resources.files("mofasa") / "configs"
    prefix = f"{kind}_"
    return sorted(
        p.name[len(prefix) : -5] for p in root.iterdir() if p.name.startswith(prefix)
        and p.name.endswith(".yaml")
    )


def _shipped_text(kind: str, name: str) -> str:
    shipped = resources.files("mofasa") / "configs" / f"{kind}_{name}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"no config file {name!r} and no shipped {kind} config of that name "
                          f"(shipped: {', '.join(named_configs(kind))})")
    return shipped.read_text()


def load_section(cls: type[T], kind: str, name: str, section: str) -> T:
    """One section (e.g. ``model``) of a shipped config, as dataclass ``cls``."""
    data = yaml.safe_load(_shipped_text(kind, name)) or {}
    return from_dict(cls, data.get(section), section)


def load_config(
    cls: type[T], source: str | Path | dict | None, overrides: list[str] | None = None,
    kind: str | None = None,
) -> T:
    """Config from a shipped name (``kind``_``name``.yaml), a YAML path or a dict, + overrides."""
    if isinstance(source, dict) or source is None:
        data = source or {}
    else:
        path = Path(source)
        if path.is_file():
            text = path.read_text()
        elif kind is not None:
            text = _shipped_text(kind, str(source))
        else:
            raise ConfigError(f"config file {source} not found")
        data = yaml.safe_load(text) or {}
    return from_dict(cls, apply_overrides(data, overrides or []))
