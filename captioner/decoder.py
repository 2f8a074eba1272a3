"""The caption decoder: a word-level RNN (tanh RNN, LSTM or GRU) conditioned on the image vector v.

Two ways to condition on v, chosen by `DecoderConfig.conditioning`:

* ``"first_input"`` (Show and Tell, Vinyals et al. 2015): x_{-1} = W_v v is fed once before <start>;
  its output is discarded.
* ``"every_step"`` (the seed's recurrence h_t = tanh(W_hx x_t + W_hh h_{t-1} + W_ih v)): the projected
  image is concatenated to every word embedding, so the fused cell's input weight is [W_hx | W_ih].

torch's fused modules (nn.RNN / nn.LSTM / nn.GRU) do the recurrence; tests check one step of each against
the textbook equations computed by hand from the same weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cpu import cpu_vendor
from .onnx_step import OnnxStep, supported as onnx_step_supported
from .rnn import CELLS, make_rnn
from .softmax import AdaptiveSoftmax

State = dict[str, torch.Tensor]


# From how many rows a decoding step's products x W^T run faster as (W x^T)^T, by CPU maker (docs/speed.md):
# MKL on an AMD EPYC reads the weight about once per row in x W^T, twice as slow at 3 rows; on an Intel Xeon
# x W^T is faster at 3 rows and the other orientation at 24.
WEIGHT_FIRST_FROM_ROWS = {"AuthenticAMD": 2}
WEIGHT_FIRST_FROM_ROWS_ELSEWHERE = 16


def rows_product(x: torch.Tensor, weight: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + add [N, out] for rows x [N, in] (`add`: [out] or [N, out]), in whichever orientation is the
    faster one on this CPU for N rows: the same product either way, up to rounding."""
    fewest = WEIGHT_FIRST_FROM_ROWS.get(cpu_vendor(), WEIGHT_FIRST_FROM_ROWS_ELSEWHERE)
    if x.device.type != "cpu" or x.size(0) < fewest:
        return x @ weight.T if add is None else torch.addmm(add, x, weight.T)
    if add is None:
        return torch.mm(weight, x.T).T.contiguous()
    return torch.addmm(add.T if add.dim() == 2 else add.unsqueeze(1), weight, x.T).T.contiguous()


