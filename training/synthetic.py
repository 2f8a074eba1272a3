"""A COCO-format data set of any size, simulated from a real one, so training can be measured at COCO's scale
where COCO cannot be downloaded (`make bench-scale`).

    python -m training.synthetic --photos 123287 --out runs/scale/coco [--config configs/flickr8k.toml]

Each simulated photo stands for one of the source's photos: its vector is that photo's cached vector plus
Gaussian noise, and its 5 captions are that photo's captions recombined (the start of one joined to the end
of another at a word they share), so a caption still fits its photo while the n-grams multiply. Distinct
words grow as Heaps' law fitted on the source predicts: a tail word (seen at most twice in the source) is
replaced by a new word while the count is below that curve, otherwise by an earlier tail word drawn in
proportion to its uses (a Yule-Simon process: new words get a Zipf tail, so the `min_count` vocabulary grows
too). Written: annotations/captions_{train,val}2014.json as COCO lays them out, and every photo's vector in
the feature cache under the key training computes for this folder, so
`training.train --format coco --data_dir OUT` reads it as COCO and needs no image file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.encoders import create_encoder
from captioner.vocab import tokenize

from . import config as config_mod
from .config import TrainConfig
from .data import encoder_identity, preprocess_config, prepare_data
from .features import store
from .runtime import SingleProcess

log = logging.getLogger("training.synthetic")

CAPTIONS_PER_PHOTO = 5
TAIL_MAX_COUNT = 2  # a source word seen at most this often is a tail word, whose slot may take a new word
NOISE = 0.3  # each simulated photo's vector: its source photo's plus this x the per-dimension std, as noise
COCO_PHOTOS = 123_287  # COCO 2014 train + val
COCO_VAL_PHOTOS = 5_000  # Karpathy's val split


def heaps_law(captions: Sequence[Sequence[str]]) -> tuple[float, float]:
    """(K, beta) of distinct words = K x tokens ** beta, fitted by least squares in log-log space on the
    second half of the captions' growth curve (the start is not yet in the power-law regime)."""
    seen: set[str] = set()
    tokens, points = 0, []
    for i, words in enumerate(captions):
        seen.update(words)
        tokens += len(words)
        if i >= len(captions) // 2 and tokens:
            points.append((math.log(tokens), math.log(len(seen))))
    x, y = np.array(points).T
    beta, log_k = np.polyfit(x, y, 1)
    return float(math.exp(log_k)), float(beta)


def recombine(a: Sequence[str], b: Sequence[str], rng: np.random.Generator) -> list[str]:
    """The start of `a` joined to the end of `b` at a word they share (chosen at random), no shorter and no
    longer than the two, so lengths keep the source's distribution; `a` if there is no such word."""
    low, high = sorted((len(a), len(b)))
    shared = [(i, j) for i, w in enumerate(a) for j, u in enumerate(b)
              if w == u and 0 < i and 0 < j and low <= i + len(b) - j <= high]
    if not shared:
        return list(a)
    i, j = shared[rng.integers(len(shared))]
    return list(a[:i]) + list(b[j:])


@dataclass
class Lexicon:
    """Distinct-word growth along Heaps' curve, with new words reused in proportion to their uses."""

    k: float
    beta: float
    tail: set[str]
    uses: list[str]  # one entry per use of a tail or new word, so a uniform draw is proportional to uses
    seen: set[str]
    tokens: int = 0
    new_words: int = 0

    @classmethod
    def from_source(cls, captions: Sequence[Sequence[str]]) -> "Lexicon":
        counts = Counter(w for words in captions for w in words)
        tail = {w for w, n in counts.items() if n <= TAIL_MAX_COUNT}
        return cls(*heaps_law(captions), tail, [w for words in captions for w in words if w in tail], set())

    def fill(self, words: list[str], rng: np.random.Generator) -> list[str]:
        """`words` with each tail word replaced by a new word while distinct words lag Heaps' curve, else
        by an earlier tail word (Yule-Simon reuse)."""
        out = []
        for w in words:
            if w in self.tail:
                if len(self.seen) < self.k * (self.tokens + 1) ** self.beta:
                    self.new_words += 1
                    w = f"zz{self.new_words:x}"
                    self.tail.add(w)
                else:
                    w = self.uses[rng.integers(len(self.uses))]
                self.uses.append(w)
            out.append(w)
            self.seen.add(w)
            self.tokens += 1
        return out


