"""Greedy, sampling and beam search: correctness against brute force, batching invariance, termination."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from captioner.decoding import WordBans, _ban_repeated_ngrams, beam_search, sample_categorical, sequential_decode
from captioner.options import DecodeOptions

from .conftest import tiny_decoder

START, END = 1, 2


def bans(min_length: int = 1, suppress=(), no_end_after=()) -> WordBans:
    return WordBans(END, tuple(suppress), tuple(no_end_after), min_length)


def feats(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1280, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sequence_log_prob(dec, v: torch.Tensor, words: list[int], finished: bool) -> float:
    state = dec.start(v[None])
    tok, total = START, 0.0
    for w in words + ([END] if finished else []):
        logits, state = dec.step(torch.tensor([tok]), state)
        total += F.log_softmax(logits, -1)[0, w].item()
        tok = w
    return total


def test_beam_of_one_equals_greedy():
    dec = tiny_decoder(30)
    v = feats(6)
    greedy = sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=12))
    beam = beam_search(dec, v, START, bans(), DecodeOptions(beam_size=1, max_length=12))
    for g, b in zip(greedy, beam):
        assert g.tokens == b[0].tokens
        assert math.isclose(g.log_prob, b[0].log_prob, rel_tol=1e-5, abs_tol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("length_penalty,min_length", [(0.0, 0), (0.7, 1), (2.0, 1)])
def test_wide_beam_finds_the_exhaustive_n_best(cell, length_penalty, min_length):
    """4 words + <end>, max_length 3 (so a finished caption has at most 2 words): a beam of 100 is wider than
    every step's candidate set (at most 16 live x 5), so it keeps everything and its 3 best must be the
    exhaustive 3 best by log p / (words + 1) ** length_penalty, with the same log-probabilities."""
    dec = tiny_decoder(4 + 4, cell=cell, seed=3)
    with torch.no_grad():
        dec.out.bias[0] = dec.out.bias[1] = dec.out.bias[3] = -1e4  # <pad>, <start>, <unk> never chosen
    words, max_len = [4, 5, 6, 7], 3
    for i in range(3):
        v = feats(1, seed=i)
        finished = [list(seq) for n in range(min_length, max_len) for seq in itertools.product(words, repeat=n)]
        scored = [(sequence_log_prob(dec, v[0], seq, True), seq) for seq in finished]
        best = sorted(scored, key=lambda x: x[0] / (len(x[1]) + 1) ** length_penalty, reverse=True)[:3]
        options = DecodeOptions(beam_size=100, n_best=3, max_length=max_len, length_penalty=length_penalty)
        hyps = beam_search(dec, v, START, bans(min_length=min_length), options)[0]
        assert all(h.finished for h in hyps)
        assert [h.tokens for h in hyps] == [seq for _, seq in best]
        for h, (lp, _) in zip(hyps, best):
            assert math.isclose(h.log_prob, lp, rel_tol=1e-4, abs_tol=1e-5)


def test_negative_length_penalty_is_refused():
    """The early stop assumes a longer caption never scores above its prefix, true only for penalty >= 0."""
    with pytest.raises(ValueError, match="length_penalty must be >= 0"):
        beam_search(tiny_decoder(10), feats(1), START, bans(), DecodeOptions(beam_size=3, length_penalty=-0.5))


def test_batched_equals_one_at_a_time():
    dec = tiny_decoder(30, seed=1)
    v = feats(5, seed=1)
    batched = beam_search(dec, v, START, bans(), DecodeOptions(beam_size=4, n_best=3, max_length=10))
    greedy_b = sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=10))
    sample_b = sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=10, method="sample"), seeds=[1, 2, 3, 4, 5])
    for i in range(5):
        alone = beam_search(dec, v[i : i + 1], START, bans(), DecodeOptions(beam_size=4, n_best=3, max_length=10))[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert sequential_decode(dec, v[i : i + 1], START, bans(), DecodeOptions(max_length=10))[0].tokens == greedy_b[i].tokens
        one = sequential_decode(dec, v[i : i + 1], START, bans(), DecodeOptions(max_length=10, method="sample"), seeds=[i + 1])[0]
        assert one.tokens == sample_b[i].tokens


def test_settled_images_leave_the_batch_with_the_answer_they_get_alone():
    """An image whose beam search has settled leaves the batch, so later steps decode fewer rows; each image's
    n-best and scores (with its own word scores and n-gram bans) are still what it gets alone."""
    options = DecodeOptions(beam_size=3, n_best=2, max_length=12, length_penalty=1.0, no_repeat_ngram_size=2)
    retired = 0
    for seed in range(4):
        dec = tiny_decoder(30, seed=seed)
        with torch.no_grad():
            dec.out.bias[END] = 3.0  # captions end early, and at different steps for different images
        v = feats(6, seed=seed)
        scores = torch.zeros(6, 30)
        scores[:, 5] = -math.inf
        scores[torch.arange(6), torch.arange(6) + 6] = -1.0
        rows, step = [], dec.step_log_probs
        dec.step_log_probs = lambda tokens, state: (rows.append(len(tokens)), step(tokens, state))[1]
        batched = beam_search(dec, v, START, bans(), options, word_scores=scores)
        retired += rows[-1] < rows[0]
        for i in range(6):
            alone = beam_search(dec, v[i : i + 1], START, bans(), options, word_scores=scores[i : i + 1])[0]
            assert [(h.tokens, h.finished) for h in alone] == [(h.tokens, h.finished) for h in batched[i]]
            assert [h.log_prob for h in alone] == pytest.approx([h.log_prob for h in batched[i]], abs=1e-5)
    assert retired >= 2


def test_n_best_sorted_distinct_and_scored_correctly():
    dec = tiny_decoder(30, seed=2)
    v = feats(3, seed=2)
    for per_image, row in zip(beam_search(dec, v, START, bans(), DecodeOptions(beam_size=5, n_best=5, max_length=8)), v):
        assert len(per_image) == 5
        scores = [h.log_prob for h in per_image if h.finished]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in per_image}) == 5
        for h in per_image:
            assert math.isclose(h.log_prob, sequence_log_prob(dec, row, h.tokens, h.finished), rel_tol=1e-4, abs_tol=1e-4)


def test_never_ending_model_still_answers():
    dec = tiny_decoder(12)
    with torch.no_grad():
        dec.out.bias[END] = float("-inf")  # <end> is never produced
    v = feats(2)
    for hyps in beam_search(dec, v, START, bans(), DecodeOptions(beam_size=3, n_best=2, max_length=7)):
        assert len(hyps) == 2 and all(len(h.tokens) == 7 and not h.finished for h in hyps)
    for h in sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=7)):
        assert len(h.tokens) == 7 and not h.finished


def test_min_length_and_length_penalty():
    dec = tiny_decoder(12)
    with torch.no_grad():
        dec.out.bias[END] = 8.0  # the model wants to stop at once
    v = feats(2)
    assert all(h.tokens == [] for h in sequential_decode(dec, v, START, bans(min_length=0), DecodeOptions(max_length=6)))
    for h in sequential_decode(dec, v, START, bans(min_length=3), DecodeOptions(max_length=6)):
        assert len(h.tokens) >= 3
    for hyps in beam_search(dec, v, START, bans(min_length=2), DecodeOptions(beam_size=3, max_length=6)):
        assert len(hyps[0].tokens) >= 2
    # By default every method says at least one word, however much the model wants to stop.
    defaults = sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=6))
    defaults += sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=6, method="sample"), seeds=1)
    defaults += [h for hyps in beam_search(dec, v, START, bans(), DecodeOptions(beam_size=3, n_best=3, max_length=6)) for h in hyps]
    assert all(len(h.tokens) >= 1 for h in defaults), [h.tokens for h in defaults]
    short = beam_search(dec, v, START, bans(min_length=1), DecodeOptions(beam_size=4, max_length=6, length_penalty=0.0))
    long = beam_search(dec, v, START, bans(min_length=1), DecodeOptions(beam_size=4, max_length=6, length_penalty=3.0))
    assert sum(len(h[0].tokens) for h in long) >= sum(len(h[0].tokens) for h in short)


def test_no_repeat_ngram_blocks_repeats():
    lp = torch.zeros(1, 10)
    _ban_repeated_ngrams(lp, torch.tensor([[4, 5, 6, 4]]), 2)  # "4 5" seen: 5 may not follow 4 again
    assert lp[0, 5] == float("-inf") and torch.isfinite(lp[0, [4, 6, 7]]).all()
    dec = tiny_decoder(8)
    v = feats(3)
    for n in (1, 2):
        for hyps in beam_search(dec, v, START, bans(), DecodeOptions(beam_size=3, max_length=6, no_repeat_ngram_size=n)):
            grams = [tuple(hyps[0].tokens[i : i + n]) for i in range(len(hyps[0].tokens) - n + 1)]
            assert len(grams) == len(set(grams))


def test_sampling_is_seedable_and_temperature_works():
    dec = tiny_decoder(30)
    v = feats(4)
    a = sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=10, method="sample"), seeds=7)
    b = sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=10, method="sample"), seeds=7)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    greedy = [h.tokens for h in sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=10))]
    cold = sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=10, method="sample", temperature=1e-4), seeds=3)
    assert [h.tokens for h in cold] == greedy
    top1 = sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=10, method="sample", top_k=1), seeds=4)
    assert [h.tokens for h in top1] == greedy
    tiny_p = sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=10, method="sample", top_p=1e-6), seeds=5)
    assert [h.tokens for h in tiny_p] == greedy
    hot = [tuple(h.tokens) for s in range(8) for h in sequential_decode(dec, v[:1], START, bans(), DecodeOptions(max_length=10, method="sample", temperature=3.0), seeds=s)]
    assert len(set(hot)) > 1
    with pytest.raises(ValueError):
        sequential_decode(dec, v, START, bans(), DecodeOptions(method="sample", temperature=0.0))


def test_inverse_transform_sampling_draws_each_word_with_its_softmax_probability():
    """20,000 draws per row: every word's frequency within 5 standard errors of softmax(scores), and a
    banned word (-inf) never drawn, even by the uniform numbers at the two ends of [0, 1)."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 12, generator=gen) * 2
    scores[:, 5] = float("-inf")
    draws = 20_000
    choice = sample_categorical(scores.repeat_interleave(draws, 0), torch.rand(3 * draws, 1, generator=gen))
    freq = F.one_hot(choice.view(3, draws), 12).float().mean(1)
    p = scores.softmax(-1)
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / draws).sqrt() + 1e-9).all(), (freq, p)
    assert not (choice == 5).any()
    edges = sample_categorical(scores[:, [4, 5, 6, 7, 8, 9, 10, 11, 5]], torch.tensor([[0.0], [1 - 2**-24], [0.5]]))
    assert (edges != 1).all() and (edges != 8).all()  # columns 1 and 8 are the banned word