@dataclass
class DecoderConfig:
    """The decoder's shape and regularisation, with the defaults training uses (a training config holds
    one). `vocab_size` and `feature_dim` are the vocabulary's and the encoder's: set when training starts."""

    vocab_size: int = 0
    feature_dim: int = 0
    cell: str = "lstm"
    embed_dim: int = 512
    hidden_dim: int = 512
    num_layers: int = 1
    dropout: float = 0.3
    conditioning: str = "every_step"
    # 0: a full softmax over the vocabulary; N: an adaptive softmax (captioner.softmax) with the N most
    # frequent words in its head, whose training cost per word does not grow with the vocabulary
    softmax_head: int = 0

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        if self.conditioning not in ("first_input", "every_step"):
            raise ValueError(f"conditioning must be 'first_input' or 'every_step', got {self.conditioning!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class CaptionDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        if cfg.vocab_size < 1 or cfg.feature_dim < 1:
            raise ValueError(f"a decoder needs its vocab_size and feature_dim, got {cfg.vocab_size}, {cfg.feature_dim}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=0)
        # Per-dimension statistics of the training set's image vectors. Pooled CNN features are all
        # positive with a large shared mean; standardising them is what lets the decoder see how images
        # differ (docs/experiments.md: without it the loss ignores which photo a caption belongs to).
        self.register_buffer("feature_mean", torch.zeros(cfg.feature_dim))
        self.register_buffer("feature_std", torch.ones(cfg.feature_dim))
        self.image_proj = nn.Linear(cfg.feature_dim, cfg.embed_dim)
        input_dim = cfg.embed_dim * (2 if cfg.conditioning == "every_step" else 1)
        self.rnn = make_rnn(cfg.cell, input_dim, cfg.hidden_dim, cfg.num_layers, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        adaptive = 0 < cfg.softmax_head < cfg.vocab_size  # a head holding every word is a full softmax
        self.out = AdaptiveSoftmax(cfg.hidden_dim, cfg.vocab_size, cfg.softmax_head) if adaptive else \
            nn.Linear(cfg.hidden_dim, cfg.vocab_size)
        self._table_key: tuple | None = None
        self.use_fast_path = True  # set False to decode with the fused module's step (benchmarks compare the two)
        # False: the fast path computes each step's word gates for the words read instead of a table of every
        # word's. For decodes that read fewer words than the vocabulary holds between weight updates (SCST's
        # samples: a V-row table rebuilt for every batch cost more than the rest of the sampling).
        self.word_table = True
        # True: the fast path's steps run as one ONNX Runtime graph each (captioner.onnx_step; the ONNX backends
        # set it), for decoders it supports; the same equations, built from the weights as they are.
        self.step_in_onnx = False
        self.onnx_step_int8 = False  # True: that graph's two products in int8 (`captioner.onnx_step`)
        self._onnx_step_key: tuple | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        nn.init.zeros_(self.out.head.bias if isinstance(self.out, AdaptiveSoftmax) else self.out.bias)

    def set_feature_stats(self, features: torch.Tensor) -> None:
        """Record the mean and std of the training image vectors [N, D]."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-3))

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        """v -> the decoder's image input W_v standardise(v)."""
        return self.image_proj(self.drop((features - self.feature_mean) / self.feature_std))

    # -- training ---------------------------------------------------------------------------------
    def forward(self, features: torch.Tensor, tokens: torch.Tensor,
                label_smoothing: float | None = None) -> torch.Tensor:
        """Teacher forcing: logits [B, T-1, V], step t predicting tokens[:, t+1] from the true tokens[:, :t+1];
        or, given `label_smoothing`, training's loss: the mean cross-entropy of every word after <start>
        (padding, id 0, left out), computed without the [words, V] logits where the softmax is adaptive.

        Padding needs no packing: the RNN runs left to right, so steps after a caption's <end> never
        influence its earlier outputs, and the loss leaves them out.
        """
        hidden = self.hidden_states(features, tokens)
        if label_smoothing is None:
            return self.logits(hidden)
        target = tokens[:, 1:]
        real = target != 0
        hidden, target = self.drop(hidden)[real], target[real]
        if isinstance(self.out, AdaptiveSoftmax):
            return self.out.loss(hidden, target, label_smoothing)
        return F.cross_entropy(self.out(hidden).float(), target, label_smoothing=label_smoothing)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-word logits [..., V] from top-layer states [..., H] (dropout in training mode); an adaptive
        softmax gives its log-probabilities, which decoding reads as logits."""
        return self.out(self.drop(hidden))

    @property
    def ban_width(self) -> int:
        """How many of the first word ids `token_log_probs` can ban: all of them, or an adaptive head's."""
        return self.out.shortlist if isinstance(self.out, AdaptiveSoftmax) else self.cfg.vocab_size

    def token_log_probs(self, hidden: torch.Tensor, target: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
        """log p(target) [N] at states [N, H] (dropout in training mode), renormalised without the `banned`
        words [N, ban_width]."""
        hidden = self.drop(hidden)
        if isinstance(self.out, AdaptiveSoftmax):
            return self.out.target_log_probs(hidden, target, self.out.head_log_probs(hidden, banned))
        log_probs = self.out(hidden).float().masked_fill(banned, float("-inf")).log_softmax(-1)
        return log_probs.gather(1, target[:, None])[:, 0]

    def hidden_states(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The top layer's state [B, T-1, H] at each teacher-forced step of `forward`, before the output
        layer: a caller that needs only some positions' logits (SCST: not the padding) projects just those."""
        image = self.project_image(features)
        words = self.drop(self.embed(tokens[:, :-1]))
        if self.cfg.conditioning == "first_input":
            hidden, _ = self.rnn(torch.cat([image.unsqueeze(1), words], dim=1))
            hidden = hidden[:, 1:]
        else:
            cond = image.unsqueeze(1).expand(-1, words.size(1), -1)
            hidden, _ = self.rnn(torch.cat([words, cond], dim=2))
        return hidden

    # -- step-by-step decoding --------------------------------------------------------------------
    def start(self, features: torch.Tensor) -> State:
        """The recurrent state before <start> is read, for a batch of image vectors [N, D]."""
        image = self.project_image(features)
        n, layers, hdim = features.size(0), self.cfg.num_layers, self.cfg.hidden_dim
        if self.cfg.conditioning == "first_input":
            _, hidden = self.rnn(image.unsqueeze(1))
            return self._pack(hidden, None)
        zeros = features.new_zeros(layers, n, hdim)
        state = self._pack((zeros, zeros.clone()) if self.cfg.cell == "lstm" else zeros, image)
        if self._fast():
            state["image_gates"] = image @ self.rnn.weight_ih_l0[:, self.cfg.embed_dim :].T
        return state

    # -- inference fast path ----------------------------------------------------------------------
    # At batch 1 a decoding step is memory-bound: the fused cell re-reads its whole input weight every
    # step. But a word's contribution to the gates, W_x embed(w) + biases, depends on the word alone, and
    # the image's, W_ih v, on the image alone: both are computed once (a vocabulary x gates table, and
    # per-image offsets), leaving h W_hh as the only matrix product per step. Same equations as the
    # fused module (tests compare them); used only without gradients, for single-layer decoders.
    def _fast(self) -> bool:
        return self.use_fast_path and not self.training and not torch.is_grad_enabled() and self.cfg.num_layers == 1

    def train(self, mode: bool = True) -> "CaptionDecoder":
        """Entering training mode also drops the word-gate table: a fused optimiser step (training's) changes
        the weights in place without bumping the version counters the table is keyed on, and weights only
        change in training, so the next decode rebuilds it from the weights as they are."""
        if mode:
            self._table_key = self._onnx_step_key = None
        return super().train(mode)

    def _fast_ready(self, state: State) -> bool:
        """Whether the fast path can take this state: it needs the image's gates unless the image came first."""
        return self._fast() and (self.cfg.conditioning == "first_input" or "image_gates" in state)

    @staticmethod
    def _weights_key(*tensors: torch.Tensor) -> tuple:
        """Changes whenever one of `tensors` is replaced or changed in place (outside fused optimiser steps)."""
        return tuple((t.data_ptr(), t._version) for t in tensors)

    def _word_gates(self) -> torch.Tensor:
        key = self._weights_key(self.rnn.weight_ih_l0, self.embed.weight, self.rnn.bias_ih_l0, self.rnn.bias_hh_l0)
        if self._table_key != key:  # every tensor the table is built from
            self._table, self._table_key = self._input_gates(self.embed.weight), key
        return self._table

    def run_steps_in_onnx(self, on: bool = True, int8: bool = False) -> None:
        """Decode with the step as one ONNX Runtime graph (`step_in_onnx`), its products in int8 if asked, built
        now rather than at the first decode, where this decoder has one."""
        self.step_in_onnx, self.onnx_step_int8 = on, int8
        if on and onnx_step_supported(self):
            self._onnx_step()

    def __getstate__(self) -> dict:
        """Copies and pickles leave the ONNX Runtime session behind (it cannot be copied); a copy that decodes
        with `step_in_onnx` builds its own from its weights."""
        state = self.__dict__.copy()
        state.pop("_onnx", None)
        state["_onnx_step_key"] = None
        return state

    def _onnx_step(self):
        """The step's ONNX Runtime graph (`captioner.onnx_step`), rebuilt when a weight it holds has changed."""
        key = (self.onnx_step_int8,) + self._weights_key(self.rnn.weight_hh_l0, self.rnn.bias_hh_l0, self.out.weight,
                                                         self.out.bias)
        if self._onnx_step_key != key:
            self._onnx, self._onnx_step_key = OnnxStep(self, int8=self.onnx_step_int8), key
        return self._onnx

    def _input_gates(self, embedded: torch.Tensor) -> torch.Tensor:
        """W_x embed(w) + biases [N, gates] for word embeddings [N, E]."""
        gates = embedded @ self.rnn.weight_ih_l0[:, : self.cfg.embed_dim].T + self.rnn.bias_ih_l0
        return gates if self.cfg.cell == "gru" else gates + self.rnn.bias_hh_l0  # GRU keeps b_hn inside its reset gate

    def _step_input_gates(self, tokens: torch.Tensor, state: State) -> torch.Tensor:
        """What the words read [N] and the image add to the gates [N, gates], biases included."""
        gx = self._word_gates().index_select(0, tokens) if self.word_table else self._input_gates(self.embed(tokens))
        return gx + state["image_gates"] if "image_gates" in state else gx

    def _fast_step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        gx = self._step_input_gates(tokens, state)
        h = state["h"][0]
        new = dict(state)
        if self.cfg.cell == "lstm":  # one product-and-add, one sigmoid over all four gates: fewer small ops
            gates = rows_product(h, self.rnn.weight_hh_l0, gx)
            hdim = self.cfg.hidden_dim
            g = gates[:, 2 * hdim : 3 * hdim].tanh()
            i, f, _, o = gates.sigmoid_().chunk(4, dim=1)
            c = torch.addcmul(f * state["c"][0], i, g)
            h = o * c.tanh()
            new["c"] = c.unsqueeze(0)
            new["h"] = h.unsqueeze(0)
            return h, new
        gh = rows_product(h, self.rnn.weight_hh_l0)
        if self.cfg.cell == "gru":
            gh = gh + self.rnn.bias_hh_l0
            rx, zx, nx = gx.chunk(3, dim=1)
            rh, zh, nh = gh.chunk(3, dim=1)
            r, z = torch.sigmoid(rx + rh), torch.sigmoid(zx + zh)
            h = (1 - z) * torch.tanh(nx + r * nh) + z * h
        else:
            h = torch.tanh(gx + gh)
        new["h"] = h.unsqueeze(0)
        return h, new

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Feed one token per row [N]; return next-word logits [N, V] and the new state."""
        hidden, state = self.advance(tokens, state)
        if self._fast() and isinstance(self.out, nn.Linear):
            return rows_product(hidden, self.out.weight, self.out.bias), state
        return self.out(hidden), state

    def step_log_probs(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """`step` as next-word log-probabilities [N, V] in fp32, a fresh tensor the caller may change in place.
        An adaptive softmax already gives log-probabilities: taking a log-softmax of them again would only
        cost a V-wide pass per step and change the rounding. With `step_in_onnx` the fast path's step runs as one
        ONNX Runtime graph (on the CPU, for decoders `captioner.onnx_step` supports)."""
        if self.step_in_onnx and self._fast_ready(state) and tokens.device.type == "cpu" and onnx_step_supported(self):
            return self._onnx_step_log_probs(tokens, state)
        logits, state = self.step(tokens, state)
        logits = logits.float()
        return (logits if isinstance(self.out, AdaptiveSoftmax) else F.log_softmax(logits, dim=-1)), state

    def _onnx_step_log_probs(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        log_probs, h, c = self._onnx_step()(self._step_input_gates(tokens, state), state["h"][0],
                                            state["c"][0] if "c" in state else None)
        new = dict(state, h=h.unsqueeze(0))
        if c is not None:
            new["c"] = c.unsqueeze(0)
        return log_probs, new

    def advance(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """`step` without the output layer: the top layer's new state [N, H] and the whole new state."""
        if self._fast_ready(state):
            return self._fast_step(tokens, state)
        x = self.embed(tokens).unsqueeze(1)
        if "image" in state:
            x = torch.cat([x, state["image"].unsqueeze(1)], dim=2)
        hidden = (state["h"], state["c"]) if "c" in state else state["h"]
        out, hidden = self.rnn(x, hidden)
        new = self._pack(hidden, state.get("image"))
        if "image_gates" in state:
            new["image_gates"] = state["image_gates"]
        return out[:, 0], new

    @staticmethod
    def reorder(state: State, index: torch.Tensor) -> State:
        """Select rows of a state (beam search keeps, duplicates and drops hypotheses)."""
        return {k: v.index_select(0 if k in ("image", "image_gates") else 1, index) for k, v in state.items()}

    @staticmethod
    def _pack(hidden, image: torch.Tensor | None) -> State:
        state = {"h": hidden[0], "c": hidden[1]} if isinstance(hidden, tuple) else {"h": hidden}
        if image is not None:
            state["image"] = image
        return state
