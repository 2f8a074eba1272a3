"""Tokenizer and vocabulary: the one definition of what a "word" is, shared by training and serving."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lowercase and keep alphanumeric words (with an attached 's / n't); punctuation is dropped.

    Dropping punctuation consistently matters more than keeping it: Flickr8k captions end with " ." in
    some files and "." in others, and the evaluation tokenizer removes it anyway.
    """
    return _WORD.findall(text.lower())


class Vocabulary:
    """Word <-> id map with fixed special ids: <pad>=0, <start>=1, <end>=2, <unk>=3."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary has duplicate words")
        self.itos = words
        self.stoi = {w: i for i, w in enumerate(words)}

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5) -> "Vocabulary":
        """Words seen at least `min_count` times, most frequent first (ties alphabetical, so builds are stable)."""
        counts = Counter(tok for caption in captions for tok in tokenize(caption))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """<start> w1 .. wn <end>, unknown words as <unk>, truncated to `max_length` words."""
        ids = [self.stoi.get(tok, self.unk_id) for tok in tokenize(text)]
        if max_length is not None:
            ids = ids[:max_length]
        return [self.start_id, *ids, self.end_id]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first <end>, skipping <start> and <pad>."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return words

    def to_list(self) -> list[str]:
        return list(self.itos)
