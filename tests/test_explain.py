"""Explanations: the numbers are the decoder's own, saliency points at what carries the word, and the
library, the API, the CLI and the HTML page all give the same numbers."""

import io
import json
import math

import pytest
import torch
from PIL import Image

import captioner
from captioner.__main__ import main as cli_main
from captioner.decoding import teacher_forced_steps
from captioner.explain import MAX_N_BEST, occluded_copies
from service.app import create_app
from service.settings import Settings

from .conftest import check_schema, post_multipart


@pytest.mark.parametrize("options", [dict(method="greedy"), dict(method="beam", beam_size=3, n_best=3),
                                     dict(method="sample", seed=4)], ids=["greedy", "beam", "sample"])
def test_word_probabilities_are_the_decoders_and_multiply_to_the_caption(small_captioner, cat_photo, options):
    captions = small_captioner.caption(cat_photo, explain=True, **options)[0]
    for c in captions:
        words = c.explanation.words
        assert [w.word for w in words] == c.tokens + ["<end>"] * c.finished
        assert math.isclose(sum(math.log(w.prob) for w in words), c.log_prob, rel_tol=1e-5, abs_tol=1e-4)
        for w in words:
            probs = [a["prob"] for a in w.alternatives]
            assert probs == sorted(probs, reverse=True) and len(probs) == 5
            assert not {a["word"] for a in w.alternatives} & {"<pad>", "<start>", "<unk>"}  # never chosen anyway
            assert w.entropy >= 0 and len(w.saliency) == len(w.saliency[0]) == 7
        if options["method"] == "greedy":  # greedy picks the top alternative at every step
            assert all(w.alternatives[0]["word"] == w.word for w in words)


def test_entropy_and_cell_traces_match_a_teacher_forced_pass(small_captioner, cat_photo):
    model = small_captioner
    c = model.caption(cat_photo, method="greedy", explain=True)[0][0]
    ids = c.ids + [model.vocab.end_id] * c.finished
    image = model.preprocess(cat_photo)
    log_probs, cells = teacher_forced_steps(model.decoder, model.encode(image[None]), ids, model.vocab.start_id)
    entropy = -(log_probs[0].exp() * log_probs[0]).sum(-1)
    torch.testing.assert_close(torch.tensor([w.entropy for w in c.explanation.words]), entropy, rtol=1e-4, atol=1e-5)
    variance = cells[0].var(0, unbiased=False)
    chosen = [t.cell for t in c.explanation.cells]
    assert len(chosen) == 8 and variance[chosen].min() >= variance.topk(8).values.min() - 1e-7
    for trace in c.explanation.cells:
        torch.testing.assert_close(torch.tensor(trace.activation), cells[0][:, trace.cell], rtol=1e-4, atol=1e-5)


def test_occluded_copies_grey_out_one_region_each():
    image = torch.arange(3 * 14 * 21, dtype=torch.float32).view(3, 14, 21)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    copies = occluded_copies(image, 7, fill)
    assert copies.shape == (49, 3, 14, 21)
    for r, c in [(0, 0), (3, 5), (6, 6)]:
        changed = (copies[r * 7 + c] != image).any(0)
        expected = torch.zeros(14, 21, dtype=torch.bool)
        expected[2 * r : 2 * r + 2, 3 * c : 3 * c + 3] = True
        assert torch.equal(changed, expected)
        assert torch.equal(copies[r * 7 + c][:, 2 * r, 3 * c], fill)


def photo_beside_grey(photo, side: str) -> Image.Image:
    canvas = Image.new("RGB", (448, 224), (128, 128, 128))
    canvas.paste(Image.open(photo).convert("RGB").resize((224, 224)), (0 if side == "left" else 224, 0))
    return canvas


