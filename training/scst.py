"""Self-critical sequence training (Rennie et al. 2017): REINFORCE on CIDEr-D (optionally plus BLEU-4,
fluency, hallucination and discriminability terms: `Reward`) with a baseline. Samples are drawn without
autograd on the inference fast path, then scored in one teacher-forced pass under the same word bans
decoding uses, so the gradient is that of the distribution the samples came from."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from captioner.concepts import named_concepts, shown_concepts, word_concepts
from captioner.decoder import CaptionDecoder
from captioner.decoding import Hypothesis, WordBans, sequence_log_probs, sequential_decode
from captioner.options import DecodeOptions
from captioner.vocab import Vocabulary, tokenize

from .config import TrainConfig
from .data import pad_rows
from .fluency import is_disfluent
from .metrics import CiderD, prepare_bleu, sentence_bleu_prepared
from .retrieval import Retrieval, self_retrieval


REFERENCES_KEPT = 4096  # images whose prepared references a Reward keeps (a batch needs 32 x world size)


def scst_advantages(scores: torch.Tensor, baseline: str, greedy: torch.Tensor | None = None) -> torch.Tensor:
    """Rewards [images, k] of k samples per image minus the baseline: the greedy caption's reward [images],
    or the mean of the same image's other k-1 samples (each row then sums to zero)."""
    if baseline == "greedy":
        if greedy is None:
            raise ValueError("the greedy baseline needs the greedy captions' rewards")
        return scores - greedy[:, None]
    if baseline == "mean":
        k = scores.size(1)
        if k < 2:
            raise ValueError("scst_baseline = 'mean' needs scst_samples >= 2")
        return scores - (scores.sum(1, keepdim=True) - scores) / (k - 1)
    raise ValueError(f"scst_baseline must be 'greedy' or 'mean', got {baseline!r}")


def scst_samples(decoder: CaptionDecoder, feats: torch.Tensor, k: int, max_words: int, vocab: Vocabulary,
                 bans: WordBans) -> torch.Tensor:
    """k captions per image drawn from the model's own distribution (without the banned words), on the
    inference fast path: ids [N*k, T] with <end> where finished and 0 after. The noise comes from the
    global RNG, so an exact resume draws the same samples."""
    gen = torch.Generator(feats.device).manual_seed(int(torch.randint(0, 2**62, (1,))))
    hyps = _decode_in_eval(decoder, feats.repeat_interleave(k, 0), vocab, bans,
                           DecodeOptions(method="sample", max_length=max_words), gen)
    return caption_ids(hyps, vocab.end_id).to(feats.device)


def greedy_captions(decoder: CaptionDecoder, feats: torch.Tensor, max_words: int, vocab: Vocabulary,
                    bans: WordBans) -> torch.Tensor:
    """Each image's greedy caption under the same bans, as `scst_samples` returns samples: ids [N, T]."""
    hyps = _decode_in_eval(decoder, feats, vocab, bans, DecodeOptions(method="greedy", max_length=max_words))
    return caption_ids(hyps, vocab.end_id).to(feats.device)


def _decode_in_eval(decoder: CaptionDecoder, feats: torch.Tensor, vocab: Vocabulary, bans: WordBans,
                    options: DecodeOptions, seeds: torch.Generator | None = None) -> list[Hypothesis]:
    """Decode without dropout, whatever mode the decoder is in, and leave it in that mode; without the fast
    path's table of every word's gates, since the weights change after every batch (`word_table`)."""
    training, table = decoder.training, decoder.word_table
    decoder.eval()
    decoder.word_table = False
    try:
        return sequential_decode(decoder, feats, vocab.start_id, bans, options, seeds=seeds)
    finally:
        decoder.train(training)
        decoder.word_table = table


def caption_ids(hyps: Sequence[Hypothesis], end_id: int) -> torch.Tensor:
    """Decoded captions as padded ids [N, T]: their words, then <end> where finished, then 0."""
    return pad_rows([h.tokens + [end_id] * h.finished for h in hyps])


def policy_gradient_loss(decoder: CaptionDecoder, feats: torch.Tensor, seqs: torch.Tensor, advantages: torch.Tensor,
                         start_id: int, bans: WordBans) -> torch.Tensor:
    """REINFORCE: -(advantage x log p(token)) averaged over the sampled tokens; a gradient step on it makes
    samples that beat their baseline more likely and the others less."""
    token_lp = sequence_log_probs(decoder, feats, seqs, start_id, bans)
    return -(advantages[:, None] * token_lp).sum() / (seqs != 0).sum()


