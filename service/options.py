"""Request options: parsed from query string, form fields or JSON, validated, with 422 for bad values."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace


class OptionError(ValueError):
    """An option is unknown or out of range (HTTP 422)."""


@dataclass(frozen=True)
class DecodeOptions:
    method: str = "beam"
    beam_size: int = 3
    n_best: int = 1
    max_length: int = 20
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def batch_key(self) -> "DecodeOptions":
        """Requests that may share one decoder call: same options except the (per-image) seed."""
        return replace(self, seed=None)

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULTS = DecodeOptions()
METHODS = ("beam", "greedy", "sample")
FIELDS = {f for f in DecodeOptions.__dataclass_fields__}
MAX_SEED = 2**63 - 1
# Accepted ranges, also published in the OpenAPI document; temperature and top_p exclude their minimum.
LIMITS = {"beam_size": (1, 10), "n_best": (1, 10), "max_length": (1, 50), "temperature": (0.0, 5.0), "top_p": (0.0, 1.0)}


def _int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise OptionError(f"{name} must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise OptionError(f"{name} must be an integer, got {value}")
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise OptionError(f"{name} must be an integer, got {value!r}") from None
    if not isinstance(value, int):
        raise OptionError(f"{name} must be an integer")
    if not lo <= value <= hi:
        raise OptionError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _float(name: str, value, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool):
        raise OptionError(f"{name} must be a number")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value > hi or value < lo or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise OptionError(f"{name} must be in {bracket}{lo}, {hi}], got {value}")
    return value


def parse_options(raw: dict, vocab_size: int) -> DecodeOptions:
    """Validate raw option values (strings or JSON values); unknown names are refused, not ignored."""
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise OptionError(f"unknown option(s): {', '.join(unknown)}; allowed: {', '.join(sorted(FIELDS))}")
    def given(name: str):
        return raw.get(name, getattr(DEFAULTS, name))

    method = given("method")
    if method not in METHODS:
        raise OptionError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    beam_size = _int("beam_size", given("beam_size"), *LIMITS["beam_size"])
    n_best = _int("n_best", given("n_best"), *LIMITS["n_best"])
    if n_best > beam_size:
        raise OptionError(f"n_best ({n_best}) must not exceed beam_size ({beam_size})")
    if n_best > 1 and method != "beam":
        raise OptionError("n_best > 1 needs method=beam")
    seed = given("seed")
    return DecodeOptions(
        method=method,
        beam_size=beam_size,
        n_best=n_best,
        max_length=_int("max_length", given("max_length"), *LIMITS["max_length"]),
        temperature=_float("temperature", given("temperature"), *LIMITS["temperature"], lo_open=True),
        top_k=_int("top_k", given("top_k"), 0, vocab_size),
        top_p=_float("top_p", given("top_p"), *LIMITS["top_p"], lo_open=True),
        seed=None if seed is None or seed == "" else _int("seed", seed, 0, MAX_SEED),
    )
