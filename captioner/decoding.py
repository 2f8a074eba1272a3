"""Batched decoding from <start> until <end>: greedy, sampling (temperature, top-k, top-p) and beam search.

All three run a whole batch of images at once through `CaptionDecoder.step`, and each image's result is
what it would get alone: beam bookkeeping is per image, and sampling draws each image's noise from its
own seeded generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from .decoder import CaptionDecoder, traced_cell
from .options import DecodeOptions

DEFAULT = DecodeOptions()  # every default below comes from here

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    tokens: list[int]  # word ids, without <start> and <end>
    log_prob: float  # sum of the model's log-probabilities of the words and of <end> when finished
    # (suppressed words are never chosen, but probabilities are not renormalised over the rest), plus any
    # `word_scores` of the words chosen
    finished: bool  # False when max_length was reached before <end>


def _check(max_length: int, min_length: int) -> None:
    if max_length < 1:
        raise ValueError("max_length must be at least 1")
    if not 0 <= min_length <= max_length:
        raise ValueError("min_length must be between 0 and max_length")


def _ban_repeated_ngrams(log_probs: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """Forbid, in place, any token that would complete an n-gram already present in `history` [N, t]."""
    t = history.size(1)
    if n <= 0 or t < n:
        return
    grams = history.unfold(1, n, 1)  # [N, t-n+1, n]
    prefix = history[:, t - n + 1 :]  # the last n-1 tokens
    match = (grams[:, :, : n - 1] == prefix.unsqueeze(1)).all(dim=2)
    hits = torch.zeros_like(log_probs).scatter_add_(1, grams[:, :, n - 1], match.to(log_probs.dtype))
    log_probs.masked_fill_(hits > 0, NEG_INF)


@dataclass(frozen=True)
class WordBans:
    """What decoding may not choose, as one rule for greedy, sampling, beam search and SCST's scorer: the
    `suppress` ids ever; <end> before `min_length` words, or right after a `no_end_after` word (e.g. "a",
    "in", "the": CIDEr-trained models otherwise stop mid-phrase, "a girl is playing in the")."""

    end_id: int
    suppress: tuple[int, ...] = ()
    no_end_after: tuple[int, ...] = ()
    min_length: int = DEFAULT.min_length

    @cached_property
    def _no_end_after(self) -> torch.Tensor:  # built once: mask() runs at every decoding step
        return torch.tensor(self.no_end_after, dtype=torch.long)

    def mask(self, previous: torch.Tensor, position: int | torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Banned words [..., V] given the token just read, `previous` [...], at word `position` (0 for the
        first word; an int, or a tensor broadcastable to `previous`)."""
        banned = torch.zeros(*previous.shape, vocab_size, dtype=torch.bool, device=previous.device)
        banned[..., self.suppress] = True
        end = torch.as_tensor(position, device=previous.device) < self.min_length
        if self.no_end_after:
            end = end | torch.isin(previous, self._no_end_after.to(previous.device))
        banned[..., self.end_id] = end
        return banned


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0 and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p  # the first token is always kept
        logits = logits.masked_fill(torch.zeros_like(outside).scatter(1, order, outside), NEG_INF)
    return logits


def _generators(n: int, seeds: Sequence[int | None] | int | None, device: torch.device) -> list[torch.Generator]:
    if seeds is None or isinstance(seeds, int):
        seeds = [seeds] * n
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} images")
    gens = []
    for seed in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(seed)) if seed is not None else g.seed()
        gens.append(g)
    return gens


