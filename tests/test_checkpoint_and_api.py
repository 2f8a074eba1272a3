"""Checkpoints round-trip without executing code; the public API and CLI behave as documented."""

import json
import os

import pytest
import torch

import captioner
from captioner import CheckpointError, ImageError
from captioner.__main__ import main as cli_main
from captioner.checkpoint import load, save
from captioner.vocab import SPECIALS

from . import images


@pytest.fixture(scope="module")
def saved_model(small_captioner, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save(path, small_captioner.checkpoint(metrics={"val": {"CIDEr": 1.0}}, info={"note": "test"}))
    return path


def test_round_trip_gives_identical_captions(small_captioner, saved_model, cat_photo):
    loaded = captioner.load(saved_model)
    assert loaded.vocab.itos == small_captioner.vocab.itos
    assert loaded.preprocess_cfg == small_captioner.preprocess_cfg
    assert loaded.metrics == {"val": {"CIDEr": 1.0}}
    a = small_captioner.caption([cat_photo], beam_size=3, n_best=2)[0]
    b = loaded.caption([cat_photo], beam_size=3, n_best=2)[0]
    assert [c.text for c in a] == [c.text for c in b]


def test_fp16_export_loads_as_float32(small_captioner, tmp_path):
    path = tmp_path / "half.safetensors"
    save(path, small_captioner.checkpoint(), dtype=torch.float16)
    full = tmp_path / "full.safetensors"
    save(full, small_captioner.checkpoint())
    assert path.stat().st_size < 0.6 * full.stat().st_size
    model = captioner.load(path)
    assert next(model.decoder.parameters()).dtype == torch.float32


def test_checkpoint_is_plain_safetensors_metadata(saved_model):
    header_len = int.from_bytes(saved_model.read_bytes()[:8], "little")  # safetensors: u64 length, JSON header
    header = json.loads(saved_model.read_bytes()[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == "captioner-checkpoint"
    assert {"encoder", "decoder", "vocab", "preprocess"} <= set(header["__metadata__"])


class _Payload:
    """Unpickling this calls os.system: a loader that ever unpickles would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickles_named_safetensors_are_refused_without_running_code(tmp_path, writer):
    import pickle

    marker = tmp_path / "code-ran"
    path = tmp_path / "model.safetensors"
    blob = {"decoder.out.bias": torch.zeros(3), "evil": _Payload(marker)}
    if writer == "torch.save":
        torch.save(blob, path)
    else:
        path.write_bytes(pickle.dumps(blob))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        captioner.load(path)
    assert not marker.exists()
    assert "system" in pickled_calls(path)  # and the file is armed: unpickling it would call os.system


def pickled_calls(path) -> set[str]:
    """The names of the functions a pickle (plain, or inside torch.save's zip) would import and call, read
    with pickletools without unpickling anything."""
    import pickletools
    import zipfile

    data = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            names.add(arg.split()[-1])
        elif "UNICODE" in op.name:
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            names.add(strings[-1])
    return names


def _rewrite_metadata(src, dst, **changes) -> None:
    from safetensors.torch import load_file, save_file

    from captioner.checkpoint import read_metadata

    save_file(load_file(str(src)), str(dst), metadata={**read_metadata(src), **changes})


@pytest.mark.parametrize("changes,message", [
    ({"format_version": "2"}, "format version 2"),
    ({"decoder": "{not json"}, "metadata is missing or malformed"),
    ({"vocab": json.dumps([*SPECIALS, *(f"w{i}" for i in range(46))])}, "decoder has 34 words, vocabulary 50"),
    ({"decoding": json.dumps({"grounded": True})}, "decodes grounded by default but has no grounding"),
], ids=["unknown version", "malformed json", "vocabulary size mismatch", "grounded without grounding"])
def test_unusable_metadata_raises_checkpoint_error_naming_the_file(saved_model, tmp_path, changes, message):
    bad = tmp_path / "unusable.safetensors"
    _rewrite_metadata(saved_model, bad, **changes)
    with pytest.raises(CheckpointError, match=f"unusable.safetensors.*{message}"):
        captioner.load(bad)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files_raise_checkpoint_error(saved_model, tmp_path, damage):
    data = saved_model.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        captioner.load(bad)


def test_incompatible_checkpoints_are_named(small_captioner, tmp_path):
    ck = small_captioner.checkpoint()
    ck.decoder["hidden_dim"] = 64  # weights no longer fit the config
    save(tmp_path / "x.safetensors", ck)
    with pytest.raises(CheckpointError, match="incompatible"):
        captioner.load(tmp_path / "x.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "something-else"})
    with pytest.raises(CheckpointError, match="not a captioner checkpoint"):
        load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        captioner.load(tmp_path / "missing.safetensors")


def test_save_is_atomic(small_captioner, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save(path, small_captioner.checkpoint())
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("captioner.checkpoint.save_file", explode)
    with pytest.raises(OSError):
        save(path, small_captioner.checkpoint())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_caption_accepts_paths_bytes_and_pil(small_captioner, cat_photo):
    from PIL import Image

    out = small_captioner.caption([cat_photo, str(cat_photo), cat_photo.read_bytes(), Image.open(cat_photo)], method="greedy")
    assert len(out) == 4 and len({c[0].text for c in out}) == 1
    single = small_captioner.caption(cat_photo, method="beam", beam_size=3, n_best=3)
    assert len(single) == 1 and len(single[0]) == 3
    c = single[0][0]
    assert isinstance(c.text, str) and c.tokens == c.text.split() and c.log_prob <= 0


def test_caption_rejects_bad_input_and_options(small_captioner, cat_photo):
    with pytest.raises(ImageError):
        small_captioner.caption([b"not an image"])
    with pytest.raises(ValueError):
        small_captioner.caption([cat_photo], method="telepathy")
    with pytest.raises(ValueError):
        small_captioner.caption([cat_photo], method="greedy", n_best=2)


def test_cli_prints_json_per_image(saved_model, cat_photo, coffee_photo, capsys):
    assert cli_main(["caption", "--model", str(saved_model), "--json", "--n-best", "2", str(cat_photo), str(coffee_photo)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["image"] for r in records] == [str(cat_photo), str(coffee_photo)]
    assert all(len(r["captions"]) == 2 and {"text", "log_prob"} <= set(r["captions"][0]) for r in records)


def test_cli_reports_errors(saved_model, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(images.truncated_jpeg())
    assert cli_main(["caption", "--model", str(saved_model), str(bad)]) == 1
    assert "bad.jpg" in capsys.readouterr().err
    assert cli_main(["caption", "--model", str(tmp_path / "none.safetensors"), str(bad)]) == 2


def test_saved_checkpoints_are_readable_by_others(small_captioner, tmp_path):
    """mkstemp makes 0600 files; a model served by another user (the container's) must be able to read it."""
    path = tmp_path / "shared.safetensors"
    save(path, small_captioner.checkpoint())
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_decoding_defaults_travel_in_the_checkpoint(small_captioner, tmp_path, cat_photo):
    from dataclasses import replace as dc_replace

    ck = small_captioner.checkpoint()
    plain, tuned = tmp_path / "plain.safetensors", tmp_path / "tuned.safetensors"
    save(plain, ck)
    save(tuned, dc_replace(ck, decoding={"length_penalty": 2.0, "no_repeat_ngram_size": 1}))
    a, b = captioner.load(plain), captioner.load(tuned)
    assert a.decoding == {} and b.decoding == {"length_penalty": 2.0, "no_repeat_ngram_size": 1}
    words = b.caption([cat_photo], beam_size=3)[0][0].tokens
    assert len(words) == len(set(words))  # no_repeat_ngram_size=1 from the checkpoint: no word twice
    explicit = b.caption([cat_photo], beam_size=3, length_penalty=0.0, no_repeat_ngram_size=0)[0][0]
    assert explicit.text == a.caption([cat_photo], beam_size=3)[0][0].text  # explicit options win


def test_words_a_caption_may_not_end_on_travel_in_the_checkpoint(small_captioner, tmp_path, cat_photo):
    from dataclasses import replace as dc_replace

    ck = small_captioner.checkpoint()
    tensors = dict(ck.tensors)
    bias = tensors["decoder.out.bias"].clone()
    bias[small_captioner.vocab.end_id] += 6.0  # a model that stops after a word or two
    tensors["decoder.out.bias"] = bias
    save(tmp_path / "eager.safetensors", dc_replace(ck, tensors=tensors))
    plain = captioner.load(tmp_path / "eager.safetensors").caption([cat_photo], method="greedy", max_length=12,
                                                                   min_length=1)[0][0]
    assert plain.finished and len(plain.tokens) == 1  # ends right after its first word: the rule must prevent it
    last = plain.tokens[-1]
    save(tmp_path / "ruled.safetensors", dc_replace(ck, tensors=tensors, decoding={"no_end_after": [last, "nope"]}))
    ruled = captioner.load(tmp_path / "ruled.safetensors")
    for method in ("greedy", "beam"):
        c = ruled.caption([cat_photo], method=method, max_length=12, min_length=1)[0][0]
        assert not (c.finished and c.tokens[-1] == last), (method, c.text)
    assert ruled.caption([cat_photo], method="greedy", max_length=12, min_length=1, no_end_after=[])[0][0].text == plain.text


def test_a_model_that_wants_to_stop_at_once_still_says_a_word(small_captioner, tmp_path, cat_photo):
    """<end> may not be the first word, whatever the method: the library never returns an empty caption."""
    from dataclasses import replace as dc_replace

    ck = small_captioner.checkpoint()
    tensors = dict(ck.tensors)
    bias = tensors["decoder.out.bias"].clone()
    bias[small_captioner.vocab.end_id] += 50.0  # <end> is by far the likeliest word at every step
    tensors["decoder.out.bias"] = bias
    save(tmp_path / "mute.safetensors", dc_replace(ck, tensors=tensors))
    mute = captioner.load(tmp_path / "mute.safetensors")
    for options in ({"method": "greedy"}, {"method": "sample", "seed": 3}, {"method": "beam", "beam_size": 3, "n_best": 3}):
        for c in mute.caption([cat_photo], **options)[0]:
            assert c.text and len(c.tokens) == 1 and c.finished, (options, c)
    with pytest.raises(ValueError, match=r"min_length must be in \[1, 50\]"):
        mute.caption([cat_photo], method="greedy", min_length=0)
