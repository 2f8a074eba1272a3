"""Self-critical sequence training (Rennie et al. 2017): REINFORCE on CIDEr-D with a baseline. Samples are
drawn without autograd on the inference fast path, then scored in one teacher-forced pass under the same
word bans decoding uses, so the gradient is that of the distribution the samples came from."""

from __future__ import annotations

import torch

from captioner.decoder import CaptionDecoder
from captioner.decoding import WordBans, sequence_log_probs, sequential_decode
from captioner.vocab import Vocabulary

from .config import TrainConfig
from .metrics import CiderD

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
    training = decoder.training
    decoder.eval()
    gen = torch.Generator(feats.device).manual_seed(int(torch.randint(0, 2**62, (1,))))
    hyps = sequential_decode(decoder, feats.repeat_interleave(k, 0), vocab.start_id, vocab.end_id, max_words,
                             min_length=bans.min_length, sample=True, seeds=gen, suppress_ids=bans.suppress,
                             no_end_after=bans.no_end_after)
    decoder.train(training)
    rows = [h.tokens + [vocab.end_id] * h.finished for h in hyps]
    seqs = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        seqs[i, : len(row)] = torch.tensor(row)
    return seqs.to(feats.device)


def policy_gradient_loss(decoder: CaptionDecoder, feats: torch.Tensor, seqs: torch.Tensor, advantages: torch.Tensor,
                         start_id: int, bans: WordBans) -> torch.Tensor:
    """REINFORCE: -(advantage x log p(token)) averaged over the sampled tokens; a gradient step on it makes
    samples that beat their baseline more likely and the others less."""
    token_lp = sequence_log_probs(decoder, feats, seqs, start_id, bans)
    return -(advantages[:, None] * token_lp).sum() / (seqs != 0).sum()


def scst_loss(decoder: CaptionDecoder, feats: torch.Tensor, refs: list[list], vocab: Vocabulary,
              scorer: CiderD, cfg: TrainConfig, bans: WordBans) -> tuple[torch.Tensor, float]:
    """Self-critical training on CIDEr-D against each image's `scorer.prepare`d references; returns the loss
    and the samples' mean reward. Baseline: the greedy caption's reward (Rennie et al. 2017), or the mean
    reward of the image's other samples (Luo 2020), which needs no extra decoding and, on Flickr8k here,
    lifted val CIDEr-D where the greedy baseline stalled. Samples are drawn without autograd, then scored
    in one teacher-forced pass under the same word bans."""
    k = cfg.scst_samples
    max_words = cfg.scst_max_words or cfg.max_caption_words
    seqs = scst_samples(decoder, feats, k, max_words, vocab, bans)
    scores = torch.tensor([scorer.score_prepared(vocab.decode(s), refs[i // k]) for i, s in enumerate(seqs.tolist())],
                          device=feats.device).view(-1, k)
    greedy = None
    if cfg.scst_baseline == "greedy":
        decoder.eval()
        hyps = sequential_decode(decoder, feats, vocab.start_id, vocab.end_id, max_words, min_length=bans.min_length,
                                 suppress_ids=bans.suppress, no_end_after=bans.no_end_after)
        decoder.train()
        greedy = torch.tensor([scorer.score_prepared(vocab.decode(h.tokens), r) for h, r in zip(hyps, refs)],
                              device=feats.device)
    advantages = scst_advantages(scores, cfg.scst_baseline, greedy).reshape(-1)
    loss = policy_gradient_loss(decoder, feats.repeat_interleave(k, 0), seqs, advantages, vocab.start_id, bans)
    return loss, float(scores.mean())
