"""Our CIDEr-D (SCST's reward, validation) against the COCO caption toolkit's own implementation."""

import pytest
from pycocoevalcap.cider.cider import Cider

from captioner.vocab import tokenize
from training.metrics import CiderD

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
