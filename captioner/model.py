"""`Captioner`: encoder + decoder + vocabulary + preprocessing, rebuilt from one checkpoint file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as ckpt_io
from .backends import ImageEncoder, image_encoder, int8_part
from .decoder import CaptionDecoder, DecoderConfig
from .decoding import Hypothesis, WordBans, search
from .encoders import create_encoder
from .explain import Explanation, check_explainable, explain_captions
from .grounding import Evidence, Grounding, ImageEvidence
from .options import DecodeOptions, OptionError
from .preprocess import DEFAULT_MAX_PIXELS, ImageInput, PreprocessConfig, preprocess
from .vocab import Vocabulary

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
    ids: list[int] = field(default_factory=list, repr=False)  # the word ids, for scoring it again
    explanation: Explanation | None = field(default=None, repr=False)  # with caption(..., explain=True)
    evidence: list[Evidence] = field(default_factory=list)  # what it names, and the photo's support for each
    image: ImageEvidence | None = field(default=None, repr=False)  # the photo's evidence (models with grounding)

    def to_dict(self) -> dict:
        d = {"text": self.text, "tokens": self.tokens, "log_prob": round(self.log_prob, 4)}
        if self.image is not None:
            d["evidence"] = [e.to_dict() for e in self.evidence]
        if self.explanation is not None:
            d["explanation"] = self.explanation.to_dict()
        return d


def encode_images(encoder: ImageEncoder, batch: torch.Tensor, hflip_average: bool) -> torch.Tensor:
    """The image vector v for a preprocessed batch [N,3,H,W]: the one definition training and serving share
    (`encoder` is the torch module or a backend that stands in for it)."""
    if isinstance(encoder, nn.Module):  # the torch module's convolutions are fastest on NHWC; ONNX Runtime takes NCHW
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
        grounding: Grounding | None = None,
        backend: tuple[str, ImageEncoder] | None = None,
    ):
        self.encoder = encoder.eval().to(memory_format=torch.channels_last)  # the weights, whatever runs them
        # What runs the encoder at inference (captioner.backends): the torch module unless given another.
        self.backend, self.image_encoder = backend or ("torch", self.encoder)
        self.decoder = decoder.eval()
        self.int8_part = int8_part(self.backend)  # what runs in int8 on this CPU: "encoder", "step" or None
        # `torch` stays the reference all through
        self.decoder.run_steps_in_onnx(self.backend != "torch", int8=self.int8_part == "step")
        self.vocab = vocab
        self.preprocess_cfg = preprocess_cfg
        self.encoder_name = encoder_name
        self.metrics = metrics or {}
        self.info = info or {}
        self.checkpoint_sha256 = checkpoint_sha256
        self.decoding = dict(decoding or {})  # e.g. {"length_penalty": 1.0, "no_repeat_ngram_size": 3}
        self.default_options = DecodeOptions.from_dict(self.decoding)
        self.grounding = grounding.eval() if grounding is not None else None

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, backend: str | None = None) -> "Captioner":
        """Rebuild the model in `path`; `backend` runs its encoder (None: $CAPTIONER_BACKEND or the default)."""
        ck = ckpt_io.load(path)
        try:
            encoder = create_encoder(ck.encoder["name"], pretrained=False, with_head=False)
            encoder.load_state_dict(ck.part("encoder"), strict=True)
            decoder = CaptionDecoder(DecoderConfig(**ck.decoder))
            decoder.load_state_dict(ck.part("decoder"), strict=True)
            vocab = Vocabulary(ck.vocab)
            pre = PreprocessConfig.from_dict(ck.preprocess)
            grounding = Grounding.from_metadata(ck.grounding, ck.part("grounding"), vocab) if ck.grounding else None
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ckpt_io.CheckpointError(f"{path}: incompatible checkpoint ({exc})") from exc
        if decoder.cfg.vocab_size != len(vocab):
            raise ckpt_io.CheckpointError(f"{path}: decoder has {decoder.cfg.vocab_size} words, vocabulary {len(vocab)}")
        if grounding is None and ck.decoding.get("grounded"):  # else every request would fail, not the load
            raise ckpt_io.CheckpointError(f"{path}: decodes grounded by default but has no grounding")
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        runs = image_encoder(backend, Path(path), encoder.eval(), pre)
        return cls(encoder, decoder, vocab, pre, ck.encoder["name"], ck.metrics, ck.info, digest, ck.decoding, grounding,
                   runs)

    def checkpoint(self, metrics: dict | None = None, info: dict | None = None) -> ckpt_io.Checkpoint:
        tensors = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        tensors.update({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()})
        if self.grounding is not None:
            tensors.update({f"grounding.{k}": v for k, v in self.grounding.state_dict().items()})
        return ckpt_io.Checkpoint(
            tensors=tensors,
            encoder={"name": self.encoder_name},
            decoder=self.decoder.cfg.to_dict(),
            vocab=self.vocab.to_list(),
            preprocess=self.preprocess_cfg.to_dict(),
            metrics=metrics if metrics is not None else self.metrics,
            info=info if info is not None else self.info,
            decoding=self.decoding,
            grounding=self.grounding.metadata() if self.grounding is not None else {},
        )

    # -- inference --------------------------------------------------------------------------------
    def preprocess(self, image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
        return preprocess(image, self.preprocess_cfg, max_pixels=max_pixels)

    @torch.inference_mode()
    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed images [N,3,H,W] -> image vectors [N,D]."""
        return encode_images(self.image_encoder, batch, self.preprocess_cfg.hflip_average)

    def decode(self, features: torch.Tensor, options: DecodeOptions | None = None, *,
               seeds: Sequence[int | None] | None = None, **overrides) -> list[list[Caption]]:
        """Image vectors [N,D] -> per image, its captions (n_best of them), best first.

        The one decoding path: training's validation, evaluation, the CLI and the service all come here.
        `options` default to the model's own (`default_options`, chosen when it was trained); keyword
        `overrides` (e.g. beam_size=5) are laid over them and validated; `seeds` gives each image its own
        sampling seed. Always decodes in eval mode (no dropout), whatever mode the decoder is in.
        """
        opts = (options or self.default_options).updated(overrides, len(self.vocab))
        if opts.grounded and self.grounding is None:
            raise OptionError("grounded=true needs a model with grounding evidence; this one has none")
        bans = WordBans.for_vocab(self.vocab, opts)
        grounding = self.grounding
        evidence, allowed, images = grounding.image_evidence(features) if grounding is not None else (None, None, None)
        training = self.decoder.training
        self.decoder.eval()
        try:
            hyps = search(self.decoder, features, self.vocab.start_id, bans, opts,
                          seeds=seeds if seeds is not None else opts.seed,
                          word_scores=grounding.word_scores(evidence, allowed) if opts.grounded else None)
        finally:
            self.decoder.train(training)
        if images is None:
            return [[self._caption(h) for h in per_image] for per_image in hyps]
        images = [grounding.judge_caption(im, h[0].log_prob, len(h[0].tokens)) for im, h in zip(images, hyps)]
        return [[self._caption(h, evidence[i], images[i]) for h in per_image] for i, per_image in enumerate(hyps)]

    def caption(self, images: ImageInput | Sequence[ImageInput], options: DecodeOptions | None = None, *,
                explain: bool = False, seeds: Sequence[int | None] | None = None, **overrides) -> list[list[Caption]]:
        """Caption PIL images, paths or encoded bytes; always returns one list of captions per image.

        A single image (not in a list) counts as a batch of one. `options`, keyword overrides and `seeds`
        are those of :meth:`decode`. With `explain`, each caption carries an :class:`Explanation` (word
        probabilities, alternatives, entropy, occlusion saliency, cell traces; at most
        `explain.MAX_N_BEST` captions per image).
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            return []
        opts = (options or self.default_options).updated(overrides, len(self.vocab))
        if explain:
            check_explainable(opts.n_best)  # before any work is done
        batch = torch.stack([self.preprocess(im) for im in images])
        captions = self.decode(self.encode(batch), opts, seeds=seeds)
        if explain:
            for image, caps in zip(batch, captions):
                self.explain(image, caps, opts)
        return captions

    def explain(self, image: torch.Tensor, captions: list[Caption], options: DecodeOptions | None = None) -> None:
        """Attach an Explanation to each of one preprocessed image's [3,H,W] captions."""
        ids = [c.ids + [self.vocab.end_id] * c.finished for c in captions]
        for caption, explanation in zip(captions, explain_captions(self, image, ids, options or self.default_options)):
            caption.explanation = explanation

    def _caption(self, h: Hypothesis, evidence: torch.Tensor | None = None, image: ImageEvidence | None = None) -> Caption:
        words = self.vocab.decode(h.tokens)
        named = self.grounding.caption_evidence(h.tokens, evidence) if image is not None else []
        return Caption(" ".join(words), words, h.log_prob, h.finished, ids=list(h.tokens), evidence=named, image=image)

    def describe(self) -> dict:
        """A JSON-able summary: what the service's /v1/model returns."""
        cfg = self.decoder.cfg
        return {
            "encoder": self.encoder_name,
            "backend": self.backend,
            "int8": self.int8_part,
            "decoder": {"cell": cfg.cell, "hidden_dim": cfg.hidden_dim, "embed_dim": cfg.embed_dim,
                        "num_layers": cfg.num_layers, "conditioning": cfg.conditioning,
                        "softmax_head": cfg.softmax_head},
            "vocab_size": len(self.vocab),
            "preprocess": self.preprocess_cfg.to_dict(),
            "checkpoint_sha256": self.checkpoint_sha256,
            "decoding_defaults": self.decoding,
            "metrics": self.metrics,
            "grounding": self.grounding.describe() if self.grounding is not None else None,
        }


def load(path: str | Path | None = None, backend: str | None = None) -> Captioner:
    """Load a checkpoint (default: $CAPTIONER_MODEL or the shipped Flickr8k model) onto the CPU, its encoder run
    by `backend` ("torch", "onnx", "onnx-int8"; default: $CAPTIONER_BACKEND, else `backends.default_backend()`)."""
    return Captioner.from_checkpoint(path or default_model_path(), backend)
