"""Held-out bits per character, two ways.

`bits_per_char` scores the text with the model as trained. `adaptive_bits_per_char` scores it the way an
adaptive compressor codes it (xz's dictionary, lstm-compress's online LSTM): chunk by chunk, each chunk
scored by the model as it stands and then learnt from, so names and idioms met earlier in the text shape the
predictions later in it. Its figure is a code length a decoder can reproduce: every update depends only on
characters already coded.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from .model import CharLM

LN2 = math.log(2)


class TextError(ValueError):
    """The text cannot be trained on or scored (empty, binary, too short)."""


def streams(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """Cut [N] into `batch` contiguous streams [B, N // B]: row b continues where it left off, chunk after chunk."""
    n = ids.numel() // batch
    return ids[: n * batch].view(batch, n)


def detach(state):
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _chunks(ids: torch.Tensor, batch: int, chunk: int):
    """(inputs, targets) chunk after chunk over `batch` streams; every character but each stream's first is a
    target once. A text too short to score is refused here, before any chunk is read."""
    if ids.numel() < 2:
        raise TextError("nothing to score: fewer than 2 held-out characters")
    data = streams(ids, min(batch, ids.numel() // 2))  # a short text: fewer streams, each at least 2 long

    def pairs():
        for start in range(0, data.size(1) - 1, chunk):
            y = data[:, start + 1 : start + chunk + 1]
            yield data[:, start : start + y.size(1)], y

    return pairs()


def _nats(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="sum")


@torch.no_grad()
def bits_per_char(model: CharLM, ids: torch.Tensor, batch: int = 32, chunk: int = 256, carry: bool = True) -> float:
    """Held-out bpc: the text in `batch` streams, state carried over chunks (or reset at each, with
    `carry=False`), every character predicted once (except each stream's first)."""
    chunks = _chunks(ids, batch, chunk)
    was = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    for x, y in chunks:
        logits, state = model(x, state if carry else None)
        total += _nats(logits, y).item()
        count += y.numel()
    model.train(was)
    return total / max(count, 1) / LN2


def adaptive_bits_per_char(model: CharLM, ids: torch.Tensor, lr: float = 5e-4, batch: int = 8, chunk: int = 16,
                           grad_clip: float = 1.0) -> float:
    """Held-out bpc of an adaptive coder: each chunk of the `batch` streams is scored, then one Adam step is
    taken on it (on a copy; `model` is left as it was). Dropout is off, as in scoring. Few, short chunks mean
    many small lessons, each learnt before the text it helps with."""
    total, count = 0.0, 0
    for nats, n in adaptive_chunk_costs(model, ids, lr, batch, chunk, grad_clip):
        total, count = total + nats, count + n
    return total / max(count, 1) / LN2


def adaptive_chunk_costs(model: CharLM, ids: torch.Tensor, lr: float, batch: int, chunk: int, grad_clip: float = 1.0):
    """(cost in nats, characters) of each chunk in turn, the chunk scored before it is learnt from."""
    learner = copy.deepcopy(model).float().eval()
    opt = torch.optim.Adam(learner.parameters(), lr=lr)
    state = None
    for x, y in _chunks(ids, batch, chunk):
        logits, state = learner(x, state)
        nats = _nats(logits, y)
        yield nats.item(), y.numel()
        opt.zero_grad(set_to_none=True)
        (nats / y.numel()).backward()
        torch.nn.utils.clip_grad_norm_(learner.parameters(), grad_clip)
        opt.step()
        state = detach(state)
