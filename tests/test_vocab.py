"""The tokenizer and the vocabulary: one definition of a word, ids that round-trip, unknown words mapped."""

import pytest

from captioner.vocab import Vocabulary, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A Dog, running!  On the grass .") == ["a", "dog", "running", "on", "the", "grass"]
    assert tokenize("The dog's ball isn't red") == ["the", "dog's", "ball", "isn't", "red"]


def test_build_applies_min_count_and_orders_by_frequency():
    v = Vocabulary.build(["a dog", "a dog runs", "a cat"], min_count=2)
    assert v.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert v.itos[4:] == ["a", "dog"]


def test_encode_decode_round_trip_with_unknowns_and_truncation():
    v = Vocabulary.build(["a dog runs"] * 5, min_count=1)
    ids = v.encode("A dog flies", max_length=10)
    assert ids[0] == v.start_id and ids[-1] == v.end_id and ids[3] == v.unk_id
    assert v.decode(ids) == ["a", "dog", "<unk>"]
    assert v.encode("a dog runs", max_length=2) == [v.start_id, v.stoi["a"], v.stoi["dog"], v.end_id]
    assert v.decode([v.stoi["a"], v.end_id, v.stoi["dog"]]) == ["a"]


def test_serialisation_round_trip_and_validation():
    v = Vocabulary.build(["x y z"], min_count=1)
    assert Vocabulary(v.to_list()).stoi == v.stoi
    with pytest.raises(ValueError):
        Vocabulary(["a", "b"])
    with pytest.raises(ValueError):
        Vocabulary([*v.to_list(), "x"])