@torch.inference_mode()
def sequential_decode(
    decoder: CaptionDecoder,
    features: torch.Tensor,
    start_id: int,
    end_id: int,
    max_length: int = DEFAULT.max_length,
    min_length: int = DEFAULT.min_length,
    sample: bool = False,
    temperature: float = DEFAULT.temperature,
    top_k: int = DEFAULT.top_k,
    top_p: float = DEFAULT.top_p,
    seeds: Sequence[int | None] | int | None | torch.Generator = None,
    no_repeat_ngram_size: int = DEFAULT.no_repeat_ngram_size,
    suppress_ids: Sequence[int] = (),
    no_end_after: Sequence[int] = (),
    word_scores: torch.Tensor | None = None,
) -> list[Hypothesis]:
    """Greedy (argmax) or sampled decoding, one hypothesis per image.

    `word_scores` [N, V] (grounded decoding: `Grounding.word_scores`) are added to each image's word
    log-probabilities at every step (-inf: the image may not use the word), on top of the `WordBans` every
    image shares; a hypothesis's log_prob then includes them.

    Sampling draws from softmax(logits / T) over the words not banned by inverse transform: one uniform
    number per image and step, looked up in the cumulative distribution (the Gumbel-max trick it replaced
    drew one per vocabulary word, 2,538 here, and two logarithms of each). With per-image `seeds` each image's
    numbers come from its own generator, so a seeded image gets the same caption in any batch; one
    `torch.Generator` instead draws the whole batch's numbers at once (training, where only reproducibility
    of the whole run matters). A row that has produced <end> leaves the batch, so later steps cost only
    what is still being written (SCST's samples end after 12 of their 16 words on average).
    """
    _check(max_length, min_length)
    if sample and not temperature > 0:
        raise ValueError("temperature must be > 0")
    n, device = features.size(0), features.device
    shared = seeds if isinstance(seeds, torch.Generator) else None
    gens = _generators(n, seeds, device) if sample and shared is None else []
    bans = WordBans(end_id, tuple(suppress_ids), tuple(no_end_after), min_length)
    state = decoder.start(features)
    alive = torch.arange(n, device=device)  # rows still writing, in the order of `state`
    tokens = torch.full((n,), start_id, dtype=torch.long, device=device)
    out = torch.full((n, max_length), end_id, dtype=torch.long, device=device)
    log_prob = torch.zeros(n, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for t in range(max_length):
        logits, state = decoder.step(tokens, state)
        lp = F.log_softmax(logits.float(), dim=-1).masked_fill_(bans.mask(tokens, t, logits.size(1)), NEG_INF)
        if word_scores is not None:
            lp.add_(word_scores[alive])
        _ban_repeated_ngrams(lp, out[alive, :t], no_repeat_ngram_size)
        if sample:
            uniform = (torch.rand(len(alive), 1, generator=shared, device=device) if shared is not None else
                       torch.stack([torch.rand(1, generator=gens[i], device=device) for i in alive.tolist()]))
            choice = sample_categorical(filter_top_k_top_p(lp / temperature, top_k, top_p), uniform)
        else:
            choice = lp.argmax(dim=-1)
        log_prob[alive] = log_prob[alive] + lp.gather(1, choice[:, None])[:, 0]
        out[alive, t] = choice
        ended = choice == end_id
        done[alive] = ended
        if bool(ended.any()):
            keep = (~ended).nonzero()[:, 0]
            if len(keep) == 0:
                break
            alive, choice, state = alive[keep], choice[keep], decoder.reorder(state, keep)
        tokens = choice
    return [Hypothesis(row[: row.index(end_id)] if end_id in row else row, lp_sum, fin)
            for row, lp_sum, fin in zip(out.tolist(), log_prob.tolist(), done.tolist())]


def sample_categorical(scores: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One word per row [N] drawn from softmax(scores) [N, V] (-inf: never) by inverse transform, given one
    uniform number in [0, 1) per row [N, 1]: the first word whose cumulative probability exceeds it.
    A word of probability 0 adds nothing to the running sum, so it can never be the first to exceed it."""
    cdf = (scores - scores.amax(dim=-1, keepdim=True)).exp_().cumsum_(dim=-1)
    total = cdf[:, -1:]
    target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))  # < total always
    return torch.searchsorted(cdf, target, right=True)[:, 0]


def sequence_log_probs(decoder: CaptionDecoder, features: torch.Tensor, sequences: torch.Tensor, start_id: int,
                       bans: WordBans, pad_id: int = 0) -> torch.Tensor:
    """Teacher-forced log-probability [M, T] of each token of `sequences` [M, T] (word ids, then <end> when
    finished, then `pad_id`), under the distribution decoding draws from: banned words removed, the rest
    renormalised. 0 at padding. Differentiable (SCST's policy gradient flows through it); one pass of the
    fused RNN instead of T autograd steps, and the output layer and softmax only where there is a token
    (sampled captions end at different lengths: 36 % of the positions in the shipped model's SCST batches
    are padding)."""
    m, t = sequences.shape
    inputs = torch.cat([sequences.new_full((m, 1), start_id), sequences], dim=1)  # the last is never read
    real = sequences != pad_id
    logits = decoder.logits(decoder.hidden_states(features, inputs)[real]).float()  # [tokens, V]
    position = torch.arange(t, device=sequences.device).expand(m, t)[real]
    banned = bans.mask(inputs[:, :-1][real], position, logits.size(-1))
    log_probs = logits.masked_fill(banned, NEG_INF).log_softmax(-1)
    picked = log_probs.gather(1, sequences[real].unsqueeze(1)).squeeze(1)
    return picked.new_zeros(m, t).masked_scatter(real, picked)


@torch.inference_mode()
def teacher_forced_steps(decoder: CaptionDecoder, features: torch.Tensor, ids: Sequence[int],
                         start_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed <start> and then `ids` (a caption's word ids, and <end> if it finished) through the same
    `decoder.step` decoding uses, for each image vector [N, D]. Returns the log-softmax of every step
    [N, T, V] (step t predicts ids[t]) and the top layer's cell activation while predicting it [N, T, H]:
    tanh(c_t) for an LSTM, h_t for a GRU or tanh RNN."""
    state = decoder.start(features)
    token = torch.full((features.size(0),), start_id, dtype=torch.long, device=features.device)
    log_probs, activations = [], []
    for word in ids:
        logits, state = decoder.step(token, state)
        log_probs.append(F.log_softmax(logits.float(), dim=-1))
        activations.append(traced_cell(state["h"], state.get("c")).float())
        token = torch.full_like(token, word)
    return torch.stack(log_probs, 1), torch.stack(activations, 1)


@torch.inference_mode()
def beam_search(
    decoder: CaptionDecoder,
    features: torch.Tensor,
    start_id: int,
    end_id: int,
    beam_size: int = DEFAULT.beam_size,
    n_best: int = DEFAULT.n_best,
    max_length: int = DEFAULT.max_length,
    min_length: int = DEFAULT.min_length,
    length_penalty: float = DEFAULT.length_penalty,
    no_repeat_ngram_size: int = DEFAULT.no_repeat_ngram_size,
    suppress_ids: Sequence[int] = (),
    no_end_after: Sequence[int] = (),
    word_scores: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Beam search over a batch of images; returns the `n_best` hypotheses of each, best first.

    Each image keeps `beam_size` live (unfinished) hypotheses plus a pool of the best finished ones,
    ranked by log_prob / length**length_penalty (length counts <end>). A hypothesis joins the pool when
    its <end> ranks among the image's `beam_size` best candidates; once there it is never pushed out by
    live ones, and an image stops once no live hypothesis can beat its n-th best finished one (a bound that
    holds for length_penalty >= 0, so negative penalties are refused).
    If fewer than `n_best` hypotheses finish within `max_length` words, the best unfinished ones fill in, so
    every image always gets an answer. `word_scores` [N, V] are added to each image's word log-probabilities
    (as in `sequential_decode`): the search is exact over the scores they make, and never uses a word they
    set to -inf.
    """
    _check(max_length, min_length)
    if not 1 <= n_best <= beam_size:
        raise ValueError("n_best must be between 1 and beam_size")
    if not length_penalty >= 0:  # the early stop below assumes longer never scores better than its prefix
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
    b, k, device = features.size(0), beam_size, features.device
    bans = WordBans(end_id, tuple(suppress_ids), tuple(no_end_after), min_length)
    state = decoder.reorder(decoder.start(features), torch.arange(b, device=device).repeat_interleave(k))
    live_score = torch.full((b, k), NEG_INF, device=device)
    live_score[:, 0] = 0.0  # one real start hypothesis per image; the copies would only duplicate it
    live_tokens = torch.zeros((b * k, 0), dtype=torch.long, device=device)
    tokens = torch.full((b * k,), start_id, dtype=torch.long, device=device)
    fin_norm = torch.full((b, k), NEG_INF, device=device)
    fin_raw = torch.full((b, k), NEG_INF, device=device)
    fin_tokens = torch.full((b, k, max_length), end_id, dtype=torch.long, device=device)
    offsets = (torch.arange(b, device=device) * k).unsqueeze(1)
    row_scores = word_scores.repeat_interleave(k, dim=0) if word_scores is not None else None  # rows stay per image

    for t in range(max_length):
        logits, state = decoder.step(tokens, state)
        vocab = logits.size(1)
        lp = F.log_softmax(logits.float(), dim=-1).masked_fill_(bans.mask(tokens, t, vocab), NEG_INF)
        if row_scores is not None:
            lp.add_(row_scores)
        _ban_repeated_ngrams(lp, live_tokens, no_repeat_ngram_size)
        if t >= min_length:
            # A hypothesis may end here (with t words) if <end> ranks among the image's k best candidates,
            # as in the usual formulation; it is what makes beam_size=1 exactly greedy decoding.
            kth = (live_score.view(-1, 1) + lp).view(b, k * vocab).topk(k, dim=1).values[:, -1:]
            end_raw = live_score + lp[:, end_id].view(b, k)
            end_raw = end_raw.masked_fill(end_raw < kth, NEG_INF)
            end_norm = end_raw / float(t + 1) ** length_penalty
            padded = F.pad(live_tokens, (0, max_length - t), value=end_id).view(b, k, max_length)
            fin_norm, pick = torch.cat([fin_norm, end_norm], 1).topk(k, dim=1)
            fin_raw = torch.cat([fin_raw, end_raw], 1).gather(1, pick)
            fin_tokens = torch.cat([fin_tokens, padded], 1).gather(1, pick.unsqueeze(2).expand(-1, -1, max_length))
        lp[:, end_id] = NEG_INF
        total = (live_score.view(-1, 1) + lp).view(b, k * vocab)
        live_score, flat = total.topk(k, dim=1)
        rows = (offsets + torch.div(flat, vocab, rounding_mode="floor")).view(-1)
        words = (flat % vocab).view(-1)
        live_tokens = torch.cat([live_tokens.index_select(0, rows), words.unsqueeze(1)], dim=1)
        state = decoder.reorder(state, rows)
        tokens = words
        # Scores only fall as words are added, so a live hypothesis ends no better than this bound.
        bound = live_score.max(dim=1).values / float(max_length) ** length_penalty
        if bool((fin_norm[:, n_best - 1] >= bound).all()):
            break

    results: list[list[Hypothesis]] = []
    live_norm = live_score / float(live_tokens.size(1)) ** length_penalty
    for i in range(b):
        hyps = []
        for j in range(k):
            if fin_norm[i, j] > NEG_INF and len(hyps) < n_best:
                row = fin_tokens[i, j].tolist()
                hyps.append(Hypothesis(row[: row.index(end_id)] if end_id in row else row, float(fin_raw[i, j]), True))
        for j in live_norm[i].argsort(descending=True).tolist():
            if len(hyps) >= n_best:
                break
            if live_score[i, j] > NEG_INF:
                hyps.append(Hypothesis(live_tokens[i * k + j].tolist(), float(live_score[i, j]), False))
        results.append(hyps)
    return results
