"""What this CPU is, as Linux's /proc/cpuinfo says: its maker and feature flags. Two choices hang on it: what
`onnx-int8` runs in int8 (the encoder needs dot-product instructions) and the orientation of the decoder's
matrix products (MKL's kernels differ by maker)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4)
def cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields; empty where the file cannot be read (not Linux). Read once: the decoder
    asks at every step."""
    fields: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as info:
            for line in info:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return {}
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; none where unknown."""
    return frozenset(cpuinfo().get("flags", "").split())


def cpu_vendor() -> str:
    """The maker: "GenuineIntel", "AuthenticAMD", ...; empty where unknown."""
    return cpuinfo().get("vendor_id", "")


def cpu_name() -> str:
    """The model name ("AMD EPYC", "Intel(R) Xeon(R) Processor"); "" where unknown."""
    return cpuinfo().get("model name", "")
