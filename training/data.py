"""Training data: records, the vocabulary, every image's vector from the feature cache, and the caption
batches. `prepare_data` is the first step of a run."""

from __future__ import annotations

import functools
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from captioner.encoders import encoder_spec
from captioner.preprocess import PreprocessConfig
from captioner.vocab import Vocabulary, tokenize

from .config import TrainConfig
from .datasets import DataError, Record, check_images, read_records
from .features import build_or_load, file_digest, is_cached
from .phases import PhaseClock
from .runtime import Distributed, SingleProcess


def preprocess_config(cfg: TrainConfig) -> PreprocessConfig:
    """The encoder's own preprocessing (its registry entry), with the config's size and resize if set."""
    return encoder_spec(cfg.encoder).preprocess(cfg.image_size or None, cfg.resize or None, cfg.hflip_average)


def encoder_identity(cfg: TrainConfig) -> str:
    """Name + weights digest: the part of the feature-cache key that says which CNN produced v."""
    return f"{cfg.encoder}:{file_digest(encoder_spec(cfg.encoder).weights_file(cfg.encoder_weights or None))[:16]}"


def missing_data_message(cfg: TrainConfig, exc: Exception) -> str:
    how = {
        "flickr8k": "Flickr8k: request it from the University of Illinois (Hodosh et al. 2013) and lay out "
        "DATA_DIR/Flickr8k.token.txt, DATA_DIR/Flickr_8k.{train,dev,test}Images.txt and DATA_DIR/images/*.jpg",
        "coco": "COCO: download from cocodataset.org and lay out DATA_DIR/annotations/captions_{train,val}2014.json "
        "and DATA_DIR/{train,val}2014/*.jpg",
        "karpathy": "Karpathy splits: put dataset_coco.json (or _flickr8k/_flickr30k) under DATA_DIR and the images "
        "where its filepath/filename fields point, relative to DATA_DIR",
    }[cfg.format]
    return f"{exc}\nThe data is not where the config says ({cfg.data_dir}). {how}. Then: make train DATA_DIR=..."


