"""The decoding step as one ONNX Runtime graph (captioner.onnx_step): the same log-probabilities and states as
torch's step for each cell, the same captions, rebuilt when the weights change, and torch's step wherever
the graph cannot stand in; with its products in int8, close to torch's step and each row independent of its batch."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.decoding import WordBans, beam_search, sequential_decode
from captioner.onnx_step import WEIGHT_LEVELS, OnnxStep, int8_weights, step_graph, supported

from .conftest import tiny_decoder

pytest.importorskip("onnxruntime")

V, D = 40, 24
TOKENS = [torch.tensor([1, 1, 1]), torch.tensor([5, 6, 7]), torch.tensor([8, 9, 4])]


def steps(dec: CaptionDecoder, v: torch.Tensor, in_onnx: bool) -> list[tuple[torch.Tensor, dict]]:
    """Each step's log-probabilities and state, feeding TOKENS."""
    dec.step_in_onnx, out = in_onnx, []
    with torch.inference_mode():
        state = dec.start(v)
        for tokens in TOKENS:
            log_probs, state = dec.step_log_probs(tokens, state)
            out.append((log_probs.clone(), dict(state)))
    return out


def assert_same_steps(dec: CaptionDecoder, v: torch.Tensor) -> None:
    for (lp_onnx, s_onnx), (lp_torch, s_torch) in zip(steps(dec, v, True), steps(dec, v, False), strict=True):
        torch.testing.assert_close(lp_onnx, lp_torch, rtol=1e-5, atol=1e-5)
        assert s_onnx.keys() == s_torch.keys()
        for key in s_torch:
            torch.testing.assert_close(s_onnx[key], s_torch[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("conditioning", ["every_step", "first_input"])
def test_the_graph_computes_torchs_step(cell, conditioning):
    dec = tiny_decoder(V, cell=cell, conditioning=conditioning, feature_dim=D)
    assert_same_steps(dec, torch.randn(3, D))
    assert dec._onnx_step_key is not None  # the graph ran, not torch's step


def test_captions_are_torchs():
    dec = tiny_decoder(V, cell="lstm", conditioning="every_step", feature_dim=D, seed=3)
    v, bans = torch.randn(4, D), WordBans(end_id=2, suppress=(0, 1, 3))
    found = {}
    for in_onnx in (True, False):
        dec.step_in_onnx = in_onnx
        found[in_onnx] = ([h.tokens for h in sequential_decode(dec, v, 1, bans)],
                          [[h.tokens for h in hyps] for hyps in beam_search(dec, v, 1, bans)])
    assert found[True] == found[False]
    assert len({tuple(t) for t in found[True][0]}) > 1  # the photos got different captions: a real comparison


def test_the_graph_follows_weight_changes():
    dec = tiny_decoder(V, cell="lstm", conditioning="every_step", feature_dim=D)
    v = torch.randn(3, D)
    steps(dec, v, True)
    for change in (lambda: dec.out.bias.add_(torch.randn(V)), lambda: dec.rnn.weight_hh_l0.mul_(1.7),
                   lambda: dec.out.weight.mul_(-1.0)):
        with torch.no_grad():
            change()
        assert_same_steps(dec, v)


@pytest.mark.parametrize("config", [dict(softmax_head=8), dict(num_layers=2)])
def test_decoders_the_graph_cannot_hold_keep_torchs_step(config):
    torch.manual_seed(0)
    dec = CaptionDecoder(DecoderConfig(vocab_size=V, feature_dim=D, embed_dim=16, hidden_dim=32, dropout=0.0,
                                       **config)).eval()
    assert not supported(dec)
    with pytest.raises(ValueError, match="one-layer decoder with a full softmax"):
        OnnxStep(dec)
    onnx_steps = steps(dec, torch.randn(3, D), True)
    assert dec._onnx_step_key is None
    assert all(lp.isfinite().all() for lp, _ in onnx_steps)


def test_training_mode_and_gradients_keep_torchs_step():
    dec = tiny_decoder(V, cell="gru", conditioning="every_step", feature_dim=D)
    dec.step_in_onnx = True
    v = torch.randn(2, D, requires_grad=True)
    log_probs, _ = dec.step_log_probs(TOKENS[1][:2], dec.start(v))  # gradients on: the fused module's step
    log_probs.sum().backward()
    assert v.grad is not None and dec._onnx_step_key is None


def test_copies_build_their_own_graph_from_their_own_weights():
    """bench.train deep-copies a loaded model's decoder; the session cannot be copied, a copy (deep or shallow)
    rebuilds its own."""
    dec = tiny_decoder(V, cell="lstm", conditioning="every_step", feature_dim=D)
    dec.run_steps_in_onnx()
    twin, shallow = copy.deepcopy(dec), copy.copy(dec)
    assert twin.step_in_onnx and twin._onnx_step_key is None and shallow._onnx_step_key is None
    assert dec._onnx_step_key is not None
    with torch.no_grad():
        twin.out.bias.add_(1.0)  # the copy's own weights, not the original's
    v = torch.randn(3, D)
    assert_same_steps(twin, v)
    assert_same_steps(shallow, v)
    assert_same_steps(dec, v)


def test_int8_weights_are_seven_bit_per_column_and_within_half_a_step():
    weight = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    weight[:, 5] = 0.0  # a column of zeros keeps a usable scale
    q, scale = int8_weights(weight)
    assert q.dtype == np.int8 and scale.shape == (6,) and np.all(scale > 0)
    assert np.abs(q).max() == WEIGHT_LEVELS and np.all(np.abs(q[:, :5]).max(axis=0) == WEIGHT_LEVELS)
    assert np.all(np.abs(q * scale - weight) <= scale / 2 + 1e-7) and not q[:, 5].any()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_the_int8_step_is_close_to_torchs_and_each_row_its_own(cell):
    dec = tiny_decoder(V, cell=cell, conditioning="every_step", feature_dim=D, seed=1)
    with torch.no_grad():  # weights as large as a trained decoder's, so int8's rounding is the error measured
        dec.rnn.weight_hh_l0.mul_(8.0)
        dec.out.weight.mul_(8.0)
    fp32, int8 = OnnxStep(dec), OnnxStep(dec, int8=True)
    torch.manual_seed(0)
    gates_x, h = torch.randn(4, dec.rnn.weight_hh_l0.size(0)), torch.rand(4, 32) * 2 - 1
    c = torch.randn(4, 32) if cell == "lstm" else None
    exact, rounded = fp32(gates_x, h, c), int8(gates_x, h, c)
    error = (rounded[0] - exact[0]).abs().max()
    assert 0 < error < 0.05 * exact[0].abs().max()  # int8: close, not equal
    assert (rounded[1] - exact[1]).abs().max() < 0.05
    alone = int8(gates_x[2:3], h[2:3], c[2:3] if c is not None else None)
    assert torch.equal(alone[0][0], rounded[0][2])  # a row's scale is its own: batching changes nothing


def test_a_decoder_asked_for_int8_steps_runs_the_int8_graph_and_switches_back():
    dec = tiny_decoder(V, cell="lstm", conditioning="every_step", feature_dim=D, seed=3)
    ops = [node.op_type for node in onnx.load_from_string(step_graph(dec, int8=True)).graph.node]
    assert ops.count("MatMulInteger") == 2 and "MatMul" not in ops  # both products, no fp32 one left
    v = torch.randn(3, D)
    dec.run_steps_in_onnx(int8=True)
    int8_steps = [lp for lp, _ in steps(dec, v, True)]
    assert not all(torch.equal(a, b) for a, (b, _) in zip(int8_steps, steps(dec, v, False), strict=True))
    dec.run_steps_in_onnx(int8=False)  # the flag is part of the graph's key: the fp32 graph again
    assert_same_steps(dec, v)
    dec.run_steps_in_onnx(int8=True)
    assert all(torch.equal(a, b) for a, (b, _) in zip(int8_steps, steps(dec, v, True), strict=True))
