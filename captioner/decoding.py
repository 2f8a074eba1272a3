"""Batched decoding from <start> until <end>: greedy, sampling (temperature, top-k, top-p) and beam search.

All three run a whole batch of images at once through `CaptionDecoder.step`, and each image's result is
what it would get alone: beam bookkeeping is per image, and sampling draws each image's noise from its
own seeded generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .decoder import CaptionDecoder
from .rnn import traced_cell
from .options import DecodeOptions
from .softmax import AdaptiveSoftmax, sample_categorical
from .vocab import Vocabulary

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
    rows, starts = (grams[:, :, : n - 1] == prefix.unsqueeze(1)).all(dim=2).nonzero(as_tuple=True)
    log_probs[rows, grams[rows, starts, n - 1]] = NEG_INF


@dataclass(frozen=True)
class WordBans:
    """What decoding may not choose, as one rule for greedy, sampling, beam search and SCST's scorer: the
    `suppress` ids ever; <end> before `min_length` words, or right after a `no_end_after` word (e.g. "a",
    "in", "the": CIDEr-trained models otherwise stop mid-phrase, "a girl is playing in the")."""

    end_id: int
    suppress: tuple[int, ...] = ()
    no_end_after: tuple[int, ...] = ()
    min_length: int = DEFAULT.min_length

    @classmethod
    def for_vocab(cls, vocab: Vocabulary, options: DecodeOptions) -> "WordBans":
        """The bans `options` make for this vocabulary: <pad>, <start> and <unk> ever (a caption with "<unk>"
        in it helps no one), <end> too early or after a `no_end_after` word. Decoding, explain and SCST use it."""
        return cls(vocab.end_id, (vocab.pad_id, vocab.start_id, vocab.unk_id),
                   tuple(vocab.stoi[w] for w in options.no_end_after if w in vocab.stoi), options.min_length)

    @lru_cache(maxsize=16)  # keyed by value: equal bans share their tables
    def _tables(self, vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Built once per vocabulary size and device, since decoding reads them at every step: the words banned
        ever [V], and per word read whether <end> may not follow it [V]."""
        ever = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        ever[list(self.suppress)] = True
        no_end = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        no_end[list(self.no_end_after)] = True
        return ever, no_end

    def step_bias(self, vocab_size: int, device: torch.device, word_scores: torch.Tensor | None = None) -> torch.Tensor:
        """What decoding adds to the log-probabilities at every step: -inf at the words banned ever, plus
        `word_scores` [N, V] when given ([V] without)."""
        ever = self._tables(vocab_size, device)[0]
        bias = torch.zeros(vocab_size, device=device).masked_fill_(ever, NEG_INF)
        return bias if word_scores is None else word_scores + bias

    def ban_end(self, log_probs: torch.Tensor, previous: torch.Tensor, position: int) -> None:
        """Set, in place, <end>'s score [N, V] to -inf where it may not come after `previous` [N] at `position`."""
        if position < self.min_length:
            log_probs[:, self.end_id] = NEG_INF
        elif self.no_end_after:
            log_probs[:, self.end_id].masked_fill_(self._tables(log_probs.size(1), previous.device)[1][previous], NEG_INF)

    def mask(self, previous: torch.Tensor, position: int | torch.Tensor, vocab_size: int,
             width: int | None = None) -> torch.Tensor:
        """Banned words [..., width] among the first `width` ids (default: all V) given the token just read,
        `previous` [...], at word `position` (0 for the first word; an int, or a tensor broadcastable to
        `previous`). An adaptive softmax can only ban words of its head: a narrower width must hold them all."""
        width = vocab_size if width is None else width
        if max(self.suppress + (self.end_id,)) >= width:
            banned = sorted(self.suppress + (self.end_id,))
            raise ValueError(f"banned word ids {banned} do not all lie below {width}")
        ever, no_end = self._tables(vocab_size, previous.device)
        banned = ever[:width].expand(*previous.shape, width).clone()
        banned[..., self.end_id] = no_end[previous] | (torch.as_tensor(position, device=previous.device) < self.min_length)
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


def _words(row: list[int], end_id: int) -> list[int]:
    """A decoded row's words: everything before its first <end>."""
    return row[: row.index(end_id)] if end_id in row else row


