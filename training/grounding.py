"""Fit a model's grounding (`captioner.grounding`): concept detectors learned from the training captions,
every concept's evidence calibrated on the training photos, and the ImageNet classes the model can talk about.

    python -m training.grounding --model models/flickr8k.safetensors [--config configs/flickr8k.toml] [--out PATH]

adds grounding to a trained checkpoint (decoder untouched) from the config's cached image vectors;
`make train` fits it the same way before the first epoch, so the model is selected as it ships.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence

import torch

from captioner import Captioner, load
from captioner.checkpoint import save as save_checkpoint
from captioner.concepts import CONCEPTS, Concept, shown_concepts, word_concepts
from captioner.encoders import create_encoder
from captioner.grounding import Grounding, grounded_concepts, word_score
from captioner.options import DecodeOptions
from captioner.vocab import Vocabulary

from . import config as config_mod
from .config import TrainConfig
from .data import prepare_data
from .runtime import SingleProcess
from .datasets import Record

log = logging.getLogger("training.grounding")

KNOWN_CLASS_MIN_PHOTOS = 5  # an ImageNet class that is the top class of this many training photos is in the model's world
KNOWN_CONCEPT_MIN_PHOTOS = 50  # ... and so are the classes of a concept that this many training photos show


def concept_labels(records: Sequence[Record], concepts: Sequence[Concept]) -> torch.Tensor:
    """[photos, concepts] bool: a photo shows a concept when one of its references names it."""
    table = word_concepts(concepts)
    index = {c.name: i for i, c in enumerate(concepts)}
    labels = torch.zeros(len(records), len(concepts), dtype=torch.bool)
    for row, r in enumerate(records):
        for name in shown_concepts(r.captions, table):
            labels[row, index[name]] = True
    return labels


def fit_detectors(features: torch.Tensor, labels: torch.Tensor, l2: float, steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression per concept on standardised v (L-BFGS, full batch); returns weight [C, D] and bias
    [C] that act on the raw v (the standardisation folded in)."""
    if labels.size(1) == 0:  # a vocabulary that names no concept
        return torch.zeros(0, features.size(1)), torch.zeros(0)
    x = features.float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z, y = (x - mean) / std, labels.float()
    w = torch.zeros(y.size(1), x.size(1), requires_grad=True)
    prior = y.mean(0).clamp(1e-4, 1 - 1e-4)
    b = torch.log(prior / (1 - prior)).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(loss_fn)
    w_raw = (w / std).detach()
    return w_raw, (b - w_raw @ mean).detach()


def out_of_fold_logits(features: torch.Tensor, labels: torch.Tensor, l2: float, folds: int = 5) -> torch.Tensor:
    """Each photo's detector logits [N, C] from detectors fitted without it: what calibration needs, since
    a detector is over-confident on the photos it was fitted to."""
    out = torch.zeros(labels.shape)
    fold = torch.arange(len(features)) % folds
    for k in range(folds):
        w, b = fit_detectors(features[fold != k], labels[fold != k], l2)
        out[fold == k] = features[fold == k].float() @ w.T + b
    return out


