"""A whole photo library from the command line: folders and globs in, one JSON line per photo out, broken
files reported and skipped, and --resume that continues a cut-off run without writing any photo twice."""

import json
import math
import shutil

import pytest

import captioner
from captioner.__main__ import main as cli_main
from captioner.bulk import expand

from .conftest import FIXTURES

PHOTOS = ["chelsea.jpg", "coffee.jpg", "imagenet-labrador.jpg"]


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "library"
    (root / "trip").mkdir(parents=True)
    shutil.copy(FIXTURES / PHOTOS[0], root / PHOTOS[0])
    shutil.copy(FIXTURES / PHOTOS[1], root / "trip" / PHOTOS[1])
    (root / "trip" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "notes.txt").write_text("not a photo")
    return root


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_but_float_noise(got, want) -> bool:
    """Equal words, labels and structure; scores equal to float noise, which differs with how photos are batched."""
    if isinstance(got, float) or isinstance(want, float):
        return math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-3)
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(same_but_float_noise(got[k], want[k]) for k in got)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(same_but_float_noise(g, w) for g, w in zip(got, want))
    return got == want


def test_expand_takes_folders_globs_and_files_once_each(library):
    found = expand([str(library), str(library / "*.jpg"), str(library / PHOTOS[0])])
    assert found == sorted([str(library / PHOTOS[0]), str(library / "trip" / PHOTOS[1]),
                            str(library / "trip" / "broken.jpg")])  # notes.txt is not an image


@pytest.mark.slow
def test_a_folder_is_captioned_line_by_line_and_a_broken_photo_skipped(library, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    assert cli_main(["caption", str(library), "--out", str(out), "--batch-size", "2", "--workers", "2",
                     "--no-progress"]) == 1  # one photo could not be read
    got = {line["image"]: line for line in lines(out)}
    assert set(got) == set(expand([str(library)]))
    assert "not a decodable image" in got[str(library / "trip" / "broken.jpg")]["error"]
    assert "broken.jpg" in capsys.readouterr().err
    model = captioner.load()  # batched in the library run, alone here: the same captions
    for name in (library / PHOTOS[0], library / "trip" / PHOTOS[1]):
        assert got[str(name)]["captions"][0]["text"] == model.caption(name)[0][0].text
        assert "grounding" in got[str(name)]
    assert cli_main(["caption", str(library), "--out", str(out)]) == 2  # never overwritten without --resume
    assert len(lines(out)) == 3


@pytest.mark.slow
def test_resume_continues_a_cut_off_run_without_duplicates(library, tmp_path):
    out = tmp_path / "captions.jsonl"
    cli_main(["caption", str(library), "--out", str(out), "--workers", "0", "--no-progress"])
    first = out.read_text().splitlines()
    out.write_text("\n".join(first[:-1]) + "\n" + first[-1][:25])  # a crash in the middle of the last line
    shutil.copy(FIXTURES / PHOTOS[2], library / PHOTOS[2])  # and a photo added since
    assert cli_main(["caption", str(library), "--out", str(out), "--resume", "--workers", "0", "--no-progress"]) == 0
    images = [line["image"] for line in lines(out)]  # every line is whole JSON again
    assert sorted(images) == sorted(set(images)) == sorted(expand([str(library)]))
    assert out.read_text().splitlines()[: len(first) - 1] == first[:-1]  # what was written stays as it was


@pytest.mark.slow
def test_the_ray_runner_captions_a_library_on_a_local_instance_and_resumes(library, tmp_path):
    """The `ray` extra on a local Ray instance: the same lines as the one-machine run, the broken photo
    reported, and a resumed run that adds only the new photo."""
    ray = pytest.importorskip("ray")
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert cli_main(["caption", str(library), "--out", str(local), "--workers", "0", "--no-progress"]) == 1
    try:
        assert cli_main(["caption", str(library), "--out", str(on_ray), "--ray", "--actors", "1", "--batch-size", "2",
                         "--no-progress"]) == 1
        got, want = (sorted(lines(path), key=lambda d: d["image"]) for path in (on_ray, local))
        assert same_but_float_noise(got, want), (got, want)  # Ray batches by 2, the local run all at once
        shutil.copy(FIXTURES / PHOTOS[2], library / PHOTOS[2])
        cli_main(["caption", str(library), "--out", str(on_ray), "--ray", "--actors", "1", "--resume", "--no-progress"])
    finally:
        ray.shutdown()
    names = [line["image"] for line in lines(on_ray)]
    assert len(names) == len(set(names)) == 4 and str(library / PHOTOS[2]) in names
