"""Grounding: concept evidence from v, the words it bans, the low-confidence flag, the checkpoint round trip,
and the hallucination metrics that measure it."""

import math

import pytest
import torch

from captioner import checkpoint as ckpt_io
from captioner.concepts import CONCEPTS, word_concepts
from captioner.grounding import IMPROBABLE, UNFAMILIAR, GroundedConcept, Grounding, ImageEvidence
from captioner.model import Captioner
from captioner.options import OptionError
from captioner.vocab import SPECIALS, Vocabulary
from training.grounding import concept_labels, context_rates, fit_detectors, out_of_fold_logits, platt
from training.hallucination import chair, imagenet_rows
from training.datasets import Record

from .conftest import LITE0, tiny_decoder

D = 8  # feature width of the hand-made groundings


def hand_grounding(low_confidence_prob: float = 0.5) -> Grounding:
    """4 ImageNet classes (0, 1: dog; 2: known; 3: unknown); 'dog' grounded on classes 0-1 (threshold 0.2),
    'person' on a detector reading feature 0 (threshold 0.5)."""
    vocab = Vocabulary([*SPECIALS, "a", "dog", "puppy", "man", "runs"])
    concepts = [GroundedConcept("dog", ("dog", "puppy"), (0, 1), 0.2), GroundedConcept("person", ("man",), (), 0.5)]
    g = Grounding(concepts, vocab, ["pug", "beagle", "seashore", "cheeseburger"], [0, 1, 2], low_confidence_prob, D)
    head = torch.zeros(4, D)
    head[torch.arange(4), torch.arange(4) + 4] = 10.0  # feature 4 + k votes for class k
    det = torch.zeros(2, D)
    det[1, 0] = 10.0
    g.head_weight, g.detector_weight, g.detector_bias = head, det, torch.tensor([0.0, -5.0])
    return g


def vectors(*rows: dict[int, float]) -> torch.Tensor:
    v = torch.zeros(len(rows), D)
    for i, row in enumerate(rows):
        for j, x in row.items():
            v[i, j] = x
    return v


def test_evidence_sums_a_concepts_classes_and_reads_detectors():
    g = hand_grounding()
    v = vectors({4: 1.0, 5: 1.0, 0: 1.0}, {7: 1.0})  # dog classes strong + person; then a cheeseburger alone
    ev = g.evidence(v)
    probs = g.class_probs(v)
    assert torch.allclose(ev[:, 0], (probs[:, 0] + probs[:, 1]).clamp(1e-6, 1 - 1e-6), atol=1e-6)
    assert torch.allclose(ev[:, 1], torch.sigmoid(10.0 * v[:, 0] - 5.0))
    assert ev[0, 0] > 0.9 and ev[1, 0] < 0.01 and ev[0, 1] > 0.99 and ev[1, 1] < 0.01


def test_word_scores_ban_concepts_below_threshold_and_weigh_the_rest_by_evidence():
    g = hand_grounding()
    ev, allowed, _ = g.image_evidence(vectors({4: 1.0, 0: 0.55}, {7: 1.0, 0: 1.0}))  # a dog, a faint person; a person, a burger
    scores = g.word_scores(ev, allowed)
    ids = g.vocab.stoi
    banned = lambda row: {g.vocab.itos[i] for i in (scores[row] == -math.inf).nonzero()[:, 0].tolist()}  # noqa: E731
    assert banned(0) == set() and banned(1) == {"dog", "puppy"}
    assert 0.5 < float(ev[0, 1]) < 0.8  # the faint person: allowed (threshold 0.5), discouraged by log(evidence)
    assert float(scores[0, ids["man"]]) == pytest.approx(math.log(float(ev[0, 1])), rel=1e-5)
    assert float(scores[0, ids["dog"]]) == float(scores[0, ids["puppy"]]) == pytest.approx(math.log(float(ev[0, 0])), rel=1e-5)
    assert float(scores[:, ids["runs"]].abs().sum()) == 0.0 and float(scores[1, ids["man"]]) > -0.01


