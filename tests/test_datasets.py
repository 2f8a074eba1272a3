"""Each reader on a small fixture in its real on-disk format; clear errors for bad data."""

import json

import pytest
from PIL import Image

from training.datasets import DataError, check_images, read_coco, read_flickr8k, read_karpathy, read_records


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


@pytest.fixture
def flickr_dir(tmp_path):
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        _img(tmp_path / "images" / n)
    (tmp_path / "Flickr8k.token.txt").write_text(
        "a.jpg#0\tA dog runs .\na.jpg#1\tA brown dog\nb.jpg#0\tA cat sleeps\nc.jpg#0\tTwo birds\n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a.jpg\nb.jpg\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("c.jpg\n")
    return tmp_path


def test_flickr8k_reader(flickr_dir):
    recs = read_flickr8k(flickr_dir, ["train", "dev"])
    assert [(r.image_id, r.split, len(r.captions)) for r in recs] == [("a.jpg", "train", 2), ("b.jpg", "train", 1), ("c.jpg", "val", 1)]
    assert recs[0].captions[0] == "A dog runs ." and recs[0].image_path == flickr_dir / "images" / "a.jpg"


def test_flickr8k_errors_name_file_and_line(flickr_dir):
    (flickr_dir / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog\nb.jpg#0\t   \n")
    with pytest.raises(DataError, match=r"Flickr8k.token.txt:2: empty caption"):
        read_flickr8k(flickr_dir, ["train"])
    (flickr_dir / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog\n")
    with pytest.raises(DataError, match=r"Flickr_8k.trainImages.txt:2: image b.jpg has no captions"):
        read_flickr8k(flickr_dir, ["train"])
    with pytest.raises(DataError, match="missing file"):
        read_flickr8k(flickr_dir / "nowhere", ["train"])


def test_karpathy_reader_counts_restval_as_train(tmp_path):
    data = {"images": [
        {"filepath": "train2014", "filename": "x.jpg", "split": "train", "cocoid": 1, "sentences": [{"raw": "a cat"}]},
        {"filepath": "val2014", "filename": "y.jpg", "split": "restval", "cocoid": 2, "sentences": [{"raw": "a dog"}]},
        {"filepath": "val2014", "filename": "z.jpg", "split": "val", "cocoid": 3, "sentences": [{"raw": "a cow"}]},
        {"filepath": "val2014", "filename": "w.jpg", "split": "test", "cocoid": 4, "sentences": [{"raw": "a pig"}]},
    ]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    recs = read_karpathy(tmp_path / "dataset_coco.json", tmp_path, ["train"])
    assert [r.image_id for r in recs] == ["1", "2"] and recs[1].image_path == tmp_path / "val2014" / "y.jpg"
    recs = read_records("karpathy", tmp_path, ["val", "test"], karpathy_json="dataset_coco.json")
    assert [(r.image_id, r.split) for r in recs] == [("3", "val"), ("4", "test")]
    data["images"][0]["sentences"] = [{"raw": " "}]
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"images\[0\].*empty caption"):
        read_karpathy(tmp_path / "dataset_coco.json", tmp_path, ["train"])


def test_coco_reader_official_layout(tmp_path):
    ann = {"images": [{"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "width": 8, "height": 8}],
           "annotations": [{"id": 1, "image_id": 9, "caption": "A plate of food."},
                           {"id": 2, "image_id": 9, "caption": "Some food on a plate."}],
           "info": {}, "licenses": [], "type": "captions"}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2014.json").write_text(json.dumps(ann))
    recs = read_coco(tmp_path, ["val"], "2014")
    assert len(recs) == 1 and recs[0].image_path == tmp_path / "val2014" / "COCO_val2014_000000000009.jpg"
    assert recs[0].captions == ("A plate of food.", "Some food on a plate.")
    with pytest.raises(DataError, match="captions_train2014.json"):
        read_coco(tmp_path, ["train"], "2014")


def test_missing_images_fail_or_are_skipped_with_a_count(flickr_dir, caplog):
    (flickr_dir / "images" / "b.jpg").unlink()
    recs = read_flickr8k(flickr_dir, ["train"])
    with pytest.raises(DataError, match=r"b.jpg \(1 missing"):
        check_images(recs, skip_missing=False)
    kept = check_images(recs, skip_missing=True)
    assert [r.image_id for r in kept] == ["a.jpg"] and "skipping 1 missing" in caplog.text