def _step_log_probs(log_probs: torch.Tensor, previous: torch.Tensor, t: int, bans: WordBans, bias: torch.Tensor,
                    history: torch.Tensor, no_repeat_ngram_size: int) -> torch.Tensor:
    """Each row's next-word scores [N, V], in place of the model's `log_probs` (`CaptionDecoder.step_log_probs`):
    plus `bias` (`WordBans.step_bias`: the words banned ever at -inf, and the row's word scores), <end> at -inf
    where banned, and no word that would repeat an n-gram of `history` [N, t]. As few operations as possible:
    this runs at every step."""
    lp = log_probs.add_(bias)
    bans.ban_end(lp, previous, t)
    _ban_repeated_ngrams(lp, history, no_repeat_ngram_size)
    return lp


def search(decoder: CaptionDecoder, features: torch.Tensor, start_id: int, bans: WordBans,
           options: DecodeOptions = DEFAULT, *, seeds: Sequence[int | None] | int | None = None,
           word_scores: torch.Tensor | None = None) -> list[list[Hypothesis]]:
    """The decoding `options.method` names, per image its hypotheses best first: beam search, or greedy
    and sampled decoding (one each; beam 1 is greedy decoding exactly)."""
    if options.method == "beam" and options.beam_size > 1:
        return beam_search(decoder, features, start_id, bans, options, word_scores=word_scores)
    return [[h] for h in sequential_decode(decoder, features, start_id, bans, options, seeds=seeds,
                                           word_scores=word_scores)]


