"""The shipped model, grounded: what it names on photos outside Flickr8k, the evidence for every concept word
it can say, and its answer through the API against the OpenAPI document."""

from pathlib import Path

import pytest

import captioner
from captioner.concepts import CONCEPTS, word_concepts
from captioner.grounding import UNFAMILIAR
from service.app import create_app
from service.settings import Settings

from .conftest import FIXTURES, check_schema

DOG_WORDS = {"dog", "dogs", "puppy", "puppies"}
PTARMIGAN, LABRADOR, CHEESEBURGER = (FIXTURES / f"imagenet-{n}.jpg" for n in ("ptarmigan", "labrador", "cheeseburger"))


@pytest.fixture(scope="module")
def shipped() -> captioner.Captioner:
    return captioner.load()


def test_the_shipped_model_decodes_grounded_by_default(shipped):
    assert shipped.grounding is not None and shipped.default_options.grounded


def test_every_concept_word_in_the_vocabulary_has_evidence(shipped):
    """Each word of the concept table that the model can say maps to its concept in the model's grounding, and
    a concept with ImageNet classes is grounded on the ImageNet head."""
    table = word_concepts(CONCEPTS)
    g = shipped.grounding
    sayable = {w for w in shipped.vocab.itos if w in table}
    grounded = {shipped.vocab.itos[i]: g.concepts[c].name for i, c in enumerate(g.word_concept.tolist()) if c >= 0}
    assert grounded == {w: table[w] for w in sayable}
    by_name = {c.name: c for c in CONCEPTS}
    for concept in g.concepts:
        assert concept.source == ("imagenet" if by_name[concept.name].imagenet else "detector")
        assert 0 < concept.threshold < 1


def test_a_bird_is_no_longer_called_a_dog_and_a_dog_still_is(shipped):
    ungrounded = shipped.caption(PTARMIGAN, grounded=False)[0][0]
    assert DOG_WORDS & set(ungrounded.tokens)  # the habit grounding is there to stop
    grounded = shipped.caption(PTARMIGAN)[0][0]
    assert not DOG_WORDS & set(grounded.tokens), grounded.text
    assert not grounded.image.low_confidence
    dog = shipped.caption(LABRADOR)[0][0]
    assert DOG_WORDS & set(dog.tokens), dog.text
    named = {e.concept: e for e in dog.evidence}
    assert named["dog"].source == "imagenet" and named["dog"].prob > 0.5


def test_a_subject_the_model_never_learned_is_flagged_not_described(shipped):
    image = shipped.caption(CHEESEBURGER)[0][0].image
    assert image.low_confidence and image.reason == UNFAMILIAR
    assert image.labels[0][0] == "cheeseburger"
    assert image.alt_text("anything").startswith("Probably a cheeseburger.")
    assert not shipped.caption(LABRADOR)[0][0].image.low_confidence


@pytest.fixture(scope="module")
def client(shipped, tmp_path_factory):
    settings = Settings(model_path=str(tmp_path_factory.mktemp("m") / "flickr8k.safetensors"), batch_wait_ms=0)
    return create_app(settings, model=shipped).test_client()


@pytest.mark.parametrize("photo", [LABRADOR, CHEESEBURGER], ids=lambda p: Path(p).stem)
def test_the_api_answer_with_evidence_validates_against_the_openapi_document(client, shipped, photo):
    body = client.post("/v1/captions", data=photo.read_bytes(), content_type="image/jpeg").get_json()
    check_schema(body, "CaptionResponse")
    table = word_concepts(CONCEPTS)
    for caption in body["captions"]:
        assert [e["word"] for e in caption["evidence"]] == [w for w in caption["tokens"] if w in table]
    grounding = body["grounding"]
    assert set(grounding["concepts"]) == {c.name for c in shipped.grounding.concepts}
    if grounding["low_confidence"]:
        assert body["alt_text"].endswith(grounding["note"]) and grounding["labels"][0]["label"] in body["alt_text"]
    else:
        assert body["alt_text"].lower().rstrip(".") == body["captions"][0]["text"]


def test_grounded_can_be_switched_off_per_request(client):
    body = client.post("/v1/captions?grounded=false", data=PTARMIGAN.read_bytes(), content_type="image/jpeg").get_json()
    assert body["options"]["grounded"] is False
    assert DOG_WORDS & set(body["captions"][0]["tokens"])
    model_info = client.get("/v1/model").get_json()
    check_schema(model_info, "ModelInfo")
    assert {c["name"] for c in model_info["grounding"]["concepts"]} >= {"dog", "person"}
