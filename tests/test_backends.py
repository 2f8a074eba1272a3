"""Backends: ONNX Runtime gives torch's vectors and captions, files are bound to their checkpoint, and
the backend is chosen as documented (argument, $CAPTIONER_BACKEND, default with a torch fallback)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

import captioner
from captioner import CheckpointError, backends, checkpoint
from captioner.__main__ import main as cli
from captioner.backends import BACKEND_ENV, default_backend, int8_part, onnx_path
from captioner.cpu import cpuinfo
from captioner.decoder import CaptionDecoder
from captioner.encoders import create_encoder
from captioner.export import block_nodes, export_onnx
from captioner.model import Captioner, default_model_path

from .conftest import FIXTURES, LITE0, tiny_decoder, tiny_vocab

PHOTOS = sorted(p for p in FIXTURES.iterdir() if p.suffix == ".jpg")


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


@pytest.fixture(scope="module")
def shipped() -> dict[str, Captioner]:
    return {b: captioner.load(backend=b) for b in ("torch", "onnx", "onnx-int8")}


def test_shipped_onnx_gives_torchs_vectors_and_captions(shipped):
    batch = torch.stack([shipped["torch"].preprocess(p) for p in PHOTOS])
    v = {b: m.encode(batch) for b, m in shipped.items()}
    assert (v["onnx"] - v["torch"]).abs().max() < 1e-3 * v["torch"].abs().max()
    assert cosine(v["onnx-int8"], v["torch"]).min() > 0.98  # int8: close, not equal
    captions = {b: [c[0].text for c in m.caption(list(PHOTOS))] for b, m in shipped.items()}
    assert captions["onnx"] == captions["torch"]  # the ONNX backends' decoding step too (captioner.onnx_step)
    assert [m.decoder.step_in_onnx for m in shipped.values()] == [False, True, True]
    assert shipped["onnx"].decoder._onnx_step_key is not None  # built at load and used, not torch's step
    assert {m.backend for m in shipped.values()} == {"torch", "onnx", "onnx-int8"}


def test_explain_runs_its_occlusions_on_the_backend(shipped, cat_photo):
    model = shipped["onnx-int8"]
    rows, run = [], model.image_encoder

    def counting(batch):
        rows.append(batch.size(0))
        return run(batch)

    model.image_encoder = counting
    try:
        [[caption]] = model.caption(cat_photo, explain=True)
    finally:
        model.image_encoder = run
    assert rows == [1, 50]  # the photo, then it and its 7 x 7 occluded copies in one batch
    assert caption.explanation is not None


def small_checkpoint(tmp_path, name: str, seed: int):
    torch.manual_seed(seed)
    vocab = tiny_vocab(30)
    model = Captioner(create_encoder("efficientnet_lite0"), tiny_decoder(len(vocab)), vocab, LITE0.preprocess(),
                      "efficientnet_lite0")
    path = tmp_path / f"{name}.safetensors"
    checkpoint.save(path, model.checkpoint())
    return captioner.load(path, backend="torch"), path


def test_export_is_deterministic_bound_to_its_checkpoint_and_refused_elsewhere(tmp_path, cat_photo, coffee_photo):
    model, path = small_checkpoint(tmp_path, "a", seed=0)
    calibration = [model.preprocess(p) for p in (cat_photo, coffee_photo)]
    first = [f.read_bytes() for f in export_onnx(model, path, calibration)]
    assert [onnx_path(path, "onnx").is_file(), onnx_path(path, "onnx-int8").is_file()] == [True, True]
    again = [f.read_bytes() for f in export_onnx(model, path, calibration)]
    assert first == again  # the same checkpoint and photos: the same bytes

    batch = torch.stack(calibration)
    exported = captioner.load(path, backend="onnx")
    assert (exported.encode(batch) - model.encode(batch)).abs().max() < 1e-4

    other, other_path = small_checkpoint(tmp_path, "b", seed=1)
    export_onnx(other, other_path)
    shutil.copy(onnx_path(other_path, "onnx"), onnx_path(path, "onnx"))  # b's encoder file beside a
    with pytest.raises(CheckpointError, match="exported from another checkpoint"):
        captioner.load(path, backend="onnx")


def test_int8_keeps_the_blocks_without_a_residual_sum_in_fp32(tmp_path, cat_photo):
    """Their output is all quantised path, where a residual block adds its int8 change to its input: they
    stay fp32, and the residual blocks past the leading fp32 share run in int8."""
    import onnx

    model, path = small_checkpoint(tmp_path, "q", seed=0)
    export_onnx(model, path, [model.preprocess(cat_photo)])
    graph = onnx.load(onnx_path(path, "onnx-int8")).graph
    dequantised = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}

    def int8_convs(block: int) -> int:
        return sum(n.op_type == "Conv" and n.name.startswith(f"/blocks/blocks.{block}/") and n.input[1] in dequantised
                   for n in graph.node)

    blocks = list(model.encoder.blocks)
    unsummed = [i for i, block in enumerate(blocks) if not block.residual]
    last_residual = max(i for i, block in enumerate(blocks) if block.residual)
    assert len(unsummed) >= 5 and [int8_convs(i) for i in unsummed] == [0] * len(unsummed)
    assert int8_convs(last_residual) == 3  # expand, depthwise, project
    with pytest.raises(ValueError, match="node names changed"):
        block_nodes(graph.node, [len(blocks)])


def test_backend_choice_argument_environment_default(tmp_path, monkeypatch, caplog):
    model, path = small_checkpoint(tmp_path, "m", seed=0)
    with pytest.raises(CheckpointError, match="make onnx"):
        captioner.load(path, backend="onnx")  # asked for, no file: an error that says how to make it
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="captioner.backends"):
        assert captioner.load(path).backend == "torch"  # the default, no file: torch, and it says so
    assert "encoding with torch" in caplog.text
    monkeypatch.setenv(BACKEND_ENV, "onnx-int8")
    with pytest.raises(CheckpointError):
        captioner.load(path)  # the environment asks for it: like the argument
    monkeypatch.setenv(BACKEND_ENV, "tensorrt")
    with pytest.raises(ValueError, match="unknown encoder backend"):
        captioner.load(path)
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert captioner.load().backend == "torch"
    monkeypatch.delenv(BACKEND_ENV)
    assert captioner.load().backend == default_backend()  # the shipped model carries its files


def test_int8_runs_the_encoder_only_where_the_cpu_has_int8_dot_products(tmp_path, monkeypatch):
    """Without VNNI, ONNX Runtime's int8 convolutions go through 16-bit sums that saturate: there `onnx-int8`
    keeps the fp32 encoder and runs the decoding step's (saturation-free) products in int8 instead."""
    assert int8_part("onnx-int8", frozenset({"avx2", "avx512f", "avx512_vnni"})) == "encoder"
    assert int8_part("onnx-int8", frozenset({"avx2", "avx_vnni"})) == "encoder"
    assert int8_part("onnx-int8", frozenset({"avx2", "fma", "avx512f", "avx512bw"})) == "step"
    assert int8_part("onnx-int8", frozenset()) == "step"  # flags unknown (not Linux)
    assert int8_part("onnx", frozenset({"avx512_vnni"})) is None and int8_part("torch", frozenset()) is None
    assert isinstance(backends.cpu_flags(), frozenset)

    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx512_vnni"}))
    model = captioner.load()
    assert model.backend == "onnx-int8" and model.image_encoder.path == onnx_path(default_model_path(), "onnx-int8")
    assert model.decoder.step_in_onnx and not model.decoder.onnx_step_int8 and model.describe()["int8"] == "encoder"
    small, path = small_checkpoint(tmp_path, "fp32only", seed=0)
    export_onnx(small, path)  # no calibration photos: no int8 file
    assert captioner.load(path).backend == "onnx"  # the fp32 file, not torch
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx2"}))
    model = captioner.load()
    assert model.backend == "onnx-int8" and model.image_encoder.path == onnx_path(default_model_path(), "onnx")
    assert model.decoder.step_in_onnx and model.decoder.onnx_step_int8 and model.describe()["int8"] == "step"
    assert captioner.load(path).backend == "onnx-int8"  # the fp32 file is all it needs here


def test_cpuinfo_reads_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n\n"
                    "processor\t: 1\nvendor_id\t: GenuineIntel\nflags\t\t: avx512_vnni\n")
    assert cpuinfo(str(info)) == {"processor": "0", "vendor_id": "AuthenticAMD", "model name": "AMD EPYC",
                                  "flags": "fpu avx2 fma"}
    assert cpuinfo(str(tmp_path / "missing")) == {}


def test_cli_backend_flag(cat_photo, capsys):
    assert cli(["caption", "--backend", "onnx", "--json", str(cat_photo)]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    [[torch_caption]] = captioner.load(backend="torch").caption(cat_photo)
    assert line["captions"][0]["text"] == torch_caption.text


def test_a_new_decoder_on_the_same_encoder_keeps_its_files(tmp_path):
    """The binding is the encoder's weights and preprocessing, not the file: retraining the decoder keeps them valid."""
    model, path = small_checkpoint(tmp_path, "c", seed=0)
    export_onnx(model, path)
    model.decoder = CaptionDecoder(model.decoder.cfg)  # retrained decoder, same encoder
    checkpoint.save(path, model.checkpoint())
    assert captioner.load(path, backend="onnx").backend == "onnx"
