"""One-file checkpoints: safetensors for the weights, JSON metadata for everything needed to rebuild the model.

Loading never executes code (safetensors holds only tensors and strings), works on CPU, and fails with
:class:`CheckpointError` naming the file for anything corrupt, truncated or from an incompatible version.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "captioner-checkpoint"
FORMAT_VERSION = 1
_META_KEYS = ("encoder", "decoder", "vocab", "preprocess", "metrics", "info", "decoding", "grounding")
_OPTIONAL = {"decoding": {}, "grounding": {}}  # keys added after version 1 shipped: absent means the default


class CheckpointError(ValueError):
    """The file is not a usable captioner checkpoint."""


@dataclass
class Checkpoint:
    tensors: dict[str, torch.Tensor]  # "encoder.*", "decoder.*" and "grounding.*"
    encoder: dict  # {"name": ...}
    decoder: dict  # DecoderConfig fields
    vocab: list[str]
    preprocess: dict  # PreprocessConfig fields
    metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # training config, data, timings: free-form, for humans
    decoding: dict = field(default_factory=dict)  # default beam-search settings chosen on validation data
    grounding: dict = field(default_factory=dict)  # concepts, thresholds, ImageNet labels (captioner.grounding); {} = none

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def atomic_write(path: str | Path, write) -> None:
    """Call write(tmp_path), then rename over `path`: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; a checkpoint is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path: str | Path, ckpt: Checkpoint, dtype: torch.dtype | None = None) -> None:
    """Write `ckpt` atomically; with `dtype` (e.g. torch.float16) floating tensors are stored in it."""
    tensors = {}
    for k, v in ckpt.tensors.items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    for key in _META_KEYS:
        metadata[key] = json.dumps(getattr(ckpt, key))
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors (on the CPU) and string metadata: FileNotFoundError if it is not there,
    CheckpointError naming it if it is not a readable safetensors file. Reads no code, only data."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return load_file(str(path), device="cpu"), read_metadata(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint onto the CPU as float32."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a captioner checkpoint (format={metadata.get('format')!r})")
    version = metadata.get("format_version", "?")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: checkpoint format version {version}, this captioner reads {FORMAT_VERSION}")
    try:
        fields = {key: json.loads(metadata[key]) if key in metadata else _OPTIONAL[key] for key in _META_KEYS}
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: metadata is missing or malformed ({exc})") from exc
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return Checkpoint(tensors=tensors, **fields)