@torch.inference_mode()
def sequential_decode(decoder: CaptionDecoder, features: torch.Tensor, start_id: int, bans: WordBans,
                      options: DecodeOptions = DEFAULT, *,
                      seeds: Sequence[int | None] | int | None | torch.Generator = None,
                      word_scores: torch.Tensor | None = None) -> list[Hypothesis]:
    """Greedy (argmax) or, with method "sample", sampled decoding: one hypothesis per image.

    `word_scores` [N, V] (grounded decoding: `Grounding.word_scores`) are added to each image's word
    log-probabilities at every step (-inf: the image may not use the word), on top of the `bans` every
    image shares; a hypothesis's log_prob then includes them.

    Sampling draws from softmax(logits / T) over the words not banned by inverse transform
    (`sample_categorical`): one uniform number per image and step. With per-image `seeds` each image's
    numbers come from its own generator, so a seeded image gets the same caption in any batch; one
    `torch.Generator` instead draws the whole batch's numbers at once (training, where only reproducibility
    of the whole run matters). A row that has produced <end> leaves the batch, so later steps cost only
    what is still being written. From an adaptive softmax, when nothing but the bans reshapes the
    distribution (SCST's samples), a draw computes only the cluster it lands in: the same word for the same
    number (`AdaptiveSoftmax.sample`).
    """
    _check(options.max_length, bans.min_length)
    sample = options.method == "sample"
    if sample and not options.temperature > 0:
        raise ValueError("temperature must be > 0")
    n, device, end_id = features.size(0), features.device, bans.end_id
    uniforms = _uniforms(n, seeds, device) if sample else None
    by_cluster = sample and _draws_by_cluster(decoder, options, word_scores)
    state = decoder.start(features)
    bias = bans.step_bias(decoder.cfg.vocab_size, device, word_scores)
    alive = torch.arange(n, device=device)  # rows still writing, in the order of `state`
    tokens = torch.full((n,), start_id, dtype=torch.long, device=device)
    out = torch.full((n, options.max_length), end_id, dtype=torch.long, device=device)
    log_prob = torch.zeros(n, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for t in range(options.max_length):
        if by_cluster:
            hidden, state = decoder.advance(tokens, state)
            banned = bans.mask(tokens, t, decoder.cfg.vocab_size, decoder.ban_width)
            choice, chosen = decoder.out.sample(hidden, banned, uniforms(alive))
        else:
            log_probs, state = decoder.step_log_probs(tokens, state)
            history = out[alive, :t] if t >= options.no_repeat_ngram_size > 0 else out[:0, :0]  # only what is read
            lp = _step_log_probs(log_probs, tokens, t, bans, bias[alive] if word_scores is not None else bias, history,
                                 options.no_repeat_ngram_size)
            choice = _choose(lp, options, uniforms(alive) if uniforms is not None else None)
            chosen = lp.gather(1, choice[:, None])[:, 0]
        log_prob[alive] = log_prob[alive] + chosen
        out[alive, t] = choice
        ended = choice == end_id
        done[alive] = ended
        if bool(ended.any()):
            keep = (~ended).nonzero()[:, 0]
            if len(keep) == 0:
                break
            alive, choice, state = alive[keep], choice[keep], decoder.reorder(state, keep)
        tokens = choice
    return [Hypothesis(_words(row, end_id), lp_sum, fin)
            for row, lp_sum, fin in zip(out.tolist(), log_prob.tolist(), done.tolist())]


def _choose(log_probs: torch.Tensor, options: DecodeOptions, uniform: torch.Tensor | None) -> torch.Tensor:
    """Each row's next word [N] from its scores [N, V]: the best, or with `uniform` [N, 1] one drawn under the
    options' temperature, top-k and top-p."""
    if uniform is None:
        return log_probs.argmax(dim=-1)
    scores = filter_top_k_top_p(log_probs / options.temperature, options.top_k, options.top_p)
    return sample_categorical(scores, uniform)


def _uniforms(n: int, seeds: Sequence[int | None] | int | None | torch.Generator, device: torch.device):
    """uniforms(alive [rows]) -> one uniform number per row [rows, 1], from each image's generator (or one
    shared `torch.Generator`): what sampling turns into words."""
    shared = seeds if isinstance(seeds, torch.Generator) else None
    gens = _generators(n, seeds, device) if shared is None else []

    def uniforms(alive: torch.Tensor) -> torch.Tensor:
        if shared is not None:
            return torch.rand(len(alive), 1, generator=shared, device=device)
        return torch.stack([torch.rand(1, generator=gens[i], device=device) for i in alive.tolist()])

    return uniforms


def _draws_by_cluster(decoder: CaptionDecoder, options: DecodeOptions, word_scores: torch.Tensor | None) -> bool:
    """Whether sampling can draw from an adaptive softmax cluster by cluster (`AdaptiveSoftmax.sample`),
    computing only the clusters it lands in: when nothing but the bans of its head words reshapes the
    distribution (temperature 1, no top-k or top-p, no word scores, no n-gram blocking). SCST samples so."""
    return (isinstance(decoder.out, AdaptiveSoftmax) and options.temperature == 1.0 and options.top_k == 0
            and options.top_p >= 1.0 and word_scores is None and options.no_repeat_ngram_size == 0)


def sequence_log_probs(decoder: CaptionDecoder, features: torch.Tensor, sequences: torch.Tensor, start_id: int,
                       bans: WordBans, pad_id: int = 0) -> torch.Tensor:
    """Teacher-forced log-probability [M, T] of each token of `sequences` [M, T] (word ids, then <end> when
    finished, then `pad_id`), under the distribution decoding draws from: banned words removed, the rest
    renormalised. 0 at padding. Differentiable (SCST's policy gradient flows through it); one pass of the
    fused RNN instead of T autograd steps, and the output layer and softmax only where there is a token
    (sampled captions end at different lengths, so much of a batch is padding)."""
    m, t = sequences.shape
    inputs = torch.cat([sequences.new_full((m, 1), start_id), sequences], dim=1)  # the last is never read
    real = sequences != pad_id
    hidden = decoder.hidden_states(features, inputs)[real]
    position = torch.arange(t, device=sequences.device).expand(m, t)[real]
    banned = bans.mask(inputs[:, :-1][real], position, decoder.cfg.vocab_size, decoder.ban_width)
    picked = decoder.token_log_probs(hidden, sequences[real], banned)
    return picked.new_zeros(m, t).masked_scatter(real, picked)


@torch.inference_mode()
def teacher_forced_steps(decoder: CaptionDecoder, features: torch.Tensor, ids: Sequence[int],
                         start_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed <start> and then `ids` (a caption's word ids, and <end> if it finished) through the same
    `decoder.step_log_probs` decoding uses, for each image vector [N, D]. Returns the log-probabilities of every step
    [N, T, V] (step t predicts ids[t]) and the top layer's cell activation while predicting it [N, T, H]:
    tanh(c_t) for an LSTM, h_t for a GRU or tanh RNN."""
    state = decoder.start(features)
    token = torch.full((features.size(0),), start_id, dtype=torch.long, device=features.device)
    log_probs, activations = [], []
    for word in ids:
        step_log_probs, state = decoder.step_log_probs(token, state)
        log_probs.append(step_log_probs)
        activations.append(traced_cell(state["h"], state.get("c")).float())
        token = torch.full_like(token, word)
    return torch.stack(log_probs, 1), torch.stack(activations, 1)


class _Beams:
    """Beam search's state for the b images still searching x k hypotheses: the live (unfinished) hypotheses,
    their scores and word ids [b*k, t], and each image's pool of the k best finished ones. An image whose
    search has settled leaves (`retire`) with its answer, so later steps compute only the images still open."""

    def __init__(self, b: int, k: int, max_length: int, end_id: int, device: torch.device):
        self.b, self.k, self.max_length, self.end_id = b, k, max_length, end_id
        self.live_score = torch.full((b, k), NEG_INF, device=device)
        self.live_score[:, 0] = 0.0  # one real start hypothesis per image; the copies would only duplicate it
        self.live_tokens = torch.zeros((b * k, 0), dtype=torch.long, device=device)
        self.fin_norm = torch.full((b, k), NEG_INF, device=device)
        self.fin_raw = torch.full((b, k), NEG_INF, device=device)
        self.fin_tokens = torch.full((b, k, max_length), end_id, dtype=torch.long, device=device)
        self.offsets = (torch.arange(b, device=device) * k).unsqueeze(1)
        self.images = list(range(b))  # the batch index of each image still searching, in row order
        self.answers: dict[int, list[Hypothesis]] = {}  # batch index -> hypotheses, of the images that left

    def advance(self, lp: torch.Tensor, t: int, length_penalty: float, may_end: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One step over each image's k x V candidates (live score + next-word score `lp` [b*k, V]).

        Where `may_end`, a hypothesis ends with t words if <end> ranks among its image's k best candidates (the
        usual formulation; it makes beam_size=1 exactly greedy decoding), and the pool keeps the k best finished.
        The k best candidates that do not end become the live hypotheses; returns the rows [b*k] they extend (to
        reorder the decoder's state by) and their new words [b*k]. At most k candidates are <end>s, so those k
        are among the 2k best: one search over the candidates serves both."""
        b, k, vocab = self.b, self.k, lp.size(1)
        top, flat = (self.live_score.view(-1, 1) + lp).view(b, -1).topk(min(2 * k, k * vocab), dim=1)
        if may_end:
            self._finish(self.live_score + lp[:, self.end_id].view(b, k), top[:, k - 1 : k], t, length_penalty)
        self.live_score, pick = top.masked_fill(flat % vocab == self.end_id, NEG_INF).topk(k, dim=1)
        flat = flat.gather(1, pick)
        rows = (self.offsets + torch.div(flat, vocab, rounding_mode="floor")).view(-1)
        words = (flat % vocab).view(-1)
        self.live_tokens = torch.cat([self.live_tokens.index_select(0, rows), words.unsqueeze(1)], dim=1)
        return rows, words

    def _finish(self, end_raw: torch.Tensor, kth: torch.Tensor, t: int, length_penalty: float) -> None:
        """Pool the hypotheses [b, k] whose <end> (score `end_raw`) is at least their image's k-th best candidate."""
        end_raw = end_raw.masked_fill(end_raw < kth, NEG_INF)
        if not bool((end_raw > NEG_INF).any()):
            return  # nothing ends at this step: the pool stays as it is
        b, k, width = self.b, self.k, self.max_length
        end_norm = end_raw / float(t + 1) ** length_penalty
        padded = F.pad(self.live_tokens, (0, width - t), value=self.end_id).view(b, k, width)
        self.fin_norm, pick = torch.cat([self.fin_norm, end_norm], 1).topk(k, dim=1)
        self.fin_raw = torch.cat([self.fin_raw, end_raw], 1).gather(1, pick)
        self.fin_tokens = torch.cat([self.fin_tokens, padded], 1).gather(1, pick.unsqueeze(2).expand(-1, -1, width))

    def settled(self, n_best: int, length_penalty: float) -> torch.Tensor:
        """Per image still searching [b], whether its answer is decided: scores only fall as words are added, so
        no live hypothesis can end better than this bound."""
        bound = self.live_score.max(dim=1).values / float(self.max_length) ** length_penalty
        return self.fin_norm[:, n_best - 1] >= bound

    def retire(self, settled: torch.Tensor, n_best: int, length_penalty: float) -> torch.Tensor:
        """Take the `settled` images [b] out with their answers; returns the rows [b'*k] of the images that stay,
        to select their decoder state and per-row inputs by."""
        keep = (~settled).nonzero()[:, 0]
        for i in settled.nonzero()[:, 0].tolist():
            self.answers[self.images[i]] = self._hypotheses(i, n_best, length_penalty)
        self.images = [self.images[i] for i in keep.tolist()]
        rows = (keep.unsqueeze(1) * self.k + torch.arange(self.k, device=keep.device)).view(-1)
        self.b = len(self.images)
        self.live_score, self.live_tokens = self.live_score[keep], self.live_tokens[rows]
        self.fin_norm, self.fin_raw, self.fin_tokens = self.fin_norm[keep], self.fin_raw[keep], self.fin_tokens[keep]
        self.offsets = self.offsets[: self.b]
        return rows

    def best(self, n_best: int, length_penalty: float) -> list[list[Hypothesis]]:
        """Each image's n_best finished hypotheses, topped up with its best live ones, in batch order."""
        for i, image in enumerate(self.images):
            self.answers[image] = self._hypotheses(i, n_best, length_penalty)
        return [self.answers[image] for image in sorted(self.answers)]

    def _hypotheses(self, i: int, n_best: int, length_penalty: float) -> list[Hypothesis]:
        """Image i's (a row of the images still searching) n_best finished hypotheses, topped up with its best
        live ones."""
        hyps = [Hypothesis(_words(self.fin_tokens[i, j].tolist(), self.end_id), float(self.fin_raw[i, j]), True)
                for j in range(self.k) if self.fin_norm[i, j] > NEG_INF][:n_best]
        live_norm = self.live_score[i] / float(self.live_tokens.size(1)) ** length_penalty
        for j in live_norm.argsort(descending=True).tolist():
            if len(hyps) >= n_best:
                break
            if self.live_score[i, j] > NEG_INF:
                hyps.append(Hypothesis(self.live_tokens[i * self.k + j].tolist(), float(self.live_score[i, j]), False))
        return hyps


@torch.inference_mode()
def beam_search(decoder: CaptionDecoder, features: torch.Tensor, start_id: int, bans: WordBans,
                options: DecodeOptions = DEFAULT, *, word_scores: torch.Tensor | None = None) -> list[list[Hypothesis]]:
    """Beam search over a batch of images; returns the `options.n_best` hypotheses of each, best first.

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
    _check(options.max_length, bans.min_length)
    k, n_best, penalty = options.beam_size, options.n_best, options.length_penalty
    if not 1 <= n_best <= k:
        raise ValueError("n_best must be between 1 and beam_size")
    if not penalty >= 0:  # the early stop assumes longer never scores better than its prefix
        raise ValueError(f"length_penalty must be >= 0, got {penalty}")
    b, device = features.size(0), features.device
    beams = _Beams(b, k, options.max_length, bans.end_id, device)
    state = decoder.reorder(decoder.start(features), torch.arange(b, device=device).repeat_interleave(k))
    tokens = torch.full((b * k,), start_id, dtype=torch.long, device=device)
    bias = bans.step_bias(decoder.cfg.vocab_size, device, word_scores)
    if word_scores is not None:
        bias = bias.repeat_interleave(k, dim=0)  # rows stay per image
    for t in range(options.max_length):
        log_probs, state = decoder.step_log_probs(tokens, state)
        lp = _step_log_probs(log_probs, tokens, t, bans, bias, beams.live_tokens, options.no_repeat_ngram_size)
        rows, tokens = beams.advance(lp, t, penalty, may_end=t >= bans.min_length)
        settled = beams.settled(n_best, penalty)
        if bool(settled.all()):
            break
        if beams.b > 1 and bool(settled.any()):  # the images still searching go on alone
            kept = beams.retire(settled, n_best, penalty)
            rows, tokens = rows[kept], tokens[kept]
            bias = bias[kept] if bias.dim() == 2 else bias
        state = decoder.reorder(state, rows)
    return beams.best(n_best, penalty)