def simulate_split(photos: int, source_captions: Sequence[Sequence[list[str]]], source_vectors: np.ndarray,
                   lexicon: Lexicon, rng: np.random.Generator) -> tuple[list[list[str]], np.ndarray]:
    """`photos` simulated photos: 5 captions each (lists of words) and their vectors [photos, D] (fp16)."""
    std = source_vectors.std(0).astype(np.float32)
    vectors = np.empty((photos, source_vectors.shape[1]), dtype=np.float16)
    captions = []
    for p in range(photos):
        s = int(rng.integers(len(source_captions)))
        refs = source_captions[s]
        pairs = rng.integers(len(refs), size=(CAPTIONS_PER_PHOTO, 2))
        captions.append([" ".join(lexicon.fill(recombine(refs[i], refs[j], rng), rng)) for i, j in pairs])
        vectors[p] = source_vectors[s] + NOISE * std * rng.standard_normal(len(std), dtype=np.float32)
    return captions, vectors


def coco_json(split: str, first_image_id: int, captions: list[list[str]], year: str = "2014") -> dict:
    """COCO's caption annotation file: info, images (id, file_name, size), annotations (id, image_id, caption)."""
    images, annotations = [], []
    for n, caps in enumerate(captions):
        image_id = first_image_id + n
        images.append({"id": image_id, "file_name": f"COCO_{split}{year}_{image_id:012d}.jpg", "width": 640, "height": 480})
        annotations.extend({"id": image_id * CAPTIONS_PER_PHOTO + k, "image_id": image_id, "caption": c}
                           for k, c in enumerate(caps))
    return {"info": {"description": "simulated by captioner (training.synthetic)", "year": int(year)},
            "licenses": [], "images": images, "annotations": annotations}


def generate(source: TrainConfig, out: str | Path, photos: int, val_photos: int, seed: int = 0) -> TrainConfig:
    """Write the simulated set under `out` and its vectors into the source's cache folder; returns the
    config that trains on it (the source's, as COCO format on `out`)."""
    out = Path(out)
    target = dataclasses.replace(source, format="coco", data_dir=str(out), coco_year="2014", train_splits=["train"],
                                 val_split="val")
    encoder = create_encoder(source.encoder, pretrained=True, weights=source.encoder_weights or None)
    data = prepare_data(source, encoder, SingleProcess())
    rng = np.random.default_rng(seed)
    train_caps, val_caps = ([[tokenize(c) for c in r.captions] for r in records] for records in (data.train, data.val))
    lexicon = Lexicon.from_source([c for caps in train_caps for c in caps])
    paths, vectors = [], []
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    first_id = 1
    for split, n, caps, feats in (("train", photos - val_photos, train_caps, data.train_feats),
                                  ("val", val_photos, val_caps, data.val_feats)):
        split_captions, split_vectors = simulate_split(n, caps, feats.numpy(), lexicon, rng)
        doc = coco_json(split, first_id, split_captions)
        (out / "annotations" / f"captions_{split}2014.json").write_text(json.dumps(doc))
        paths += [out / f"{split}2014" / im["file_name"] for im in doc["images"]]
        vectors.append(split_vectors)
        first_id += n
    store(target.cache_dir, encoder_identity(target), preprocess_config(target), paths, out, np.concatenate(vectors))
    log.info("simulated %d photos (%d val) in %s: Heaps K=%.2f beta=%.3f, %d new words, %d distinct",
             photos, val_photos, out, lexicon.k, lexicon.beta, lexicon.new_words, len(lexicon.seen))
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=COCO_PHOTOS, help="train + val photos (default: COCO 2014's)")
    p.add_argument("--val-photos", type=int, default=0, help="default: min(5,000, photos / 8)")
    p.add_argument("--out", required=True, help="folder for the COCO layout")
    p.epilog = "--config (default configs/flickr8k.toml) and its --field flags describe the source data set."
    config_mod.add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    args.config = args.config or "configs/flickr8k.toml"
    source = config_mod.from_args(args)
    val = args.val_photos or min(COCO_VAL_PHOTOS, args.photos // 8)
    generate(source, args.out, args.photos, val, source.seed)
    print(f"train on it: python -m training.train --config {args.config} --format coco --data_dir {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
