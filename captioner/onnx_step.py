"""A decoding step run by ONNX Runtime: the recurrent cell's product and gates, the output layer and the
log-softmax as one graph, built in memory from the decoder's own weights.

At batch 1 a step is two matrix-vector products over about 9 MB of weights and a dozen small operations.
torch dispatches each operation on its own, and its BLAS reads the weights several times slower than
ONNX Runtime's kernels on some CPUs (docs/speed.md); one graph call per step pays neither. The graph holds
the weights as they are when it is built, so nothing is written to disk and nothing can come from another
checkpoint. It computes the equations of `CaptionDecoder._fast_step` (tests compare the two): the caller
gives each row's input gates (word and image contributions and biases, as the fast path computes them).
With `int8` the two products run in int8, reading a quarter of the bytes (`onnx-int8` on CPUs without int8
dot products: captioner.backends); the log-probabilities then differ a little from torch's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .backends import ort_session

OPSET = 17
# int8 products: weights within +-64 (7 bits), one scale per output column; each row's values as the uint8
# x / scale + 128, scale = max|x| / 127. AVX2's u8 x s8 kernels add pairs of products in 16 bits, and
# 255 * 64 * 2 < 2**15 cannot saturate, so CPUs with and without VNNI compute the same integers.
WEIGHT_LEVELS, ROW_LEVELS = 64, 127


def supported(decoder: nn.Module) -> bool:
    """Whether a decoder's step can run here: one recurrent layer and a full softmax output layer."""
    return decoder.cfg.num_layers == 1 and isinstance(decoder.out, nn.Linear)


def _product(x: str, weight: str, out: str, int8: bool) -> list:
    """The nodes of out = x @ weight [in, out]; in int8, each row of x quantised on its own scale (so a row's
    result never depends on the other rows of its batch) and the weight per output column (`int8_weights`)."""
    from onnx import helper

    node = helper.make_node
    if not int8:
        return [node("MatMul", [x, weight], [out])]
    s = f"{out}_"  # prefix of the intermediate names
    return [node("Abs", [x], [s + "abs"]), node("ReduceMax", [s + "abs"], [s + "max"], axes=[1], keepdims=1),
            node("Max", [s + "max", "smallest"], [s + "max1"]), node("Div", [s + "max1", "row_levels"], [s + "scale"]),
            node("Div", [x, s + "scale"], [s + "scaled"]), node("Round", [s + "scaled"], [s + "rounded"]),
            node("Add", [s + "rounded", "row_zero"], [s + "shifted"]),
            node("Cast", [s + "shifted"], [s + "q"], to=2),  # UINT8: x / scale + 128, in [1, 255]
            node("MatMulInteger", [s + "q", weight + "_q", "row_zero_u8"], [s + "int"]),
            node("Cast", [s + "int"], [s + "float"], to=1),  # FLOAT
            node("Mul", [s + "float", s + "scale"], [s + "rows"]), node("Mul", [s + "rows", weight + "_scale"], [out])]


