"""Grounding: evidence, from the image vector v, for each concept a caption can name (`captioner.concepts`).

Two sources, both a linear layer on the v the decoder already reads, so grounding costs two small matmuls:
- the encoder's ImageNet head (1,000 classes): a concept's score is the logit of the softmax probability
  summed over its classes;
- detectors learned from training captions (logistic regression on v) for concepts ImageNet does not cover.
Each score is calibrated (a per-concept affine map, then a sigmoid: Platt scaling) into the evidence: the
probability that a person describing the photo would name the concept.

Grounded decoding scores a word that names a concept as p(word) x evidence ** `weight`, and never names a
concept whose evidence is below its threshold (nor, for a guarded concept such as person, whose support
from the ImageNet classes the head sees is: see `allowed`). Every caption reports the evidence for what it names; and a
photo is flagged `low_confidence`, with the top ImageNet labels, instead of being passed off as described,
when its likeliest ImageNet class is one the model never learned to talk about, or when its best caption is
one the decoder itself finds improbable (it had to steer around what it wanted to say).

Everything here travels in the checkpoint: the head's and detectors' weights as tensors `grounding.*`, the
concepts, thresholds and labels as JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .concepts import Concept
from .vocab import Vocabulary

TOP_LABELS = 3  # ImageNet labels reported with each photo


@dataclass(frozen=True)
class Evidence:
    """What a caption names, and how strongly the photo supports it (0-1)."""

    word: str
    concept: str
    prob: float
    source: str  # "imagenet" or "detector"

    def to_dict(self) -> dict:
        return {"word": self.word, "concept": self.concept, "prob": round(self.prob, 4), "source": self.source}


UNFAMILIAR = "unfamiliar_subject"  # the ImageNet head is sure of a class the model never learned to talk about
IMPROBABLE = "improbable_caption"  # the best caption scores below what almost every validation caption gets
_NOTES = {
    UNFAMILIAR: "This photo is unlike those the captioner learned from, so it gives no description of it.",
    IMPROBABLE: "The captioner could not describe this photo with confidence, so it gives no description of it.",
}


@dataclass(frozen=True)
class ImageEvidence:
    """One photo's evidence: every concept's probability, the ImageNet head's top labels, and, when its caption
    should not be trusted, why (`UNFAMILIAR` or `IMPROBABLE`)."""

    concepts: dict[str, float]
    labels: list[tuple[str, float]]
    reason: str | None = None

    @property
    def low_confidence(self) -> bool:
        return self.reason is not None

    @property
    def note(self) -> str | None:
        """Why the caption should not be trusted, for a reader who cannot see the photo (None when it can)."""
        return _NOTES.get(self.reason)

    def alt_text(self, caption: str) -> str:
        """What to put in an image's alt attribute: the caption as a sentence, or, for a low-confidence photo,
        what the ImageNet head sees, hedged, and why there is no caption."""
        if not self.low_confidence:
            return sentence(caption)
        if not self.labels:  # a model without an ImageNet head
            return self.note
        (first, p1), *rest = self.labels
        guess = f"Probably {_article(first)}" if p1 >= 0.5 else f"Possibly {_article(first)}"
        if p1 < 0.5 and rest:
            guess += f" or {_article(rest[0][0])}"
        return f"{guess}. {self.note}"

    def to_dict(self) -> dict:
        return {"low_confidence": self.low_confidence, "reason": self.reason, "note": self.note,
                "labels": [{"label": name, "prob": round(p, 4)} for name, p in self.labels],
                "concepts": {c: round(p, 4) for c, p in self.concepts.items()}}


def word_score(log_prob: float, words: int) -> float:
    """A caption's score per word and <end>: what the caption floor (`Grounding.min_word_score`) is set and
    judged on."""
    return log_prob / (words + 1)


def sentence(text: str) -> str:
    """'a dog runs' -> 'A dog runs.'"""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".") if text else text


def _article(label: str) -> str:
    """An ImageNet label as a noun phrase: 'cheeseburger' -> 'a cheeseburger', 'African elephant' -> 'an African
    elephant' (lower-cased unless a proper name)."""
    word = label if label[:1].isupper() and not label.islower() else label.lower()
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