def test_sampled_captions_carry_their_own_log_probability():
    """Rows leave the batch when they end, at different steps: each hypothesis must still get its own words
    and the sum of its own log-probabilities."""
    dec = tiny_decoder(12, seed=5)
    with torch.no_grad():
        dec.out.bias[END] = 1.5  # captions of mixed lengths
    v = feats(8, seed=5)
    hyps = sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=9, method="sample"), seeds=list(range(8)))
    assert len({len(h.tokens) for h in hyps}) > 2 and any(h.finished for h in hyps)
    for h, row in zip(hyps, v):
        assert math.isclose(h.log_prob, sequence_log_prob(dec, row, h.tokens, h.finished), rel_tol=1e-4, abs_tol=1e-4)


def test_argument_validation():
    dec = tiny_decoder(10)
    with pytest.raises(ValueError):
        beam_search(dec, feats(1), START, bans(), DecodeOptions(beam_size=2, n_best=3))
    with pytest.raises(ValueError):
        sequential_decode(dec, feats(1), START, bans(), DecodeOptions(max_length=0))


def test_suppressed_words_are_never_produced():
    dec = tiny_decoder(12)
    with torch.no_grad():
        dec.out.bias[3] = 50.0  # the model loves word 3 (<unk> in a real vocabulary)
    v = feats(3)
    assert all(h.tokens and set(h.tokens) == {3} for h in sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=4)))
    for h in sequential_decode(dec, v, START, bans(suppress=(0, 1, 3)), DecodeOptions(max_length=4)):
        assert 3 not in h.tokens
    for h in sequential_decode(dec, v, START, bans(suppress=(3,)), DecodeOptions(max_length=4, method="sample"), seeds=1):
        assert 3 not in h.tokens
    for hyps in beam_search(dec, v, START, bans(suppress=(0, 1, 3)), DecodeOptions(beam_size=3, n_best=3, max_length=4)):
        assert all(3 not in h.tokens for h in hyps)


