"""bf16 autocast where the hardware runs bf16 natively: the one rule the caption trainer and the character
model's trainer share."""

from __future__ import annotations

import torch


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast where the hardware runs bf16 natively (CUDA; CPUs with avx512_bf16 or AMX); elsewhere a
    no-op, since emulated bf16 is slower than fp32 (docs/experiments.md has the measurements)."""
    native = device.type == "cuda" or (device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and native)