def test_a_guarded_concept_needs_support_from_the_classes_the_head_sees():
    """Person guarded by its context: its rate among training photos is 0.9 for 'seashore' (class 2), 0 for
    'cheeseburger' (class 3). The same sure detector allows it beside a seashore, not beside a cheeseburger;
    an unguarded concept (dog) is untouched."""
    g = hand_grounding()
    rate = torch.ones(4, 2)
    rate[:, 1] = torch.tensor([0.0, 0.0, 0.9, 0.0])
    g.context_rate = rate
    ev, allowed, _ = g.image_evidence(vectors({0: 1.0, 6: 1.0}, {0: 1.0, 7: 1.0}, {0: 1.0, 4: 1.0}))
    assert (ev[:, 1] > 0.99).all()  # the detector is sure in all three
    assert allowed[:, 1].tolist() == [True, False, False]
    assert allowed[:, 0].tolist() == [False, False, True]  # dog: its own evidence only
    assert float(g.word_scores(ev, allowed)[1, g.vocab.stoi["man"]]) == -math.inf


def test_context_rates_count_training_photos_and_pull_rare_classes_to_zero():
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # class 0: three photos, class 1: one
    labels = torch.tensor([[True, True], [True, False], [False, False], [True, True]])
    rates = context_rates(probs, labels, torch.tensor([True, False]), prior_photos=1.0)
    assert rates[:, 0].tolist() == pytest.approx([2 / 4, 1 / 2])  # 2 of 3 photos (+1 phantom); 1 of 1 (+1)
    assert rates[:, 1].tolist() == [1.0, 1.0]  # not guarded


def test_low_confidence_when_the_top_class_is_unknown_and_sure():
    g = hand_grounding(low_confidence_prob=0.5)
    _, _, images = g.image_evidence(vectors({7: 1.0}, {6: 1.0}, {7: 0.05}))
    assert images[0].low_confidence and images[0].labels[0][0] == "cheeseburger"
    assert not images[1].low_confidence  # seashore: a class the model knows
    assert not images[2].low_confidence  # cheeseburger on top, but unsure (all four classes near 0.25)


def test_captioner_round_trips_grounding_and_reports_evidence(tmp_path):
    g = hand_grounding()
    vocab = g.vocab
    torch.manual_seed(0)
    from captioner.encoders import create_encoder

    model = Captioner(create_encoder("efficientnet_lite0"), tiny_decoder(len(vocab), feature_dim=D), vocab,
                      LITE0.preprocess(), "efficientnet_lite0", decoding={"grounded": True}, grounding=g)
    path = tmp_path / "m.safetensors"
    ckpt_io.save(path, model.checkpoint())
    loaded = Captioner.from_checkpoint(path)
    assert loaded.default_options.grounded
    v = vectors({4: 1.0}, {7: 1.0})
    assert torch.allclose(loaded.grounding.evidence(v), g.evidence(v))
    for caps in loaded.decode(v, beam_size=3, max_length=6):
        for c in caps:
            named = [e.word for e in c.evidence]
            assert named == [w for w in c.tokens if w in ("dog", "puppy", "man")]
    grounded = loaded.decode(v, beam_size=3, max_length=6)
    assert not {"dog", "puppy"} & set(grounded[1][0].tokens) and "man" not in grounded[0][0].tokens


def test_grounded_needs_a_grounding():
    vocab = Vocabulary([*SPECIALS, "a"])
    from captioner.encoders import create_encoder

    model = Captioner(create_encoder("efficientnet_lite0"), tiny_decoder(len(vocab), feature_dim=D), vocab,
                      LITE0.preprocess(), "efficientnet_lite0")
    with pytest.raises(OptionError, match="grounding"):
        model.decode(torch.zeros(1, D), grounded=True)
    assert model.decode(torch.zeros(1, D), grounded="false")[0][0].evidence == []


def test_concept_table_names_each_word_once():
    table = word_concepts(CONCEPTS)
    assert table["puppy"] == "dog" and table["boy"] == "person" and table["bicycle"] == "bike"
    assert all(0 <= i < 1000 for c in CONCEPTS for i in c.imagenet)


def test_chair_counts_concepts_no_reference_names():
    captions = ["a dog runs on the grass", "a man rides a bike", "a boy plays with a ball"]
    refs = [["a puppy runs"], ["a woman on a bicycle"], ["a cat sleeps", "a kitten sleeps with a ball"]]
    rows = chair(captions, refs)
    assert rows["chair_s_pct"] == pytest.approx(100 / 3, abs=0.01)  # only the boy (person) is unsupported
    assert rows["chair_i_pct"] == pytest.approx(100 / 5, abs=0.01)  # of dog, person, bike, person, ball
    assert rows["unsupported"] == {"person": 1}