@dataclass(frozen=True)
class GroundedConcept:
    name: str
    words: tuple[str, ...]
    imagenet: tuple[int, ...]
    threshold: float

    @property
    def source(self) -> str:
        return "imagenet" if self.imagenet else "detector"

    def to_dict(self) -> dict:
        return {"name": self.name, "words": list(self.words), "imagenet": list(self.imagenet),
                "threshold": self.threshold}


class Grounding(nn.Module):
    """Concept evidence for image vectors [N, D], the word scores grounded decoding adds, and the
    low-confidence verdict."""

    def __init__(self, concepts: list[GroundedConcept], vocab: Vocabulary, labels: list[str],
                 known_classes: list[int], low_confidence_prob: float, feature_dim: int, weight: float = 1.0,
                 min_word_score: float | None = None):
        super().__init__()
        if not weight >= 0:  # beam search's early stop needs scores that never rise as words are added
            raise ValueError(f"grounding weight must be >= 0, got {weight}")
        self.concepts, self.labels, self.weight = list(concepts), list(labels), float(weight)
        self.min_word_score = min_word_score  # a best caption scoring less per word (and <end>) is IMPROBABLE
        self.known_classes, self.low_confidence_prob = sorted(known_classes), float(low_confidence_prob)
        n_classes, c = len(labels), len(concepts)
        self.register_buffer("head_weight", torch.zeros(n_classes, feature_dim))
        self.register_buffer("head_bias", torch.zeros(n_classes))
        self.register_buffer("detector_weight", torch.zeros(c, feature_dim))
        self.register_buffer("detector_bias", torch.zeros(c))
        self.register_buffer("calibration_scale", torch.ones(c))
        self.register_buffer("calibration_bias", torch.zeros(c))
        # per ImageNet class, the share of its training photos that show each concept (1: not guarded)
        self.register_buffer("context_rate", torch.ones(n_classes, c))
        membership = torch.zeros(c, n_classes)
        for i, concept in enumerate(concepts):
            membership[i, list(concept.imagenet)] = 1.0
        self.register_buffer("membership", membership, persistent=False)
        self.register_buffer("from_imagenet", membership.sum(1) > 0, persistent=False)
        self.register_buffer("thresholds", torch.tensor([x.threshold for x in concepts]), persistent=False)
        known = torch.zeros(n_classes, dtype=torch.bool)
        known[self.known_classes] = True
        self.register_buffer("known", known, persistent=False)
        # word id -> the index of the concept it names (-1: none)
        self.vocab = vocab
        word_concept = torch.full((len(vocab),), -1, dtype=torch.long)
        for i, concept in enumerate(concepts):
            ids = [vocab.stoi[w] for w in concept.words if w in vocab.stoi]
            word_concept[ids] = i
        self.register_buffer("word_concept", word_concept, persistent=False)

    # -- evidence --
    def class_probs(self, features: torch.Tensor) -> torch.Tensor:
        """The ImageNet head's softmax [N, classes]."""
        return torch.softmax(features.float() @ self.head_weight.T + self.head_bias, dim=-1)

    def scores(self, features: torch.Tensor, class_probs: torch.Tensor | None = None) -> torch.Tensor:
        """Each concept's uncalibrated logit [N, C]: of its ImageNet class mass where it has classes, else of
        its detector."""
        probs = self.class_probs(features) if class_probs is None else class_probs
        imagenet = torch.logit(probs @ self.membership.T, eps=1e-6)
        learned = features.float() @ self.detector_weight.T + self.detector_bias
        return torch.where(self.from_imagenet, imagenet, learned)

    def evidence(self, features: torch.Tensor, class_probs: torch.Tensor | None = None) -> torch.Tensor:
        """Each concept's calibrated probability [N, C]."""
        return torch.sigmoid(self.scores(features, class_probs) * self.calibration_scale + self.calibration_bias)

    def allowed(self, evidence: torch.Tensor, class_probs: torch.Tensor) -> torch.Tensor:
        """Whether each concept may be named at all [N, C]: its evidence reaches the threshold, and so does its
        context support, the concept's rate among the training photos of the ImageNet classes the head sees
        (1 for concepts without a context rate). The context guards a learned detector off its domain: a
        linear map fitted where most photos show a concept says so for photos unlike any it saw, whereas a
        class no training photo had gives its concepts no support (docs/grounding.md)."""
        ok = evidence >= self.thresholds
        return ok & (class_probs @ self.context_rate >= self.thresholds) if self.labels else ok

    def word_scores(self, evidence: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """What grounded decoding adds to each word's log-probability [N, V]: `weight` x log(evidence) for a
        word naming a concept (so it scores p(word) x evidence ** weight), -inf where the concept is not
        `allowed` (never named), 0 for every other word."""
        named = self.word_concept >= 0
        per_concept = torch.log(evidence.clamp_min(1e-12)) * self.weight
        per_concept = per_concept.masked_fill(~allowed, float("-inf"))
        scores = torch.zeros(evidence.size(0), len(self.word_concept), device=evidence.device)
        scores[:, named] = per_concept[:, self.word_concept[named]]
        return scores

    def image_evidence(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[ImageEvidence]]:
        """The evidence [N, C], which concepts may be named [N, C], and each photo's summary."""
        probs = self.class_probs(features)
        evidence = self.evidence(features, probs)
        top_p, top_i = probs.topk(min(TOP_LABELS, probs.size(1)), dim=1)
        low = (~self.known[top_i[:, 0]] & (top_p[:, 0] >= self.low_confidence_prob) if self.labels
               else torch.zeros(len(features), dtype=torch.bool))
        out = []
        for ev, ps, ix, flag in zip(evidence.tolist(), top_p.tolist(), top_i.tolist(), low.tolist()):
            out.append(ImageEvidence({c.name: p for c, p in zip(self.concepts, ev)},
                                     [(self.labels[i], p) for i, p in zip(ix, ps)], UNFAMILIAR if flag else None))
        return evidence, self.allowed(evidence, probs), out

    def judge_caption(self, image: ImageEvidence, log_prob: float, words: int) -> ImageEvidence:
        """`image`, flagged IMPROBABLE if its best caption (`words` words, score `log_prob`) scores below the
        floor per word and <end>."""
        if image.low_confidence or self.min_word_score is None or word_score(log_prob, words) >= self.min_word_score:
            return image
        return dataclasses.replace(image, reason=IMPROBABLE)

    def caption_evidence(self, ids: list[int], evidence: torch.Tensor) -> list[Evidence]:
        """What one caption's word ids name, with one photo's evidence [C] for each."""
        out = []
        for i in ids:
            c = int(self.word_concept[i])
            if c >= 0:
                concept = self.concepts[c]
                out.append(Evidence(self.vocab.itos[i], concept.name, float(evidence[c]), concept.source))
        return out

    # -- description and checkpoint --
    def describe(self) -> dict:
        return {"concepts": [{"name": c.name, "source": c.source, "threshold": round(c.threshold, 4),
                              "words": list(c.words)} for c in self.concepts],
                "weight": self.weight, "low_confidence_prob": self.low_confidence_prob,
                "min_word_score": self.min_word_score, "imagenet_classes": len(self.labels)}

    def metadata(self) -> dict:
        return {"concepts": [c.to_dict() for c in self.concepts], "labels": self.labels,
                "known_classes": self.known_classes, "low_confidence_prob": self.low_confidence_prob,
                "weight": self.weight, "min_word_score": self.min_word_score}

    @classmethod
    def from_metadata(cls, meta: dict, tensors: dict[str, torch.Tensor], vocab: Vocabulary) -> "Grounding":
        concepts = [GroundedConcept(c["name"], tuple(c["words"]), tuple(c["imagenet"]), float(c["threshold"]))
                    for c in meta["concepts"]]
        g = cls(concepts, vocab, meta["labels"], meta["known_classes"], meta["low_confidence_prob"],
                tensors["head_weight"].size(1), meta["weight"], meta["min_word_score"])
        g.load_state_dict(tensors, strict=True)
        return g


def grounded_concepts(table: tuple[Concept, ...], thresholds: dict[str, float], vocab: Vocabulary,
                      has_head: bool) -> list[GroundedConcept]:
    """The table's concepts that the vocabulary can say, each with its threshold; without an ImageNet head
    every concept is learned."""
    return [GroundedConcept(c.name, tuple(w for w in c.words if w in vocab.stoi), c.imagenet if has_head else (),
                            thresholds[c.name])
            for c in table if any(w in vocab.stoi for w in c.words)]
