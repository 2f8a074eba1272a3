"""Decoding options: every option with its default, its valid range and a one-line help, in one dataclass.

The library, the service's request parser and OpenAPI document, the CLI and `training.evaluate` all derive
from :class:`DecodeOptions`; a model's own defaults (chosen when it was trained, stored in its checkpoint)
are a partial DecodeOptions laid over these.
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields, replace

METHODS = ("beam", "greedy", "sample")
MAX_SEED = 2**63 - 1


class OptionError(ValueError):
    """An option is unknown, of the wrong type or out of range (the service answers 422)."""


def _option(default: typing.Any, lo: float | None = None, hi: float | None = None, *, help: str, lo_open: bool = False,
            choices: tuple | None = None, public: bool = True):
    """A dataclass field carrying its range; `public` options are offered over HTTP and on the command line."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices,
                                            "help": help, "public": public})


@dataclass(frozen=True)
class DecodeOptions:
    method: str = _option("beam", choices=METHODS, help="beam search, greedy (argmax) or sampling from the softmax")
    beam_size: int = _option(3, 1, 10, help="hypotheses kept per step (beam); 1 is greedy decoding")
    n_best: int = _option(1, 1, 10, help="captions returned per image, best first (beam; at most beam_size)")
    max_length: int = _option(20, 1, 50, help="words at most")
    min_length: int = _option(1, 1, 50, help="words at least: <end> is not allowed before (never an empty caption)")
    temperature: float = _option(1.0, 0.0, 5.0, lo_open=True, help="softmax temperature (sample)")
    top_k: int = _option(0, 0, None, help="sample among the k likeliest words; 0 = all (at most the vocabulary)")
    top_p: float = _option(1.0, 0.0, 1.0, lo_open=True, help="sample within the smallest set of this probability")
    seed: int | None = _option(None, 0, MAX_SEED, help="makes method=sample reproducible")
    length_penalty: float = _option(0.0, 0.0, 5.0, help="beam ranks by log p / length ** penalty (0 = none)")
    no_repeat_ngram_size: int = _option(0, 0, 6, help="no n-gram of this size twice in a caption (0 = off)")
    grounded: bool = _option(False, help="never name an object the photo shows no evidence of (models with "
                                         "grounding; the shipped model's default)")
    no_end_after: tuple[str, ...] = _option((), public=False, help="words a caption may not end on")

    def validate(self, vocab_size: int | None = None) -> "DecodeOptions":
        """Raise OptionError unless every value is in range and the combination makes sense."""
        for f in fields(self):
            _check_range(f.name, getattr(self, f.name), f.metadata)
        if vocab_size is not None and self.top_k > vocab_size:
            raise OptionError(f"top_k must be between 0 and {vocab_size} (the vocabulary), got {self.top_k}")
        if self.n_best > self.beam_size:
            raise OptionError(f"n_best ({self.n_best}) must not exceed beam_size ({self.beam_size})")
        if self.n_best > 1 and self.method != "beam":
            raise OptionError("n_best > 1 needs method=beam")
        if self.min_length > self.max_length:
            raise OptionError(f"min_length ({self.min_length}) must not exceed max_length ({self.max_length})")
        return self

    def batch_key(self) -> "DecodeOptions":
        """Requests that may share one decoder call: same options except the (per-image) seed."""
        return replace(self, seed=None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["no_end_after"] = list(self.no_end_after)
        return d

    def public_dict(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if OPTION_FIELDS[k].metadata["public"]}

    def updated(self, raw: dict, vocab_size: int | None = None, public_only: bool = False) -> "DecodeOptions":
        """These options with `raw` values laid over them: strings (query, form, command line) or JSON values,
        coerced to each field's type and validated. Unknown names are refused, not ignored; with
        `public_only` (requests from outside), so are the options not offered there."""
        unknown = sorted(set(raw) - set(PUBLIC_OPTIONS if public_only else OPTION_FIELDS))
        if unknown:
            raise OptionError(f"unknown option(s): {', '.join(unknown)}; allowed: {', '.join(PUBLIC_OPTIONS)}")
        return replace(self, **{name: _coerce(name, value) for name, value in raw.items()}).validate(vocab_size)

    @classmethod
    def from_dict(cls, d: dict) -> "DecodeOptions":
        """A checkpoint's stored defaults (any subset of the fields) over the class defaults."""
        return cls().updated(d)


OPTION_FIELDS = {f.name: f for f in fields(DecodeOptions)}
PUBLIC_OPTIONS = tuple(name for name, f in OPTION_FIELDS.items() if f.metadata["public"])

_HINTS = typing.get_type_hints(DecodeOptions)


def option_type(name: str) -> type:
    """The option's value type, read from DecodeOptions' annotation: int, float, str, or tuple (of words);
    `int | None` (the seed) counts as int."""
    hint = _HINTS[name]
    if typing.get_origin(hint) is tuple:
        return tuple
    return next(a for a in typing.get_args(hint) if a is not type(None)) if typing.get_args(hint) else hint


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def parse_bool(name: str, value) -> bool:
    """A JSON boolean, or true/false/1/0/yes/no/on/off as text (query strings, form fields, the command line)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise OptionError(f"{name} must be true or false, got {value!r}")


def _coerce(name: str, value):
    kind = option_type(name)
    if (value is None or value == "") and type(None) in typing.get_args(_HINTS[name]):
        return None  # an optional option (the seed) left empty
    if kind is bool:
        return parse_bool(name, value)
    if kind is tuple:
        if isinstance(value, str) or not all(isinstance(w, str) for w in value):
            raise OptionError(f"{name} must be a list of words")
        return tuple(value)
    if kind is str:
        if not isinstance(value, str):
            raise OptionError(f"{name} must be a string")
        return value
    if isinstance(value, bool):
        raise OptionError(f"{name} must be {'an integer' if kind is int else 'a number'}")
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise OptionError(f"{name} must be an integer, got {value}")
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise OptionError(f"{name} must be an integer, got {value!r}") from None
        if not isinstance(value, int):
            raise OptionError(f"{name} must be an integer")
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a number, got {value!r}") from None


def _check_range(name: str, value, meta) -> None:
    if meta["choices"] is not None:
        if value not in meta["choices"]:
            raise OptionError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}")
        return
    lo, hi = meta["lo"], meta["hi"]
    if value is None or lo is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(f"{name} must be a finite number, got {value}")
    if value < lo or (meta["lo_open"] and value == lo) or (hi is not None and value > hi):
        bracket = "(" if meta["lo_open"] else "["
        raise OptionError(f"{name} must be in {bracket}{lo}, {hi if hi is not None else 'inf'}], got {value}")


def add_arguments(parser) -> None:
    """One --flag per public option (--beam-size, --top-p, ...) for an argparse parser. Defaults are left
    unset, so options not given keep the model's own defaults."""
    for name in PUBLIC_OPTIONS:
        meta = OPTION_FIELDS[name].metadata
        default = getattr(DecodeOptions(), name)
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, choices=meta["choices"],
                            help=f"{meta['help']} (default: the model's, else {default})")


def from_arguments(args) -> dict:
    """The options given on the command line, as raw values for `DecodeOptions.updated`."""
    return {name: getattr(args, name) for name in PUBLIC_OPTIONS if getattr(args, name, None) is not None}
