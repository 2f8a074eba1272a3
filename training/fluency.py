"""Fluency as a measured quantity: what BLEU and CIDEr do not see in a set of captions.

Self-critical training rewards n-gram overlap, and a model can raise it with templates that break English
("a dog and a cat is ..."), end mid-phrase ("... in the red"), join a word to itself ("a white and white
dog") or describe many photos with the same words.
`fluency` counts those, for the model's captions and, as the yardstick, for one human reference per photo.
The word lists live here and nowhere else; `is_disfluent` is the same test as a per-caption reward term.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from captioner.vocab import tokenize

# A compound subject with a singular verb: "and (a|an|the|one|another) WORD [WORD] is".
AGREEMENT_ERROR = re.compile(r"\band (?:a|an|the|one|another) \w+(?: \w+)? is\b")

# A word joined to itself: "a white and white dog" (rare in human captions, a template run dry in SCST
# models' captions: docs/experiments.md).
REPEATED_CONJUNCT = re.compile(r"\b(\w+) and \1\b")

COLOURS = frozenset("""black white red blue green yellow orange pink purple brown gray grey tan gold golden silver
    dark light colorful colourful striped""".split())
ADJECTIVES = frozenset("""young little small big large tall old older long short wet dry muddy snowy grassy sandy
    rocky busy crowded empty pretty cute happy blond blonde bald shirtless several many same""".split())
# Words a caption cannot end on: articles, conjunctions, possessives, a bare verb "is" ("looks on", "next to her"
# and "by her" end human captions, so prepositions and object pronouns are not listed).
DANGLING = frozenset("a an the and or of with is are his their its".split())
BAD_ENDINGS = COLOURS | ADJECTIVES | DANGLING


def is_agreement_error(words: Sequence[str]) -> bool:
    return AGREEMENT_ERROR.search(" ".join(words)) is not None


def is_repeated_conjunct(words: Sequence[str]) -> bool:
    return REPEATED_CONJUNCT.search(" ".join(words)) is not None


def is_bad_ending(words: Sequence[str]) -> bool:
    """Ends on an adjective, a colour or a word that leaves the phrase open (or is empty)."""
    return not words or words[-1] in BAD_ENDINGS


def is_disfluent(words: Sequence[str]) -> bool:
    return is_agreement_error(words) or is_bad_ending(words) or is_repeated_conjunct(words)


def disfluent_pct(captions: Sequence[str]) -> float:
    """% of captions with an agreement error, a bad ending or a repeated conjunct: the share model selection
    holds down."""
    return round(100 * sum(is_disfluent(tokenize(c)) for c in captions) / max(len(captions), 1), 2)


def fluency(captions: Sequence[str]) -> dict:
    """Five rows, one caption per photo: agreement errors, bad endings and repeated conjuncts (% of captions),
    captions no other photo got (%), distinct words over all captions."""
    words = [tokenize(c) for c in captions]
    n = max(len(words), 1)
    counts = Counter(" ".join(w) for w in words)
    return {
        "agreement_errors_pct": round(100 * sum(map(is_agreement_error, words)) / n, 2),
        "bad_endings_pct": round(100 * sum(map(is_bad_ending, words)) / n, 2),
        "repeated_conjuncts_pct": round(100 * sum(map(is_repeated_conjunct, words)) / n, 2),
        "distinct_captions_pct": round(100 * sum(counts[" ".join(w)] == 1 for w in words) / n, 2),
        "distinct_words": len({t for w in words for t in w}),
    }


FLUENCY_ROWS = {
    "agreement_errors_pct": "'X and a Y is' agreement errors (%)",
    "bad_endings_pct": "ends on an adjective, colour or open word (%)",
    "repeated_conjuncts_pct": "'a white and white dog': a word joined to itself (%)",
    "distinct_captions_pct": "captions no other photo got (%)",
    "distinct_words": "distinct words",
}


def fluency_table(model: dict, humans: dict) -> str:
    """Markdown: the model's rows beside the human references' rows."""
    rows = ["| fluency | model | humans (first reference) |", "|---|---|---|"]
    rows += [f"| {label} | {model[k]:g} | {humans[k]:g} |" for k, label in FLUENCY_ROWS.items()]
    return "\n".join(rows)