def platt(scores: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Per concept, the affine map (scale, bias) [C] that makes sigmoid(scale * score + bias) a calibrated
    probability of the label (Platt scaling), with a weak pull towards the identity."""
    if scores.size(1) == 0:
        return torch.ones(0), torch.zeros(0)
    scale, bias = torch.ones(scores.size(1), requires_grad=True), torch.zeros(scores.size(1), requires_grad=True)
    opt = torch.optim.LBFGS([scale, bias], max_iter=steps, line_search_fn="strong_wolfe")
    y = labels.float()

    def loss_fn():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(scores * scale + bias, y)
        loss = loss + 1e-4 * ((scale - 1) ** 2 + bias**2).sum()
        loss.backward()
        return loss

    opt.step(loss_fn)
    return scale.detach(), bias.detach()


def context_rates(train_probs: torch.Tensor, labels: torch.Tensor, guarded: torch.Tensor,
                  prior_photos: float) -> torch.Tensor:
    """[classes, concepts]: per ImageNet class, the share of its training photos (soft: weighted by the head's
    probability) that show each `guarded` concept, as if `prior_photos` more photos of it showed none, so a
    class the training photos rarely had supports nothing; 1 for the concepts not guarded."""
    rates = (train_probs.T @ labels.float()) / (train_probs.sum(0)[:, None] + prior_photos)
    return rates.masked_fill(~guarded, 1.0)


def known_classes(concepts: Sequence[Concept], labels: torch.Tensor, train_probs: torch.Tensor) -> list[int]:
    """The ImageNet classes the model has learned to talk about: those that are the top class of several
    training photos, and the classes of concepts that many training photos show (`labels` [photos, concepts]).
    A class only the concept table lists (an elephant, seen in 3 photos) is not one of them."""
    tops = Counter(train_probs.argmax(1).tolist())
    known = {i for i, n in tops.items() if n >= KNOWN_CLASS_MIN_PHOTOS}
    known |= {i for c, n in zip(concepts, labels.sum(0).tolist()) if n >= KNOWN_CONCEPT_MIN_PHOTOS for i in c.imagenet}
    return sorted(known)


def imagenet_head(encoder_name: str, weights: str | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
    """The encoder's pretrained ImageNet classifier (weight, bias) and its class names, or None without one."""
    encoder = create_encoder(encoder_name, pretrained=True, weights=weights, with_head=True)
    head = getattr(encoder, "classifier", None) or getattr(encoder, "fc", None)
    if head is None:
        return None
    from torchvision.models._meta import _IMAGENET_CATEGORIES  # the 1,000 class names, as torchvision lists them
    return head.weight.detach().float(), head.bias.detach().float(), list(_IMAGENET_CATEGORIES)


def fit_grounding(cfg: TrainConfig, vocab: Vocabulary, train: Sequence[Record], train_feats: torch.Tensor) -> Grounding:
    """Detectors and calibration from the training photos and their captions; the ImageNet head from the
    encoder's pretrained weights; every concept's threshold is `cfg.grounding_threshold` (chosen on val)."""
    head = imagenet_head(cfg.encoder, cfg.encoder_weights or None)
    table = tuple(c for c in CONCEPTS if any(w in vocab.stoi for w in c.words))
    concepts = grounded_concepts(table, {c.name: cfg.grounding_threshold for c in table}, vocab, head is not None)
    weight, bias, labels = head if head is not None else (torch.zeros(0, train_feats.size(1)), torch.zeros(0), [])
    y = concept_labels(train, table)
    det_w, det_b = fit_detectors(train_feats, y, cfg.grounding_l2)
    train_probs = torch.softmax(train_feats.float() @ weight.T + bias, 1) if head is not None else None
    known = known_classes(table, y, train_probs) if head is not None else []
    grounding = Grounding(concepts, vocab, labels, known, cfg.low_confidence_prob, train_feats.size(1), cfg.grounding_weight)
    grounding.head_weight, grounding.head_bias = weight, bias
    grounding.detector_weight, grounding.detector_bias = det_w, det_b
    scores = torch.where(grounding.from_imagenet, grounding.scores(train_feats),
                         out_of_fold_logits(train_feats, y, cfg.grounding_l2))
    grounding.calibration_scale, grounding.calibration_bias = platt(scores, y)
    if head is not None:
        guarded = torch.tensor([c.name in cfg.grounding_context_concepts and not c.imagenet for c in concepts],
                               dtype=torch.bool)
        grounding.context_rate = context_rates(train_probs, y, guarded, cfg.grounding_context_prior)
    for c, n, a, b in zip(concepts, y.sum(0).tolist(), grounding.calibration_scale, grounding.calibration_bias):
        log.info("concept %-10s %-8s training photos %4d  calibration %.3f x score %+.3f", c.name, c.source, n, a, b)
    return grounding


def caption_score_floor(model: Captioner, features: torch.Tensor, options: DecodeOptions, share: float) -> float:
    """The best-caption score per word (and <end>) that all but `share` of these photos' captions reach with
    `options`: a caption below it is one the decoder struggled to write (`captioner.grounding.IMPROBABLE`)."""
    scores = [word_score(c[0].log_prob, len(c[0].tokens)) for chunk in features.split(250)
              for c in model.decode(chunk, options)]
    return float(torch.quantile(torch.tensor(scores), share))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.grounding", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint to ground")
    p.add_argument("--out", default=None, help="where to write the grounded checkpoint (default: over --model)")
    config_mod.add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    cfg = config_mod.from_args(args)
    model = load(args.model)
    data = prepare_data(cfg, create_encoder(cfg.encoder, pretrained=True, weights=cfg.encoder_weights or None),
                        SingleProcess())
    model.grounding = fit_grounding(cfg, model.vocab, data.train, data.train_feats)
    model.decoding = {**model.decoding, "grounded": cfg.grounded}  # ships decoding grounded unless the config says not
    options = model.default_options.updated({"grounded": cfg.grounded})
    model.grounding.min_word_score = caption_score_floor(model, data.val_feats, options, cfg.low_confidence_caption_share)
    save_checkpoint(args.out or args.model, model.checkpoint(), dtype=cfg.export_torch_dtype)
    log.info("wrote %s", args.out or args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
