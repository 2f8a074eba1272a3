"""Fluency rows: what each counts, on captions written to hit (and to miss) each rule."""

from pathlib import Path

import pytest

from captioner.vocab import tokenize
from training.datasets import Record
from training.evaluate import human_fluency
from training.fluency import (fluency, fluency_table, is_agreement_error, is_bad_ending, is_disfluent,
                              is_repeated_conjunct)


@pytest.mark.parametrize("text, error", [
    ("a dog and a cat is running", True),
    ("a man and a small boy is walking", True),
    ("a girl and another girl is smiling", True),
    ("a man and an old woman are walking", False),  # plural verb: correct
    ("a dog and a cat are playing", False),
    ("a man and a very tall boy is there", False),  # more than two words between: outside the definition
    ("a dog and a cat sit", False),
    ("a dog is running and a cat is sleeping", True),  # the definition's known false positive: a second clause
])
def test_agreement_error_is_a_compound_subject_with_is(text, error):
    assert is_agreement_error(tokenize(text)) is error


@pytest.mark.parametrize("text, bad", [
    ("a football player in the red", True),
    ("a dog runs in the", True),
    ("a boy in a blue", True),
    ("a dog is", True),
    ("", True),
    ("a boy in a blue shirt", False),
    ("people look on", False),  # human captions end on prepositions like this
])
def test_bad_ending(text, bad):
    assert is_bad_ending(tokenize(text)) is bad


@pytest.mark.parametrize("text, repeated", [
    ("a white and white dog runs", True),
    ("a man with sunglasses and sunglasses", True),
    ("a black and white dog runs", False),
    ("a dog and a dog", False),  # two dogs: English
    ("a whiteandwhite dog", False),
    ("a sandy and dry beach", False),  # "sandy" ends in "and": only whole words count
])
def test_repeated_conjunct_is_a_word_joined_to_itself(text, repeated):
    assert is_repeated_conjunct(tokenize(text)) is repeated


def test_fluency_rows_count_what_they_say():
    captions = ["a dog and a cat is running", "a dog runs in the grass", "a dog runs in the grass",
                "a boy in the red", "two girls play", "a white and white dog runs", "two girls play",
                "a man runs"]
    rows = fluency(captions)
    assert rows == {"agreement_errors_pct": 12.5, "bad_endings_pct": 12.5, "repeated_conjuncts_pct": 12.5,
                    "distinct_captions_pct": 50.0, "distinct_words": len(set(" ".join(captions).split()))}
    assert [is_disfluent(tokenize(c)) for c in captions] == [True, False, False, True, False, True, False, False]
    table = fluency_table(rows, fluency(["two girls play"]))
    assert "| captions no other photo got (%) | 50 | 100 |" in table
    assert "| 'a white and white dog': a word joined to itself (%) | 12.5 | 0 |" in table


def test_human_fluency_reads_the_first_reference_of_each_photo():
    records = [Record(Path("a.jpg"), "1", "val", ("a dog and a cat is here", "x y")),
               Record(Path("b.jpg"), "2", "val", ("a man walks", "a dog and a cat is here"))]
    assert human_fluency(records)["agreement_errors_pct"] == 50.0