def test_no_end_after_words_that_cannot_end_a_caption():
    dec = tiny_decoder(12)
    with torch.no_grad():
        dec.out.bias[END] = 4.0  # the model stops as soon as it may
    v = feats(4)
    banned = [w for w in range(12) if w not in (END, 7)]  # only word 7 may end a caption
    plain = sequential_decode(dec, v, START, bans(min_length=1), DecodeOptions(max_length=8))
    assert all(h.finished and len(h.tokens) == 1 for h in plain) and any(h.tokens[-1] in banned for h in plain)
    ruled = sequential_decode(dec, v, START, bans(min_length=1, no_end_after=banned), DecodeOptions(max_length=8))
    for s in range(5):  # 20 sampled captions: some reach word 7 and then <end>
        ruled += sequential_decode(dec, v, START, bans(min_length=1, no_end_after=banned), DecodeOptions(max_length=8, method="sample"), seeds=[4 * s + i for i in range(4)])
    ruled += [h for hyps in beam_search(dec, v, START, bans(min_length=1, no_end_after=banned), DecodeOptions(beam_size=3, n_best=3, max_length=8)) for h in hyps]
    assert any(h.finished for h in ruled)
    assert all(h.tokens[-1] == 7 for h in ruled if h.finished), [h.tokens for h in ruled]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_word_scores_keep_beam_search_exact(length_penalty):
    """Grounded decoding's per-image word scores (-inf bans a word, a negative number discourages it): a beam
    wider than every candidate set must return, for each image of one batch, the exhaustive best by log p plus
    the scores of its words. Each image bans a word of its own unconstrained best caption and discourages
    another, so the scores always matter."""
    dec = tiny_decoder(4 + 4, seed=5)
    with torch.no_grad():
        dec.out.bias[0] = dec.out.bias[1] = dec.out.bias[3] = -1e4
    words, max_len, v = [4, 5, 6, 7], 3, feats(3, seed=9)
    scores = torch.zeros(3, 8)

    def exhaustive(i: int) -> list[tuple[float, list[int]]]:
        seqs = [list(s) for n in range(1, max_len) for s in itertools.product(words, repeat=n)]
        scored = [(sequence_log_prob(dec, v[i], s, True) + float(scores[i, s].sum()), s) for s in seqs]
        scored = [x for x in scored if x[0] > -math.inf]
        return sorted(scored, key=lambda x: x[0] / (len(x[1]) + 1) ** length_penalty, reverse=True)

    for i in range(3):
        best = exhaustive(i)[0][1]
        scores[i, best[0]] = -math.inf
        scores[i, [w for w in words if w != best[0]][i]] = -1.5
    hyps = beam_search(dec, v, START, bans(), DecodeOptions(beam_size=100, n_best=2, max_length=max_len, length_penalty=length_penalty), word_scores=scores)
    greedy = sequential_decode(dec, v, START, bans(), DecodeOptions(max_length=max_len), word_scores=scores)
    for i in range(3):
        best = exhaustive(i)[:2]
        assert [h.tokens for h in hyps[i]] == [s for _, s in best]
        for h, (lp, _) in zip(hyps[i], best):
            assert math.isclose(h.log_prob, lp, rel_tol=1e-4, abs_tol=1e-5)
        banned = set((scores[i] == -math.inf).nonzero()[:, 0].tolist())
        assert not set(greedy[i].tokens) & banned
    one = beam_search(dec, v, START, bans(), DecodeOptions(beam_size=1, max_length=max_len), word_scores=scores)
    assert [h[0].tokens for h in one] == [g.tokens for g in greedy]  # beam 1 is still greedy under the scores