# -- batches --------------------------------------------------------------------------------------
def pad_rows(rows: list[list[int]], width: int = 0) -> torch.Tensor:
    """Id lists as one tensor [N, max(width, longest)], padded with 0 (<pad>). Filled through numpy: a row
    costs a slice assignment, not a tensor of its own (COCO has 600k captions)."""
    ids = np.zeros((len(rows), max(width, *map(len, rows), 1)), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return torch.from_numpy(ids)


def encode_captions(records: list[Record], vocab: Vocabulary, max_words: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (image, caption) pair: image index [M], padded ids [M, max_words+2], lengths [M]."""
    image_idx, seqs = [], []
    for i, r in enumerate(records):
        for c in r.captions:
            image_idx.append(i)
            seqs.append(vocab.encode(c, max_words))
    return torch.tensor(image_idx), pad_rows(seqs, max_words + 2), torch.tensor([len(s) for s in seqs])


def rarely_final_words(captions: list[list[str]], min_count: int = 50, max_final_rate: float = 0.001) -> list[str]:
    """Words seen at least `min_count` times in the training captions but ending fewer than `max_final_rate`
    of them ("a", "in", "the", "young", ...): a caption that stops on one is unfinished."""
    seen, final = Counter(), Counter()
    for words in captions:
        if words:
            seen.update(words)
            final[words[-1]] += 1
    return sorted(w for w, n in seen.items() if n >= min_count and final[w] < max_final_rate * n)


def epoch_batches(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Shuffled batches of similar-length captions (less padding), fixed by (seed, epoch) alone so a
    resumed run sees exactly the order an uninterrupted one would."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(lengths), generator=g)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[lengths[part].argsort(stable=True)]
        batches.extend(part.split(batch_size))
    perm = torch.randperm(len(batches), generator=g)
    return [batches[i] for i in perm]



@dataclass
class TrainingData:
    """Everything the decoder trains and is selected on: records, vocabulary, cached image vectors."""

    train: list[Record]
    val: list[Record]
    vocab: Vocabulary
    preprocess: PreprocessConfig
    train_feats: torch.Tensor  # [train images, D]
    val_feats: torch.Tensor  # [val images, D]
    img_idx: torch.Tensor  # [captions]: the image of each training caption
    tokens: torch.Tensor  # [captions, max_words + 2] padded ids
    lengths: torch.Tensor  # [captions]
    no_end_after: list[str]  # words a caption may not end on (empty unless block_bad_endings)
    feature_seconds: float

    @property
    def val_refs(self) -> list[list[str]]:
        return [list(r.captions) for r in self.val]

    @functools.cached_property
    def _caption_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Caption rows sorted by image, each image's first position in that order, its caption count."""
        counts = torch.bincount(self.img_idx, minlength=len(self.train))
        return torch.argsort(self.img_idx, stable=True), torch.cumsum(counts, 0) - counts, counts

    def one_caption_each(self, images: torch.Tensor) -> torch.Tensor:
        """One human caption of each training image (padded ids from <start>, trimmed to the longest), drawn
        with the global RNG so an exact resume draws the same."""
        order, first, counts = self._caption_rows
        rows = order[first[images] + (torch.rand(len(images)) * counts[images]).long()]
        return self.tokens[rows, : int(self.lengths[rows].max())]


def prepare_data(cfg: TrainConfig, encoder: torch.nn.Module, dist: Distributed | SingleProcess,
                 clock: PhaseClock | None = None) -> TrainingData:
    """Read the records, build the vocabulary from the training captions, and load (or extract) every
    image's vector. Raises DataError with instructions when the data is not where the config says."""
    pre, encoder_id, clock = preprocess_config(cfg), encoder_identity(cfg), clock or PhaseClock()
    try:
        with clock("read records"):
            records = read_records(cfg.format, cfg.data_dir, cfg.train_splits + [cfg.val_split], cfg.karpathy_json,
                                   cfg.coco_year)
            if not is_cached(cfg.cache_dir, encoder_id, pre, [r.image_path for r in records], Path(cfg.data_dir)):
                records = check_images(records, cfg.skip_missing)  # with every vector cached, images are not read
    except (DataError, FileNotFoundError) as exc:
        raise DataError(missing_data_message(cfg, exc)) from None
    train = [r for r in records if r.split == "train"]
    val = [r for r in records if r.split != "train"]
    if not train or not val:
        raise DataError(f"need both training and validation images; got {len(train)} and {len(val)}")
    with clock("vocabulary"):
        vocab = Vocabulary.build((c for r in train for c in r.captions), cfg.min_count)

    t0 = time.perf_counter()
    with clock("feature cache"):
        if dist.enabled and not dist.main:
            dist.barrier()  # rank 0 extracts; the others then read its cache
        cache = build_or_load(cfg.cache_dir, encoder, encoder_id, pre, [r.image_path for r in train + val],
                              Path(cfg.data_dir), num_workers=cfg.num_workers, device=dist.device,
                              progress=cfg.progress and dist.main)
        if dist.enabled and dist.main:
            dist.barrier()
        feature_seconds = time.perf_counter() - t0
        if cfg.val_max_images:  # after the cache, so a quick run reuses the full run's features
            val = val[: cfg.val_max_images]
        train_feats = cache.tensor([r.image_path for r in train]).to(dist.device)
        val_feats = cache.tensor([r.image_path for r in val]).to(dist.device)
    if cfg.blind:
        train_feats.zero_()
        val_feats.zero_()
    with clock("captions to ids"):
        img_idx, tokens, lengths = encode_captions(train, vocab, cfg.max_caption_words)
        no_end_after = rarely_final_words([tokenize(c) for r in train for c in r.captions]) if cfg.block_bad_endings else []
    return TrainingData(train, val, vocab, pre, train_feats, val_feats, img_idx, tokens, lengths, no_end_after,
                        feature_seconds)
