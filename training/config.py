"""Training configuration: one plain dataclass, loaded from TOML, every field overridable on the command line."""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from captioner import fields
from captioner.decoder import DecoderConfig
from captioner.options import DecodeOptions


@dataclass
class TrainConfig:
    # data
    format: str = "flickr8k"  # flickr8k | karpathy | coco
    data_dir: str = "../shared/data/flickr8k"
    karpathy_json: str = ""  # for format=karpathy, relative to data_dir or absolute
    coco_year: str = "2014"
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    val_split: str = "val"
    skip_missing: bool = False
    min_count: int = 5  # vocabulary threshold, counted on the training captions only
    max_caption_words: int = 20
    # encoder and preprocessing (travel inside the checkpoint)
    encoder: str = "efficientnet_lite0"
    encoder_weights: str = ""  # empty: the encoder's default local weights
    image_size: int = 0  # 0: the encoder's native input size (its registry entry)
    resize: str = ""  # squash | center_crop; empty: the encoder's own
    hflip_average: bool = False
    # the decoder's hyperparameters (a [decoder] table; --decoder.hidden_dim 1024 on the command line)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # optimisation (teacher forcing, cross-entropy)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio
    grad_clip: float = 2.0  # global norm
    label_smoothing: float = 0.1
    scheduled_sampling: float = 0.0  # max probability of feeding the model's own word, ramped over the epochs
    max_batches_per_epoch: int = 0  # 0 = all; else stop each epoch there (smoke runs; make bench-scale times a part)
    patience: int = 4  # early stop after this many epochs without a better val selection score
    # self-critical sequence training (Rennie et al. 2017) after cross-entropy, on val CIDEr-D too
    scst_epochs: int = 0
    scst_lr: float = 5e-5
    scst_samples: int = 5
    scst_batch_images: int = 32
    scst_baseline: str = "greedy"  # greedy: the greedy caption's reward (Rennie et al.); mean: the other samples' mean (Luo 2020)
    scst_max_words: int = 0  # sampled caption length during SCST; 0 = max_caption_words
    scst_xe_weight: float = 0.0  # + this x cross-entropy on one human caption per image: keeps the language model honest
    scst_bleu_weight: float = 0.0  # reward = CIDEr-D + this x sentence BLEU-4 (both against the image's references)
    scst_disfluency_penalty: float = 0.0  # reward - this for a caption training.fluency.is_disfluent calls disfluent
    scst_hallucination_penalty: float = 0.0  # reward - this for a caption naming a concept none of its references names
    scst_discriminability_weight: float = 0.0  # reward + this x log p(own photo | caption) among the batch's photos (training.retrieval)
    scst_judge_epochs: int = 30  # epochs fitting that term's retrieval model over the training photos
    select_max_disfluent_pct: float = 0.0  # epochs with more % disfluent val captions rank below all within it; 0 = off
    # decoding: the model is selected (val `selection_score` each epoch, real decoding) with these and ships with them
    beam_size: int = DecodeOptions.beam_size  # 1 = greedy
    length_penalty: float = DecodeOptions.length_penalty  # beam search only
    no_repeat_ngram_size: int = DecodeOptions.no_repeat_ngram_size
    block_bad_endings: bool = False  # no <end> after words that (almost) never end a training caption
    # grounding (captioner.grounding, training.grounding): concept evidence fitted once the features are cached
    grounded: bool = True  # decode grounded: validation selects, and the model ships, with it
    grounding_threshold: float = 0.1  # never name a concept whose calibrated evidence is below this (chosen on val)
    grounding_weight: float = 1.0  # a concept word scores p(word) x evidence ** this during grounded decoding
    grounding_l2: float = 1e-4  # L2 weight of the learned concept detectors (logistic regression on v)
    # learned concepts that may be named only where the ImageNet classes the head sees had them in training
    # (a detector learned where most photos show the concept says so off-domain too: docs/grounding.md)
    grounding_context_concepts: list[str] = field(default_factory=lambda: ["person"])
    grounding_context_prior: float = 20.0  # phantom photos showing nothing, per ImageNet class, in those rates
    low_confidence_prob: float = 0.3  # flag a photo whose top ImageNet class, this sure, is one the model never learned
    low_confidence_caption_share: float = 0.01  # ... or whose caption scores lower than all but this share of val captions
    val_max_images: int = 0  # 0 = all
    final_beam_sizes: list[int] = field(default_factory=lambda: [1, 3, 5])  # also scored at the end
    # run
    out_dir: str = "runs/flickr8k"
    cache_dir: str = "cache/features"
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA, and on CPUs with native bf16 (avx512_bf16/AMX); fp32 elsewhere
    init_from: str = ""  # start from this checkpoint's decoder (same vocabulary and decoder config) instead of random
    num_workers: int = 2  # image-decoding DataLoader workers at most: on the CPU only cores the encoder leaves free
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    export_dtype: str = "float16"  # dtype of the shipped checkpoint's weights
    blind: bool = False  # zero the image vector: the no-image baseline
    progress: bool = True

    @property
    def export_torch_dtype(self) -> torch.dtype | None:
        """The dtype a written checkpoint stores its floating weights in (None: as they are)."""
        return getattr(torch, self.export_dtype) if self.export_dtype else None

    def __post_init__(self):  # fail before the features are built, not an hour into training
        if self.decoder.vocab_size or self.decoder.feature_dim:
            raise ValueError("decoder.vocab_size and decoder.feature_dim come from the data and the encoder; leave them unset")
        if self.scst_baseline not in ("greedy", "mean"):
            raise ValueError(f"scst_baseline must be 'greedy' or 'mean', got {self.scst_baseline!r}")
        if self.scst_baseline == "mean" and self.scst_epochs > 0 and self.scst_samples < 2:
            raise ValueError("scst_baseline = 'mean' needs scst_samples >= 2")
        if self.scst_judge_epochs < 1:
            raise ValueError(f"scst_judge_epochs must be at least 1, got {self.scst_judge_epochs}")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """TOML file + overrides -> TrainConfig. Tables are flattened, except those naming a nested config
    ([decoder]); overrides may set a nested field by its dotted name (`decoder.hidden_dim`)."""
    values: dict = {}
    if path:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
        for key, value in raw.items():
            values.update(value if isinstance(value, dict) and key not in fields.nested(TrainConfig) else {key: value})
    values.update(overrides or {})
    return fields.build(TrainConfig, values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--config FILE plus one --field VALUE flag per TrainConfig field (--decoder.field for the decoder's)."""
    parser.add_argument("--config", default=None, help="TOML file under configs/")
    fields.add_field_arguments(parser, TrainConfig)


def from_args(args: argparse.Namespace) -> TrainConfig:
    return load_config(args.config, fields.given_fields(args, TrainConfig))