@pytest.mark.parametrize("side", ["left", "right"])
def test_saliency_lies_on_the_half_that_carries_the_photo(cat_photo, side):
    """The shipped model on a real photo pasted beside a flat grey half: the caption's words draw their
    saliency from the photo's half (all words' positive mass together; measured 87 % and 91 %, the previous
    default model 94 % and 93 %. The single word with the most mass was too fragile a statistic: 79 % for one
    word of the current model). A left/right or row/column mix-up would give ~50 % or the wrong half.
    On the fp32 encoder: int8's rounding makes the grey half's occlusions matter a little (79 % and 89 %)."""
    model = captioner.load(backend="onnx")
    c = model.caption(photo_beside_grey(cat_photo, side), explain=True)[0][0]
    total = sum(torch.tensor(w.saliency).clamp_min(0) for w in c.explanation.words)
    photo_half = total[:, :3].sum() + 0.5 * total[:, 3].sum() if side == "left" else total[:, 4:].sum() + 0.5 * total[:, 3].sum()
    assert photo_half / total.sum() > 0.8, (c.text, side, float(photo_half / total.sum()))


@pytest.fixture(scope="module")
def client(small_captioner, tmp_path_factory):
    settings = Settings(model_path=str(tmp_path_factory.mktemp("m") / "tiny.safetensors"), batch_wait_ms=5)
    return create_app(settings, model=small_captioner).test_client()


def test_api_explanations_match_the_schema_and_the_library(client, small_captioner, cat_photo):
    r = post_multipart(client, cat_photo.read_bytes(), explain="true", n_best="2")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    check_schema(body, "CaptionResponse")
    library = small_captioner.caption(cat_photo, explain=True, n_best=2)[0]
    assert [c["explanation"] for c in body["captions"]] == [c.explanation.to_dict() for c in library]
    as_json = client.post("/v1/captions", json={"image": __import__("base64").b64encode(cat_photo.read_bytes()).decode(),
                                                "explain": True, "n_best": 2}).get_json()
    assert as_json["captions"] == body["captions"]
    plain = post_multipart(client, cat_photo.read_bytes(), n_best="2").get_json()
    assert all("explanation" not in c for c in plain["captions"])  # unchanged without explain
    assert [c["text"] for c in plain["captions"]] == [c["text"] for c in body["captions"]]


@pytest.mark.parametrize("fields", [{"explain": "maybe"}, {"explain": "true", "n_best": str(MAX_N_BEST + 1), "beam_size": "5"}])
def test_explain_options_out_of_range_are_422(client, cat_photo, fields):
    r = post_multipart(client, cat_photo.read_bytes(), **fields)
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "invalid_option", r.get_json()
    assert "explain" in r.get_json()["error"]["message"]


def test_cli_prints_and_writes_the_library_numbers(small_captioner, cat_photo, tmp_path, capsys):
    from captioner.checkpoint import save

    path = tmp_path / "tiny.safetensors"
    save(path, small_captioner.checkpoint())
    page = tmp_path / "explained.html"
    assert cli_main(["caption", "--model", str(path), "--explain", "--explain-html", str(page), str(cat_photo)]) == 0
    library = captioner.load(path).caption(cat_photo, explain=True)[0][0]
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"{library.text}\t{library.log_prob:.3f}")
    assert [line.split()[0] for line in out[1:]] == [w.word for w in library.explanation.words]
    assert out[1].split()[1] == f"p={library.explanation.words[0].prob:.3f}"
    html = page.read_text()
    payload = json.loads(html.split("const DATA = ", 1)[1].split(";\n", 1)[0].replace("<\\/", "</"))
    assert payload[0]["captions"][0]["explanation"] == library.explanation.to_dict()
    assert "function renderExplanation" in html and payload[0]["photo"].startswith("data:image/jpeg;base64,")
    jpeg = __import__("base64").b64decode(payload[0]["photo"].split(",", 1)[1])
    assert Image.open(io.BytesIO(jpeg)).size == Image.open(cat_photo).size  # upright photo, under 800 px: as is