def int8_weights(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A weight [in, out] as int8 values within +-WEIGHT_LEVELS and one fp32 scale per output column."""
    largest = np.abs(weight).max(axis=0)
    scale = np.where(largest > 0, largest / WEIGHT_LEVELS, 1.0).astype(np.float32)
    return np.clip(np.rint(weight / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8), scale


def _cell_nodes(cell: str, hidden: int, int8: bool = False) -> list:
    """The nodes from gates_x [N, G], h [N, H] (and c) to h_next (and c_next), torch's gate order."""
    from onnx import helper

    node = helper.make_node
    if cell == "lstm":  # gates_x holds both biases
        return _product("h", "w_hh", "gates_h", int8) + [node("Add", ["gates_x", "gates_h"], ["gates"]),
                node("Split", ["gates", "split4"], ["i_", "f_", "g_", "o_"], axis=1),
                node("Sigmoid", ["i_"], ["i"]), node("Sigmoid", ["f_"], ["f"]), node("Tanh", ["g_"], ["g"]),
                node("Sigmoid", ["o_"], ["o"]), node("Mul", ["f", "c"], ["fc"]), node("Mul", ["i", "g"], ["ig"]),
                node("Add", ["fc", "ig"], ["c_next"]), node("Tanh", ["c_next"], ["tanh_c"]),
                node("Mul", ["o", "tanh_c"], ["h_next"])]
    if cell == "gru":  # gates_x holds b_ih; b_hn stays inside the reset gate's product
        return _product("h", "w_hh", "gh_", int8) + [node("Add", ["gh_", "b_hh"], ["gates_h"]),
                node("Split", ["gates_x", "split3"], ["rx", "zx", "nx"], axis=1),
                node("Split", ["gates_h", "split3"], ["rh", "zh", "nh"], axis=1),
                node("Add", ["rx", "rh"], ["r_"]), node("Sigmoid", ["r_"], ["r"]),
                node("Add", ["zx", "zh"], ["z_"]), node("Sigmoid", ["z_"], ["z"]),
                node("Mul", ["r", "nh"], ["rnh"]), node("Add", ["nx", "rnh"], ["n_"]), node("Tanh", ["n_"], ["n"]),
                node("Sub", ["n", "h"], ["n_minus_h"]), node("Mul", ["z", "n_minus_h"], ["z_step"]),
                node("Sub", ["n", "z_step"], ["h_next"])]  # (1 - z) n + z h
    return _product("h", "w_hh", "gates_h", int8) + [node("Add", ["gates_x", "gates_h"], ["pre"]),
                                                     node("Tanh", ["pre"], ["h_next"])]


def step_graph(decoder: nn.Module, int8: bool = False) -> bytes:
    """The serialised ONNX model of one step of `decoder` (see the module's docstring): its weights in fp32, or
    with `int8` its two products (recurrent and output layer) in int8 (`_product`)."""
    from onnx import TensorProto, helper, numpy_helper

    cfg, rnn = decoder.cfg, decoder.rnn
    hidden, gates = cfg.hidden_dim, rnn.weight_hh_l0.size(0)

    def array(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())

    weights = {"w_hh": array(rnn.weight_hh_l0.T), "b_hh": array(rnn.bias_hh_l0),
               "w_out": array(decoder.out.weight.T), "b_out": array(decoder.out.bias),
               "split4": np.array([hidden] * 4, np.int64), "split3": np.array([hidden] * 3, np.int64),
               "smallest": np.array(1e-30, np.float32), "row_levels": np.array(ROW_LEVELS, np.float32),
               "row_zero": np.array(ROW_LEVELS + 1, np.float32), "row_zero_u8": np.array(ROW_LEVELS + 1, np.uint8)}
    if int8:
        for name in ("w_hh", "w_out"):
            weights[name + "_q"], weights[name + "_scale"] = int8_weights(weights.pop(name))
    nodes = _cell_nodes(cfg.cell, hidden, int8) + _product("h_next", "w_out", "logits_", int8) + [
        helper.make_node("Add", ["logits_", "b_out"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=1)]
    used = {name for n in nodes for name in n.input}
    lstm = cfg.cell == "lstm"

    def value(name: str, width: int):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["rows", width])

    inputs = [value("gates_x", gates), value("h", hidden)] + ([value("c", hidden)] if lstm else [])
    outputs = [value("log_probs", cfg.vocab_size), value("h_next", hidden)]
    outputs += [value("c_next", hidden)] if lstm else []
    graph = helper.make_graph(nodes, f"{cfg.cell}_step", inputs, outputs,
                              [numpy_helper.from_array(a, k) for k, a in weights.items() if k in used])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()


class OnnxStep:
    """One decoder's step as an ONNX Runtime session: (gates_x, h, c) -> (log_probs, h_next, c_next), torch
    tensors in and out (c and c_next None unless the cell is an LSTM)."""

    def __init__(self, decoder: nn.Module, threads: int | None = None, int8: bool = False):
        if not supported(decoder):
            raise ValueError("the ONNX step needs a one-layer decoder with a full softmax")
        self.session = ort_session(step_graph(decoder, int8), threads)
        self.lstm = decoder.cfg.cell == "lstm"

    def __call__(self, gates_x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        def array(t: torch.Tensor) -> np.ndarray:  # no copy for what decoding passes: contiguous fp32
            return t.numpy() if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous().numpy()

        feeds = {"gates_x": array(gates_x), "h": array(h)}
        if self.lstm:
            feeds["c"] = array(c)
        out = [torch.from_numpy(a) for a in self.session.run(None, feeds)]
        return out[0], out[1], out[2] if self.lstm else None
