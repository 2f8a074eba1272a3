"""Caption metrics.

`CiderD` is our own implementation of CIDEr-D (Vedantam et al. 2015, the variant used by the COCO caption
server: tf-idf n-gram vectors for n = 1..4, clipped candidate counts, a Gaussian length penalty with
sigma = 6, scaled by 10). Its document frequencies come from a fixed reference corpus, which is what
self-critical training needs (scoring a batch against the batch's own statistics would be wrong), and
it is fast enough to score tens of thousands of captions per epoch.

`coco_scores` runs the reference toolkit (pycocoevalcap) for the numbers we report: BLEU-1..4, METEOR,
ROUGE-L, CIDEr, with the PTB tokenizer. Both the tokenizer and METEOR are Java programs: without Java
we tokenize with our own tokenizer, skip METEOR and say so.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence

from captioner.vocab import tokenize

NGRAMS = 4
SIGMA = 6.0


def _counts(words: Sequence[str]) -> Counter:
    return Counter(tuple(words[i : i + n]) for n in range(1, NGRAMS + 1) for i in range(len(words) - n + 1))


class CiderD:
    """CIDEr-D with document frequencies from `corpus`: one list of reference captions per image."""

    def __init__(self, corpus: Iterable[Sequence[str]]):
        df: Counter = Counter()
        n_docs = 0
        for refs in corpus:
            n_docs += 1
            seen = set()
            for ref in refs:
                seen.update(_counts(tokenize(ref)))
            df.update(seen)
        # an n-gram in one document weighs as one in none (df is clamped to 1 below): keeping only those
        # in two or more changes no score and drops most of the table (most long n-grams occur in one document)
        self.df = {gram: n for gram, n in df.items() if n > 1}
        self.log_n = math.log(max(n_docs, 1))

    def _vector(self, counts: Counter) -> tuple[list[dict], list[float], int]:
        vec = [dict() for _ in range(NGRAMS)]
        norm = [0.0] * NGRAMS
        for gram, tf in counts.items():
            n = len(gram) - 1
            w = tf * (self.log_n - math.log(max(1.0, self.df.get(gram, 0.0))))
            vec[n][gram] = w
            norm[n] += w * w
        length = sum(tf for gram, tf in counts.items() if len(gram) == 2)  # as the COCO server counts it
        return vec, [math.sqrt(x) for x in norm], length

    def score(self, candidate: str, references: Sequence[str]) -> float:
        return self.score_tokens(tokenize(candidate), [tokenize(r) for r in references])

    def prepare(self, references: Sequence[Sequence[str]]) -> list:
        """Precompute the tf-idf vectors of one image's tokenized references (SCST scores them many times)."""
        return [self._vector(_counts(ref)) for ref in references]

    def score_tokens(self, candidate: Sequence[str], references: Sequence[Sequence[str]]) -> float:
        """CIDEr-D of a tokenized candidate against tokenized references."""
        return self.score_prepared(candidate, self.prepare(references))

    def score_prepared(self, candidate: Sequence[str], prepared: list) -> float:
        """CIDEr-D of a tokenized candidate against references already `prepare`d."""
        cv, cn, cl = self._vector(_counts(candidate))
        total = 0.0
        for rv, rn, rl in prepared:
            penalty = math.exp(-((cl - rl) ** 2) / (2 * SIGMA**2))
            for n in range(NGRAMS):
                if cn[n] == 0 or rn[n] == 0:
                    continue
                dot = sum(min(w, rv[n][g]) * rv[n][g] for g, w in cv[n].items() if g in rv[n])
                total += penalty * dot / (cn[n] * rn[n])
        return total / NGRAMS / max(len(prepared), 1) * 10.0

    def corpus_score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
        return sum(self.score(c, r) for c, r in zip(candidates, references)) / max(len(candidates), 1)


def prepare_bleu(references: Sequence[Sequence[str]]) -> tuple[Counter, list[int]]:
    """One image's tokenized references for `sentence_bleu_prepared`: each n-gram's highest count in any
    of them (the clipping limit) and their lengths. SCST scores many samples against the same references."""
    best: Counter = Counter()
    for ref in references:
        best |= _counts(ref)
    return best, [len(r) for r in references]


def sentence_bleu(candidate: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """BLEU-4 of one tokenized caption in [0, 1]: clipped n-gram precisions, add-one smoothed for n > 1 (Lin
    and Och 2004) so a caption without a matching 4-gram still gets credit for its 3-grams, and the brevity
    penalty against the closest reference length. A per-sample reward, not the corpus BLEU we report."""
    return sentence_bleu_prepared(candidate, prepare_bleu(references))


def sentence_bleu_prepared(candidate: Sequence[str], prepared: tuple[Counter, list[int]]) -> float:
    """`sentence_bleu` against references already `prepare_bleu`d."""
    if not candidate:
        return 0.0
    best, ref_lengths = prepared
    cand = _counts(candidate)
    log_p = 0.0
    for n in range(1, NGRAMS + 1):
        total = max(len(candidate) - n + 1, 0)
        hits = sum(min(c, best[g]) for g, c in cand.items() if len(g) == n)
        smooth = 0 if n == 1 else 1
        if hits + smooth == 0:
            return 0.0
        log_p += math.log((hits + smooth) / (total + smooth)) / NGRAMS
    closest = min(ref_lengths, key=lambda m: (abs(m - len(candidate)), m), default=len(candidate))
    brevity = min(0.0, 1 - closest / len(candidate))
    return math.exp(log_p + brevity)


def java_available() -> bool:
    return shutil.which("java") is not None


def coco_scores(candidates: Sequence[str], references: Sequence[Sequence[str]], meteor: bool = True) -> dict:
    """The COCO caption toolkit's scores on the usual scale (BLEU-4 23.0, CIDEr 60.0), plus what was skipped."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [{"caption": r} for r in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": c}] for i, c in enumerate(candidates)}
    skipped = []
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        gts, res = tok.tokenize(gts), tok.tokenize(res)
        tokenizer = "ptb"
    else:
        gts = {i: [" ".join(tokenize(r["caption"])) for r in v] for i, v in gts.items()}
        res = {i: [" ".join(tokenize(r["caption"])) for r in v] for i, v in res.items()}
        tokenizer = "captioner (no Java for the PTB tokenizer)"
        skipped.append("METEOR (needs Java)")
        meteor = False
    out: dict = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n, b in enumerate(bleu, 1):
        out[f"BLEU-{n}"] = 100 * b
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        m = Meteor()
        out["METEOR"] = 100 * m.compute_score(gts, res)[0]
        del m
    out["ROUGE-L"] = 100 * Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = 100 * Cider().compute_score(gts, res)[0]
    out = {k: round(float(v), 2) for k, v in out.items()}
    out["tokenizer"] = tokenizer
    if skipped:
        out["skipped"] = skipped
    return out


def quick_scores(scorer: CiderD, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Fast in-process scores for model selection during training: CIDEr-D and BLEU-4 (no Java)."""
    from pycocoevalcap.bleu.bleu import Bleu

    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(tokenize(c))] for i, c in enumerate(candidates)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"CIDEr-D": round(100 * scorer.corpus_score(candidates, references), 2), "BLEU-4": round(100 * bleu[3], 2)}
