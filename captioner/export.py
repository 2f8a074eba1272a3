"""Export a checkpoint's encoder for the ONNX Runtime backends (captioner.backends): one deterministic step,
so the same checkpoint and calibration photos always give the same files, byte for byte.

Needs `onnx` and `onnxruntime` (its quantisation tools); serving the files needs only `onnxruntime`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .backends import DIGEST_KEY, INPUT_NAME, OUTPUT_NAME, encoder_digest, onnx_path
from .checkpoint import atomic_write
from .model import Captioner

OPSET = 17
# int8 leaves the first convolutions in fp32 (with the activations and sums between them): there the feature
# maps are largest and an error made early passes through every layer after it (docs/speed.md measures it).
FP32_LEADING_CONVS = 0.28
# It also leaves in fp32 every block without a residual sum (the first of each stage): there the block's
# output is all quantised path, where a residual block adds its small quantised change to its input
# (docs/speed.md measures both). MinMax ranges are the mean of each calibration photo's own
# (CalibMovingAverage), not the extremes over all of them.
log = logging.getLogger("captioner.export")


def export_onnx(model: Captioner, checkpoint: str | Path, calibration: Sequence[torch.Tensor] = ()) -> list[Path]:
    """Write `checkpoint`'s `onnx` file and, given calibration photos (preprocessed [3,H,W]), its `onnx-int8`
    file; both carry the digest that binds them to the checkpoint. Returns the paths written."""
    import onnx

    digest = encoder_digest(model.encoder, model.preprocess_cfg)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "encoder.onnx"
        _export_fp32(model, fp32)
        outputs = {"onnx": fp32}
        if calibration:
            outputs["onnx-int8"] = _quantize(fp32, Path(tmp), calibration, unsummed_blocks(model.encoder))
        for backend, made in outputs.items():
            graph = onnx.load(made)
            onnx.helper.set_model_props(graph, {DIGEST_KEY: digest, "captioner.backend": backend})
            graph.doc_string = f"captioner {model.encoder_name} encoder ({backend}): preprocessed photo -> v"
            target = onnx_path(checkpoint, backend)
            atomic_write(target, lambda path, g=graph: onnx.save(g, path))
            log.info("wrote %s", target)
            written.append(target)
    return written


def _export_fp32(model: Captioner, path: Path) -> None:
    size = model.preprocess_cfg.size
    example = torch.zeros(1, 3, size, size)
    encoder = model.encoder.eval()
    # TorchScript-based export: no onnxscript needed, and the same graph on every run.
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(encoder, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def unsummed_blocks(encoder: torch.nn.Module) -> list[int]:
    """The indices of the encoder's blocks that have no residual sum."""
    return [i for i, block in enumerate(getattr(encoder, "blocks", ())) if not getattr(block, "residual", True)]


def _quantize(fp32: Path, tmp: Path, calibration: Sequence[torch.Tensor], fp32_blocks: Sequence[int]) -> Path:
    """Static QDQ quantisation, MinMax ranges from the calibration photos (one at a time, in order), leaving
    the leading share and `fp32_blocks` in fp32."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Photos(CalibrationDataReader):
        def __init__(self):
            self.left = iter(calibration)

        def get_next(self):
            photo = next(self.left, None)
            return None if photo is None else {INPUT_NAME: photo.unsqueeze(0).float().contiguous().numpy()}

    prepared, int8 = tmp / "encoder.pre.onnx", tmp / "encoder-int8.onnx"
    quant_pre_process(str(fp32), str(prepared))
    nodes = onnx.load(prepared).graph.node
    quantize_static(str(prepared), str(int8), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=leading_nodes(nodes, FP32_LEADING_CONVS) + block_nodes(nodes, fp32_blocks),
                    extra_options={"CalibMovingAverage": True})
    return int8


def block_nodes(nodes: Sequence, blocks: Sequence[int]) -> list[str]:
    """The names of the graph `nodes` inside the encoder's `blocks` (the exporter scopes a node by the module
    that made it: /blocks/blocks.7/... for `encoder.blocks[7]`)."""
    names = [n.name for n in nodes]
    found = {i: [n for n in names if n.startswith(f"/blocks/blocks.{i}/")] for i in blocks}
    if missing := [i for i, inside in found.items() if not inside]:
        raise ValueError(f"no node of block(s) {missing} in the graph: the exporter's node names changed")
    return [n for inside in found.values() for n in inside]


def leading_nodes(nodes: Sequence, share: float) -> list[str]:
    """The names of the graph `nodes` (in their topological order) before the first convolution past the
    first `share` of them."""
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    first_int8 = convs[min(len(convs) - 1, round(share * len(convs)))]
    names = [n.name for n in nodes]
    return names[: names.index(first_int8)]
