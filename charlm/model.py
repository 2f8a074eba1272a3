"""A character-level language model: one character in, a softmax over the next one out (the theory's first
RNN system, before captioning). It uses the captioner's recurrent core (`captioner.rnn.make_rnn`: the fused
tanh RNN, LSTM or GRU whose single step the tests check against the textbook equations, LSTM forget bias
1), and its checkpoints follow the caption models' rules: one safetensors file, vocabulary and config
inside, read by `captioner.checkpoint.read_safetensors`, so loading never runs code.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from captioner.checkpoint import CheckpointError, atomic_write, read_safetensors
from captioner.decoding import filter_top_k_top_p
from captioner.rnn import CELLS, make_rnn, traced_cell

FORMAT = "captioner-charlm"
FORMAT_VERSION = 1
UNKNOWN = "\ufffd"  # stands for every character the training text did not have


class CharVocab:
    """The characters of the training text, most frequent first; anything else maps to UNKNOWN."""

    def __init__(self, chars: Sequence[str]):
        if UNKNOWN not in chars:
            chars = [UNKNOWN, *chars]
        self.itos = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.unknown_id = self.stoi[UNKNOWN]

    @classmethod
    def build(cls, text: str) -> "CharVocab":
        return cls([c for c, _ in Counter(text).most_common()])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.stoi.get(c, self.unknown_id) for c in text], dtype=torch.long)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[i] for i in ids)


@dataclass
class CharLMConfig:
    """The model's shape, with the defaults training uses (its config holds one); `vocab_size` is the
    training text's, set when training starts."""

    vocab_size: int = 0
    cell: str = "lstm"
    hidden_dim: int = 512
    num_layers: int = 1
    dropout: float = 0.0
    embed_dim: int = 64  # a learned embedding of this size; 0: one-hot input (as in the seed)

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        if not 1 <= self.num_layers <= 3:
            raise ValueError(f"num_layers must be 1, 2 or 3, got {self.num_layers}")


class CharLM(nn.Module):
    def __init__(self, cfg: CharLMConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError(f"a character model needs its vocab_size, got {cfg.vocab_size}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim) if cfg.embed_dim else None
        input_dim = cfg.embed_dim or cfg.vocab_size
        self.rnn = make_rnn(cfg.cell, input_dim, cfg.hidden_dim, cfg.num_layers, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden_dim, cfg.vocab_size)

    def inputs(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids) if self.embed is not None else F.one_hot(ids, self.cfg.vocab_size).float()

    def forward(self, ids: torch.Tensor, state=None):
        """ids [B, T] -> next-character logits [B, T, V] and the state after the last character."""
        x = self.inputs(ids)
        if self.embed is not None:  # dropout on learned embeddings, never on one-hot characters
            x = self.drop(x)
        hidden, state = self.rnn(x, state)
        return self.out(self.drop(hidden)), state

    def cell_activations(self, ids: torch.Tensor) -> torch.Tensor:
        """The top layer's cell per character of `ids` [T]: tanh(c_t) for an LSTM (the seed's figures), h_t
        for a GRU or tanh RNN; [T, H]. Runs one character at a time (torch's fused LSTM exposes only h)."""
        state, out = None, []
        with torch.no_grad():
            for t in range(ids.numel()):
                _, state = self.rnn(self.inputs(ids[t : t + 1].view(1, 1)), state)
                h, c = state if isinstance(state, tuple) else (state, None)
                out.append(traced_cell(h, c)[0])
        return torch.stack(out)

    @torch.no_grad()
    def sample(self, vocab: CharVocab, length: int, prime: str = "\n", temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None) -> str:
        """Prime the state with `prime`, then draw `length` characters one at a time from
        softmax(logits / temperature), optionally within the top-k / top-p set."""
        if not temperature > 0:
            raise ValueError("temperature must be > 0")
        gen = torch.Generator()
        gen.manual_seed(seed) if seed is not None else gen.seed()
        was_training = self.training
        self.eval()
        logits, state = self(vocab.encode(prime or "\n").unsqueeze(0))
        out = []
        for _ in range(length):
            scores = filter_top_k_top_p(logits[:, -1].float() / temperature, top_k, top_p)
            nxt = torch.multinomial(scores.softmax(-1), 1, generator=gen)
            out.append(int(nxt))
            logits, state = self(nxt, state)
        self.train(was_training)
        return vocab.decode(out)


def save(path: str | Path, model: CharLM, vocab: CharVocab, metrics: dict | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": json.dumps(asdict(model.cfg)),
                "vocab": json.dumps(vocab.itos), "metrics": json.dumps(metrics or {})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load(path: str | Path) -> tuple[CharLM, CharVocab, dict]:
    """(model in eval mode, vocabulary, metrics); CheckpointError naming the file for anything unusable."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT or meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: not a character model checkpoint (format={meta.get('format')!r})")
    try:
        model = CharLM(CharLMConfig(**json.loads(meta["config"])))
        model.load_state_dict(tensors)
        vocab = CharVocab(json.loads(meta["vocab"]))
        metrics = json.loads(meta.get("metrics", "{}"))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: incompatible character model ({exc})") from exc
    if len(vocab) != model.cfg.vocab_size:
        raise CheckpointError(f"{path}: model has {model.cfg.vocab_size} characters, vocabulary {len(vocab)}")
    return model.eval(), vocab, metrics