def test_imagenet_rows_split_own_and_other_photos():
    rows = imagenet_rows(["a dog runs", "a dog sits", "a fish swims", "a man"], [151, 1, 1, 500],
                         [False, False, True, True])
    assert rows["dog"]["own_named_pct"] == 100.0 and rows["dog"]["other_named"] == 1
    assert rows["dog"]["other_named_pct"] == pytest.approx(100 / 3, abs=0.01)
    assert rows["fish"]["own_named_pct"] == 50.0 and rows["fish"]["own_flagged_pct"] == 50.0
    assert rows["dog"]["own_flagged_pct"] == 0.0


def test_detectors_learn_a_separable_concept():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g) * 3 + 10  # raw features far from zero: the folded standardisation matters
    y = (x[:, 2] > 10).unsqueeze(1)
    w, b = fit_detectors(x, y, l2=1e-3)
    p = torch.sigmoid(x @ w.T + b)
    assert ((p > 0.5) == y).float().mean() > 0.97


def test_platt_scaling_calibrates_an_overconfident_score():
    """Labels drawn with probability sigmoid(z); the score is 4z + 1 (overconfident and shifted): the fitted
    map must recover z's scale, about 1/4 and -1/4."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20000, 1, generator=g) * 2
    labels = torch.rand(20000, 1, generator=g) < torch.sigmoid(z)
    scale, bias = platt(4 * z + 1, labels)
    assert float(scale) == pytest.approx(0.25, abs=0.02) and float(bias) == pytest.approx(-0.25, abs=0.05)


def test_out_of_fold_logits_do_not_remember_the_photos():
    """Labels that are pure noise: a detector fitted to the same photos 'predicts' them (it memorises);
    out-of-fold logits, what calibration is fitted on, are at chance."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 100, generator=g), torch.rand(300, 1, generator=g) < 0.5
    w, b = fit_detectors(x, y, l2=1e-4)
    accuracy = lambda logits: float(((logits > 0) == y).float().mean())  # noqa: E731
    assert accuracy(x @ w.T + b) > 0.7
    assert accuracy(out_of_fold_logits(x, y, l2=1e-4)) < 0.62


def test_concept_labels_come_from_any_reference():
    records = [Record(None, "a", "train", ("a man and his dog", "a person walks")),
               Record(None, "b", "train", ("a red car", "a vehicle"))]
    labels = concept_labels(records, CONCEPTS)
    names = [c.name for c in CONCEPTS]
    assert labels[0, names.index("dog")] and labels[0, names.index("person")] and labels[1, names.index("car")]
    assert int(labels.sum()) == 3


def test_a_caption_below_the_floor_is_judged_improbable():
    g = hand_grounding()
    _, _, (image,) = g.image_evidence(vectors({4: 1.0}))
    assert g.judge_caption(image, log_prob=-10.0, words=3).reason is None  # no floor fitted: never
    g.min_word_score = -1.0
    assert g.judge_caption(image, log_prob=-3.9, words=3).reason is None  # -0.975 per word and <end>
    assert g.judge_caption(image, log_prob=-4.1, words=3).reason == IMPROBABLE
    _, _, (burger,) = g.image_evidence(vectors({7: 1.0}))
    assert g.judge_caption(burger, log_prob=-40.0, words=3).reason == UNFAMILIAR  # the first reason stands


def test_alt_text_is_the_caption_or_an_honest_guess():
    sure = ImageEvidence({}, [("cheeseburger", 0.93), ("bagel", 0.02)], UNFAMILIAR)
    unsure = ImageEvidence({}, [("African elephant", 0.41), ("tusker", 0.3)], IMPROBABLE)
    assert ImageEvidence({}, [("seashore", 0.9)]).alt_text("a dog runs on the beach") == "A dog runs on the beach."
    assert sure.alt_text("a dog runs").startswith("Probably a cheeseburger. ") and sure.alt_text("x").endswith(sure.note)
    assert unsure.alt_text("a dog runs").startswith("Possibly an African elephant or a tusker. ")
    assert "dog" not in sure.alt_text("a dog runs") + unsure.alt_text("a dog runs")
    assert ImageEvidence({}, [], IMPROBABLE).alt_text("a dog runs") == unsure.note  # no ImageNet head


def test_a_negative_weight_is_refused():
    with pytest.raises(ValueError, match="weight"):
        Grounding([], Vocabulary(list(SPECIALS)), [], [], 0.5, D, weight=-1.0)
