"""Helpers shared by the benchmarks: timing, and a model of realistic size when no trained one is around."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.encoders import create_encoder, encoder_spec
from captioner.model import Captioner, default_model_path
from captioner.vocab import SPECIALS, Vocabulary

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = [ROOT / "tests" / "fixtures" / "chelsea.jpg", ROOT / "tests" / "fixtures" / "coffee.jpg"]


def timed(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load_or_build(model: str | None, vocab_size: int = 3000, hidden: int = 512) -> tuple[Captioner, str]:
    """The given (or shipped) checkpoint; else random weights of realistic size (speed only)."""
    path = Path(model) if model else default_model_path()
    if path.is_file():
        from captioner import load

        return load(path), str(path)
    torch.manual_seed(0)
    vocab = Vocabulary([*SPECIALS, *(f"w{i}" for i in range(vocab_size - len(SPECIALS)))])
    dec = CaptionDecoder(DecoderConfig(vocab_size=vocab_size, feature_dim=1280, hidden_dim=hidden, embed_dim=512))
    return Captioner(create_encoder("efficientnet_lite0"), dec, vocab, encoder_spec("efficientnet_lite0").preprocess(),
                     "efficientnet_lite0"), \
        f"random weights (vocab {vocab_size}, hidden {hidden})"
