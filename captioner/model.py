"""`Captioner`: encoder + decoder + vocabulary + preprocessing, rebuilt from one checkpoint file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt_io
from .decoder import CaptionDecoder, DecoderConfig
from .decoding import MIN_LENGTH, Hypothesis, beam_search, sequential_decode
from .encoders import create_encoder
from .preprocess import DEFAULT_MAX_PIXELS, ImageInput, PreprocessConfig, preprocess
from .vocab import Vocabulary

METHODS = ("beam", "greedy", "sample")
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "flickr8k.safetensors"


def default_model_path() -> Path:
    """$CAPTIONER_MODEL if set, else the model shipped in the repository."""
    return Path(os.environ.get("CAPTIONER_MODEL") or DEFAULT_MODEL)


@dataclass
class Caption:
    text: str
    tokens: list[str]
    log_prob: float
    finished: bool = True  # False if max_length cut it before <end>

    def to_dict(self) -> dict:
        return {"text": self.text, "tokens": self.tokens, "log_prob": round(self.log_prob, 4)}


def encode_images(encoder: nn.Module, batch: torch.Tensor, hflip_average: bool) -> torch.Tensor:
    """The image vector v for a preprocessed batch [N,3,H,W]: the one definition training and serving share."""
    batch = batch.contiguous(memory_format=torch.channels_last)
    v = encoder(batch)
    if hflip_average:
        v = 0.5 * (v + encoder(batch.flip(3)))
    return v


class Captioner:
    def __init__(
        self,
        encoder: nn.Module,
        decoder: CaptionDecoder,
        vocab: Vocabulary,
        preprocess_cfg: PreprocessConfig,
        encoder_name: str,
        metrics: dict | None = None,
        info: dict | None = None,
        checkpoint_sha256: str | None = None,
        decoding: dict | None = None,
    ):
        self.encoder = encoder.eval().to(memory_format=torch.channels_last)
        self.decoder = decoder.eval()
        self.vocab = vocab
        self.preprocess_cfg = preprocess_cfg
        self.encoder_name = encoder_name
        self.metrics = metrics or {}
        self.info = info or {}
        self.checkpoint_sha256 = checkpoint_sha256
        self.decoding = dict(decoding or {})  # e.g. {"length_penalty": 1.0, "no_repeat_ngram_size": 3}

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "Captioner":
        ck = ckpt_io.load(path)
        try:
            encoder = create_encoder(ck.encoder["name"], pretrained=False, with_head=False)
            encoder.load_state_dict(ck.part("encoder"), strict=True)
            decoder = CaptionDecoder(DecoderConfig(**ck.decoder))
            decoder.load_state_dict(ck.part("decoder"), strict=True)
            vocab = Vocabulary(ck.vocab)
            pre = PreprocessConfig.from_dict(ck.preprocess)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ckpt_io.CheckpointError(f"{path}: incompatible checkpoint ({exc})") from exc
        if decoder.cfg.vocab_size != len(vocab):
            raise ckpt_io.CheckpointError(f"{path}: decoder has {decoder.cfg.vocab_size} words, vocabulary {len(vocab)}")
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return cls(encoder, decoder, vocab, pre, ck.encoder["name"], ck.metrics, ck.info, digest, ck.decoding)

    def checkpoint(self, metrics: dict | None = None, info: dict | None = None) -> ckpt_io.Checkpoint:
        tensors = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        tensors.update({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()})
        return ckpt_io.Checkpoint(
            tensors=tensors,
            encoder={"name": self.encoder_name},
            decoder=self.decoder.cfg.to_dict(),
            vocab=self.vocab.to_list(),
            preprocess=self.preprocess_cfg.to_dict(),
            metrics=metrics if metrics is not None else self.metrics,
            info=info if info is not None else self.info,
            decoding=self.decoding,
        )

    # -- inference --------------------------------------------------------------------------------
    def preprocess(self, image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
        return preprocess(image, self.preprocess_cfg, max_pixels=max_pixels)

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed images [N,3,H,W] -> image vectors [N,D]."""
        return encode_images(self.encoder, batch, self.preprocess_cfg.hflip_average)

    def decode(
        self,
        features: torch.Tensor,
        method: str = "beam",
        beam_size: int = 3,
        n_best: int = 1,
        max_length: int = 20,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | Sequence[int | None] | None = None,
        min_length: int = MIN_LENGTH,
        length_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
        no_end_after: Sequence[str] | None = None,
    ) -> list[list[Caption]]:
        """Image vectors [N,D] -> per image, a list of captions (n_best of them for beam search).

        `length_penalty`, `no_repeat_ngram_size` and `no_end_after` (words a caption may not end on) default
        to the checkpoint's `decoding` settings (chosen when it was trained), else off.
        """
        if min_length < 1:
            raise ValueError(f"min_length must be at least 1 (an empty caption answers nothing), got {min_length}")
        if length_penalty is None:
            length_penalty = float(self.decoding.get("length_penalty", 0.0))
        if no_repeat_ngram_size is None:
            no_repeat_ngram_size = int(self.decoding.get("no_repeat_ngram_size", 0))
        if no_end_after is None:
            no_end_after = self.decoding.get("no_end_after", ())
        ids = dict(start_id=self.vocab.start_id, end_id=self.vocab.end_id)
        v = self.vocab  # never emit <pad>, <start> or <unk>: a caption with "<unk>" in it helps no one
        common = dict(max_length=max_length, min_length=min_length, no_repeat_ngram_size=no_repeat_ngram_size,
                      suppress_ids=(v.pad_id, v.start_id, v.unk_id),
                      no_end_after=[v.stoi[w] for w in no_end_after if w in v.stoi])
        if method == "beam":
            hyps = beam_search(self.decoder, features, **ids, **common, beam_size=beam_size, n_best=n_best,
                               length_penalty=length_penalty)
        elif method in ("greedy", "sample"):
            if n_best != 1:
                raise ValueError(f"n_best > 1 needs method='beam' (got method={method!r})")
            sample = method == "sample"
            one = sequential_decode(self.decoder, features, **ids, **common, sample=sample, temperature=temperature,
                                    top_k=top_k, top_p=top_p, seeds=seed if sample else None)
            hyps = [[h] for h in one]
        else:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        return [[self._caption(h) for h in per_image] for per_image in hyps]

    def caption(self, images: ImageInput | Sequence[ImageInput], **options) -> list[list[Caption]]:
        """Caption PIL images, paths or encoded bytes; always returns one list of captions per image.

        A single image (not in a list) counts as a batch of one. Options are those of :meth:`decode`.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            return []
        batch = torch.stack([self.preprocess(im) for im in images])
        return self.decode(self.encode(batch), **options)

    def _caption(self, h: Hypothesis) -> Caption:
        words = self.vocab.decode(h.tokens)
        return Caption(" ".join(words), words, h.log_prob, h.finished)

    def describe(self) -> dict:
        """A JSON-able summary: what the service's /v1/model returns."""
        cfg = self.decoder.cfg
        return {
            "encoder": self.encoder_name,
            "decoder": {"cell": cfg.cell, "hidden_dim": cfg.hidden_dim, "embed_dim": cfg.embed_dim,
                        "num_layers": cfg.num_layers, "conditioning": cfg.conditioning},
            "vocab_size": len(self.vocab),
            "preprocess": self.preprocess_cfg.to_dict(),
            "checkpoint_sha256": self.checkpoint_sha256,
            "decoding_defaults": self.decoding,
            "metrics": self.metrics,
        }


def load(path: str | Path | None = None) -> Captioner:
    """Load a checkpoint (default: $CAPTIONER_MODEL or the shipped Flickr8k model) onto the CPU."""
    return Captioner.from_checkpoint(path or default_model_path())
