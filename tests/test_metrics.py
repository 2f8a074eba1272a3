"""Our CIDEr-D (SCST's reward, validation) against the COCO caption toolkit's own implementation."""

import pytest
from pycocoevalcap.cider.cider import Cider

from captioner.vocab import tokenize
from training.metrics import CiderD, sentence_bleu

REFS = [["a dog runs on the grass", "a brown dog is running", "the dog plays outside"],
        ["two men play football", "men playing soccer on a field", "a soccer game"],
        ["a child on a swing", "a little girl swings in the park", "kid swinging"]]
CANDIDATES = ["a dog is running on grass", "two men playing soccer", "a girl on a swing in the park"]


def test_cider_d_matches_pycocoevalcap():
    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(REFS)}
    res = {i: [" ".join(tokenize(c))] for i, c in enumerate(CANDIDATES)}
    theirs, per_image = Cider().compute_score(gts, res)
    ours = CiderD(REFS)
    assert ours.corpus_score(CANDIDATES, REFS) == pytest.approx(theirs, rel=1e-12)
    for cand, refs, expected in zip(CANDIDATES, REFS, per_image):
        tokens = [tokenize(r) for r in refs]
        assert ours.score_tokens(tokenize(cand), tokens) == pytest.approx(expected, rel=1e-12)
        assert ours.score_prepared(tokenize(cand), ours.prepare(tokens)) == ours.score_tokens(tokenize(cand), tokens)


def test_sentence_bleu_is_one_for_a_reference_and_rewards_overlap():
    refs = [tokenize(r) for r in REFS[0]]
    assert sentence_bleu(tokenize("a brown dog is running"), refs) == pytest.approx(1.0)
    close, far = sentence_bleu(tokenize("a brown dog is running fast"), refs), sentence_bleu(tokenize("a cat sleeps"), refs)
    assert 0 < far < close < 1
    # brevity: a prefix of a reference has perfect precisions but is penalised for length
    assert sentence_bleu(tokenize("a brown dog"), refs) < sentence_bleu(tokenize("a brown dog is running"), refs)
    assert sentence_bleu([], refs) == 0.0


def test_sentence_bleu_is_pycocoevalcaps_bleu_plus_add_one_smoothing():
    """One reference of equal length (no brevity penalty): the toolkit's precisions, ours smoothed for n > 1."""
    from pycocoevalcap.bleu.bleu import Bleu

    cand, ref = "a dog runs on the green grass", "a dog runs on the wet grass"
    theirs, _ = Bleu(4).compute_score({0: [ref]}, {0: [cand]}, verbose=0)
    ours = sentence_bleu(tokenize(cand), [tokenize(ref)])
    # by hand: p1 6/7, p2 4/6, p3 3/5, p4 2/4; add-one smoothed for n > 1: 6/7, 5/7, 4/6, 3/5
    assert theirs[3] == pytest.approx((6 / 7 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25, rel=1e-6)
    assert ours == pytest.approx((6 / 7 * 5 / 7 * 4 / 6 * 3 / 5) ** 0.25, rel=1e-12)