class Reward:
    """The whole reward SCST maximises, for each sampled caption of a batch: CIDEr-D against its image's
    references (document frequencies from the training captions), plus `bleu_weight` x sentence BLEU-4, minus
    `disfluency_penalty` for a caption `training.fluency` calls disfluent, minus `hallucination_penalty` for a
    caption that names a concept (`captioner.concepts`) none of its references names, plus
    `discriminability_weight` x log p(its own photo | caption) among the batch's photos (`retrieval`).
    Built once per run; an image's references are prepared (tf-idf vectors, BLEU clipping counts, concepts)
    when its batch is scored and kept for the few images in flight: prepared up front for all of COCO's
    photos, they would hold gigabytes (docs/scale.md). `training.train.selection_score` compares epochs on
    the same terms averaged over the val captions: a new term belongs in both."""

    def __init__(self, references: Sequence[Sequence[str]], bleu_weight: float = 0.0, disfluency_penalty: float = 0.0,
                 hallucination_penalty: float = 0.0, discriminability_weight: float = 0.0,
                 retrieval: Retrieval | None = None):
        if discriminability_weight and retrieval is None:
            raise ValueError("a discriminability weight needs the retrieval model that scores it")
        self.references = references
        self.cider = CiderD(references)
        self.concepts = word_concepts() if hallucination_penalty else {}
        self._prepared = functools.lru_cache(maxsize=REFERENCES_KEPT)(self._prepare)
        self.bleu_weight, self.disfluency_penalty = bleu_weight, disfluency_penalty
        self.hallucination_penalty = hallucination_penalty
        self.discriminability_weight, self.retrieval = discriminability_weight, retrieval

    @classmethod
    def from_config(cls, cfg: TrainConfig, references: Sequence[Sequence[str]],
                    retrieval: Retrieval | None = None) -> "Reward":
        return cls(references, cfg.scst_bleu_weight, cfg.scst_disfluency_penalty, cfg.scst_hallucination_penalty,
                   cfg.scst_discriminability_weight, retrieval)

    def _prepare(self, image: int) -> tuple[list, tuple, set[str]]:
        """Image `image`'s references ready to score against: CIDEr-D vectors, BLEU counts, concepts shown."""
        tokens = [tokenize(c) for c in self.references[image]]
        bleu = prepare_bleu(tokens) if self.bleu_weight else ()
        return self.cider.prepare(tokens), bleu, shown_concepts(self.references[image], self.concepts)

    def text_terms(self, words: Sequence[str], image: int) -> float:
        """The terms a caption earns from its words alone: CIDEr-D, BLEU-4, fluency and hallucination."""
        cider, bleu, shown = self._prepared(image)
        reward = self.cider.score_prepared(words, cider)
        if self.bleu_weight:
            reward += self.bleu_weight * sentence_bleu_prepared(words, bleu)
        if self.disfluency_penalty and is_disfluent(words):
            reward -= self.disfluency_penalty
        if self.hallucination_penalty and named_concepts(words, self.concepts) - shown:
            reward -= self.hallucination_penalty
        return reward

    def __call__(self, seqs: torch.Tensor, images: Sequence[int], feats: torch.Tensor, vocab: Vocabulary,
                 per_image: int) -> torch.Tensor:
        """Rewards [len(images), per_image] of `per_image` captions per image (ids [N * per_image, T], image by
        image) of training images `images`, whose vectors `feats` are the batch's photos."""
        text = [self.text_terms(vocab.decode(s), images[i // per_image]) for i, s in enumerate(seqs.tolist())]
        scores = torch.tensor(text, device=feats.device).view(-1, per_image)
        if self.discriminability_weight:
            scores = scores + self.discriminability_weight * self_retrieval(self.retrieval, seqs, feats, per_image)
        return scores


def scst_loss(decoder: CaptionDecoder, feats: torch.Tensor, images: list[int], vocab: Vocabulary, reward: Reward,
              cfg: TrainConfig, bans: WordBans, human: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """Self-critical training on `reward` for training images `images` (their vectors `feats`); returns the
    loss and the samples' mean reward. Baseline: the greedy caption's reward (Rennie et al. 2017), or the mean
    reward of the image's other samples (Luo 2020), which needs no extra decoding. Samples are drawn without
    autograd, then scored in one teacher-forced pass under the same word bans. With `cfg.scst_xe_weight`, the
    cross-entropy of `human` (one reference caption per image, padded ids with <start>) is added, so the
    policy cannot drift from the language it was taught."""
    k = cfg.scst_samples
    max_words = cfg.scst_max_words or cfg.max_caption_words
    seqs = scst_samples(decoder, feats, k, max_words, vocab, bans)
    scores = reward(seqs, images, feats, vocab, k)
    greedy = None
    if cfg.scst_baseline == "greedy":
        greedy = reward(greedy_captions(decoder, feats, max_words, vocab, bans), images, feats, vocab, 1)[:, 0]
    advantages = scst_advantages(scores, cfg.scst_baseline, greedy).reshape(-1)
    loss = policy_gradient_loss(decoder, feats.repeat_interleave(k, 0), seqs, advantages, vocab.start_id, bans)
    if cfg.scst_xe_weight and human is not None:
        loss = loss + cfg.scst_xe_weight * decoder(feats, human, label_smoothing=0.0)
    return loss, float(scores.mean())
