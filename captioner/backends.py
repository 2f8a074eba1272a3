"""Encoder backends: what runs the CNN that turns a preprocessed photo into the vector v.

- `torch`: the checkpoint's own module; the reference, and training's path.
- `onnx`: the same network exported to ONNX and run by ONNX Runtime (fp32).
- `onnx-int8`: ONNX Runtime with int8 products where this CPU keeps torch's quality with them (`int8_part`): on a
  CPU with int8 dot products, the encoder file statically quantised (int8 weights per channel, uint8
  activations) on training photos; elsewhere the fp32 encoder and the decoding step's two products in int8.

The ONNX files live beside the checkpoint (`NAME.encoder.onnx`, `NAME.encoder-int8.onnx`) and are made from it by
`captioner.export` (`make onnx`). Each carries the digest of the encoder weights and preprocessing it was
exported from, so a file made from another checkpoint is refused rather than quietly giving other vectors.
With either ONNX backend the decoder's step runs in ONNX Runtime too (`captioner.onnx_step`, built from the
loaded weights); with `torch` all of decoding runs in torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError
from .cpu import cpu_flags
from .preprocess import PreprocessConfig

BACKENDS = ("torch", "onnx", "onnx-int8")
# CPU flags (Linux /proc/cpuinfo) of int8 dot-product instructions. Where a CPU has one, `onnx-int8` runs the int8
# encoder: within 0.05 of torch's dev BLEU-4 and CIDEr (docs/speed.md). Without them ONNX Runtime's uint8 x int8
# products pass through 16-bit sums that saturate on the encoder's 8-bit weights (its quantisation guide; 1.06
# CIDEr lost on an AVX2-only CPU, docs/speed.md), so there `onnx-int8` keeps the fp32 encoder and runs the
# decoding step's products in int8, whose 7-bit weights cannot saturate (captioner.onnx_step). The step in int8
# with the int8 encoder loses more than either alone (docs/speed.md), so one CPU never gets both.
INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
BACKEND_ENV = "CAPTIONER_BACKEND"
SUFFIXES = {"onnx": ".encoder.onnx", "onnx-int8": ".encoder-int8.onnx"}
DIGEST_KEY = "captioner.encoder_sha256"  # ONNX metadata: what the file was exported from
INPUT_NAME, OUTPUT_NAME = "image", "v"

log = logging.getLogger("captioner.backends")
ImageEncoder = Callable[[torch.Tensor], torch.Tensor]  # preprocessed [N,3,H,W] -> [N,D]


def onnx_path(checkpoint: str | Path, backend: str) -> Path:
    """Where `backend`'s ONNX file for `checkpoint` lives: beside it, named after it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + SUFFIXES[backend])


def encoder_digest(encoder: nn.Module, preprocess: PreprocessConfig) -> str:
    """sha256 of the encoder's weights (names, shapes, fp32 bytes) and its preprocessing: equal digests, equal v."""
    h = hashlib.sha256(json.dumps(preprocess.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        t = t.float() if t.is_floating_point() else t
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def default_backend() -> str:
    """`onnx-int8`: the fastest backend on every CPU measured, within 0.5 of torch's dev BLEU-4 and CIDEr
    (`int8_part` picks what runs in int8; docs/speed.md)."""
    return "onnx-int8"


def int8_part(backend: str, flags: frozenset[str] | None = None) -> str | None:
    """What `backend` runs in int8 on a CPU with these flags (default: this CPU's): "encoder", "step" or None
    (INT8_DOT_PRODUCT_FLAGS says why)."""
    if backend != "onnx-int8":
        return None
    return "encoder" if (cpu_flags() if flags is None else flags) & INT8_DOT_PRODUCT_FLAGS else "step"


def requested_backend(backend: str | None) -> tuple[str, bool]:
    """(backend, whether someone asked for it): the argument, else $CAPTIONER_BACKEND, else the default."""
    name = backend or os.environ.get(BACKEND_ENV) or ""
    if name and name not in BACKENDS:
        raise ValueError(f"unknown encoder backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return (name, True) if name else (default_backend(), False)


def ort_session(model: Path | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session over a model file or serialised model, all graph optimisations on, with
    torch's thread count unless told otherwise."""
    import onnxruntime as ort  # only here: a torch-only install never needs it

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    # Spinning threads would take the cores from the torch work that runs between sessions' calls.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """An ONNX Runtime session over one exported encoder file, called like the torch module it replaces."""

    def __init__(self, path: Path, digest: str, threads: int | None = None):
        try:
            self.session = ort_session(path, threads)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types for a broken file
            raise CheckpointError(f"{path}: not a readable ONNX encoder ({exc})") from exc
        made_from = self.session.get_modelmeta().custom_metadata_map.get(DIGEST_KEY)
        if made_from != digest:
            raise CheckpointError(f"{path} was exported from another checkpoint (encoder {str(made_from)[:12]}, this "
                                  f"checkpoint's {digest[:12]}): export it again with `make onnx` "
                                  f"(python -m training.export_onnx)")
        self.path = path

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        pixels = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0])


def image_encoder(backend: str | None, checkpoint: Path, encoder: nn.Module,
                  preprocess: PreprocessConfig) -> tuple[str, ImageEncoder]:
    """The backend that will run and the callable that runs it. A backend someone asked for (argument or
    $CAPTIONER_BACKEND) whose file is missing is an error; the default falls back to torch, saying so."""
    name, asked = requested_backend(backend)
    if name == "torch":
        return name, encoder
    path = onnx_path(checkpoint, "onnx-int8" if int8_part(name) == "encoder" else "onnx")
    if not path.is_file():
        if asked:
            raise CheckpointError(f"backend {name!r} needs {path}, which is not there: make it with `make onnx` "
                                  f"(python -m training.export_onnx --model {checkpoint})")
        if name == "onnx-int8" and onnx_path(checkpoint, "onnx").is_file():
            name, path = "onnx", onnx_path(checkpoint, "onnx")  # trained without photos to calibrate int8 on
        else:
            log.warning("no %s beside %s: encoding with torch (make it with `make onnx`)", path.name, checkpoint)
            return "torch", encoder
    return name, OnnxEncoder(path, encoder_digest(encoder, preprocess))
