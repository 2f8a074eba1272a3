"""Config dataclasses built from plain values: TOML tables, `section.field` overrides and one command-line
flag per field. A field that is itself a dataclass (a training config's model config) is set from a table
of its own, or field by field with dotted names (`decoder.hidden_dim`), so each hyperparameter is declared
once, in the dataclass that uses it."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from .options import OptionError, parse_bool


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def nested(cls) -> dict[str, type]:
    """The fields of dataclass `cls` that are dataclasses themselves, with their types."""
    return {name: kind for name, kind in _hints(cls).items() if dataclasses.is_dataclass(kind)}


def field_type(cls, key: str):
    """The type of field `key` of dataclass `cls`, nested fields by their dotted names (`model.hidden_dim`);
    ValueError naming the key if there is none."""
    name, dot, sub = key.partition(".")
    kind = _hints(cls).get(name)
    if kind is None or bool(dot) != dataclasses.is_dataclass(kind):
        raise ValueError(f"unknown config key: {key}")
    if not dot:
        return kind
    try:
        return field_type(kind, sub)
    except ValueError:
        raise ValueError(f"unknown config key: {key}") from None


def unknown_keys(cls, values: dict) -> list[str]:
    """The keys of `values` that name no field of `cls` (nested fields by their dotted names)."""
    names, inner, unknown = {f.name for f in dataclasses.fields(cls)}, nested(cls), []
    for key, value in values.items():
        name, dot, sub = key.partition(".")
        if name not in names or (dot and name not in inner):
            unknown.append(key)
        elif name in inner and (dot or isinstance(value, dict)):
            unknown += [f"{name}.{k}" for k in unknown_keys(inner[name], {sub: value} if dot else value)]
    return unknown


def build(cls, values: dict):
    """`cls(**values)`, where a nested dataclass field may be given as a dict, as its instance, or field by
    field as `name.field` keys (later keys win). Unknown names raise ValueError naming all of them."""
    unknown = unknown_keys(cls, values)
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
    inner = nested(cls)
    plain, parts = {}, {name: {} for name in inner}
    for key, value in values.items():
        name, dot, sub = key.partition(".")
        if name in inner and not isinstance(value, inner[name]):
            parts[name].update({sub: value} if dot else value)
        else:
            if name in inner:  # an instance: later dotted keys lay over its values
                parts[name] = dataclasses.asdict(value)
            plain[name] = value
    for name, sub_values in parts.items():
        if sub_values:
            plain[name] = build(inner[name], sub_values)
    return cls(**plain)


def parse_value(kind, text: str):
    """A command-line string as a value of the field type `kind` (lists as a,b,c; booleans true/false)."""
    optional = [a for a in typing.get_args(kind) if a is not type(None)]
    if type(None) in typing.get_args(kind) and len(optional) == 1:  # `str | None`: the value's own type
        return parse_value(optional[0], text)
    if typing.get_origin(kind) is list:
        inner = typing.get_args(kind)[0]
        return [inner(x) for x in text.split(",") if x != ""]
    if kind is bool:
        try:
            return parse_bool("value", text)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return kind(text)


def add_field_arguments(parser: argparse.ArgumentParser, cls, dashes: bool = False, prefix: str = "") -> None:
    """One --field VALUE flag per field of dataclass `cls`, default unset; nested dataclass fields as
    --name.field. `dashes` spells them --hidden-dim instead of --hidden_dim."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            add_field_arguments(parser, hints[f.name], dashes, prefix + f.name + ".")
            continue
        flag = prefix + (f.name.replace("_", "-") if dashes else f.name)
        parser.add_argument(f"--{flag}", dest=prefix + f.name, default=None, metavar=f.name.upper(),
                            type=lambda text, kind=hints[f.name]: parse_value(kind, text))


def given_fields(args: argparse.Namespace, cls, prefix: str = "") -> dict:
    """The fields of `cls` given on the command line, nested ones by their dotted names."""
    given, hints = {}, _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            given.update(given_fields(args, hints[f.name], prefix + f.name + "."))
        elif getattr(args, prefix + f.name, None) is not None:
            given[prefix + f.name] = getattr(args, prefix + f.name)
    return given
