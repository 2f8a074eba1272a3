"""Readers for captioned image sets. Each yields the same records, whatever the on-disk format.

* ``flickr8k``: the official `Flickr8k.token.txt` + `Flickr_8k.{train,dev,test}Images.txt`
  (also Flickr30k's token file, which has the same `IMAGE#N<TAB>caption` layout).
* ``karpathy``: Karpathy's split JSON (`dataset_{coco,flickr8k,flickr30k}.json`); `restval` counts as train.
* ``coco``: the official `annotations/captions_{train,val}{2014,2017}.json` via pycocotools.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
FORMATS = ("flickr8k", "karpathy", "coco")


class DataError(ValueError):
    """Malformed or missing data, with the file and line/record it came from."""


@dataclass(frozen=True)
class Record:
    image_path: Path
    image_id: str
    split: str  # "train" | "val" | "test"
    captions: tuple[str, ...]


_SPLIT_ALIASES = {"dev": "val", "restval": "train", "train": "train", "val": "val", "test": "test"}


def normalise_split(split: str) -> str:
    try:
        return _SPLIT_ALIASES[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; use train, val (dev) or test") from None


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    return path.read_text(encoding="utf-8").splitlines()


def read_flickr8k(data_dir: str | Path, splits: list[str], image_dir: str = "images") -> list[Record]:
    """Flickr8k's official files; the split lists select images, the token file gives their captions."""
    root = Path(data_dir)
    token_file = root / "Flickr8k.token.txt"
    captions: dict[str, list[str]] = OrderedDict()
    for lineno, line in enumerate(_read_lines(token_file), 1):
        if not line.strip():
            continue
        key, sep, text = line.partition("\t")
        name, hash_, _ = key.partition("#")
        if not sep or not hash_:
            raise DataError(f"{token_file}:{lineno}: expected 'IMAGE.jpg#N<TAB>caption', got {line[:80]!r}")
        if not text.strip():
            raise DataError(f"{token_file}:{lineno}: empty caption for {name}")
        captions.setdefault(name, []).append(text.strip())
    files = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt"}
    records = []
    for split in dict.fromkeys(normalise_split(s) for s in splits):
        list_file = root / files[split]
        for lineno, name in enumerate(_read_lines(list_file), 1):
            name = name.strip()
            if not name:
                continue
            if name not in captions:
                raise DataError(f"{list_file}:{lineno}: image {name} has no captions in {token_file.name}")
            records.append(Record(root / image_dir / name, name, split, tuple(captions[name])))
    return records


def read_karpathy(json_path: str | Path, image_root: str | Path, splits: list[str]) -> list[Record]:
    """Karpathy's split file: images[].{filepath?, filename, split, sentences[].raw}."""
    json_path, image_root = Path(json_path), Path(image_root)
    if not json_path.is_file():
        raise DataError(f"missing file: {json_path}")
    try:
        images = json.loads(json_path.read_text(encoding="utf-8"))["images"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise DataError(f"{json_path}: not a Karpathy split file ({exc})") from exc
    wanted = {normalise_split(s) for s in splits}
    records = []
    for i, img in enumerate(images):
        try:
            split = normalise_split(img["split"])
            if split not in wanted:
                continue
            caps = tuple(s["raw"].strip() for s in img["sentences"])
            path = image_root / img.get("filepath", "") / img["filename"]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{json_path}: images[{i}] is malformed ({exc})") from exc
        if not caps or not all(caps):
            raise DataError(f"{json_path}: images[{i}] ({img.get('filename')}) has an empty caption")
        records.append(Record(path, str(img.get("cocoid", img.get("imgid", img["filename"]))), split, caps))
    return records


def read_coco(data_dir: str | Path, splits: list[str], year: str = "2014") -> list[Record]:
    """COCO's official layout: annotations/captions_{train,val}YEAR.json and {train,val}YEAR/ image folders."""
    from pycocotools.coco import COCO

    root = Path(data_dir)
    coco_split = {"train": "train", "val": "val"}
    records = []
    for split in dict.fromkeys(normalise_split(s) for s in splits):
        if split not in coco_split:
            raise DataError("COCO's official files have no captioned test split; use the Karpathy split JSON")
        ann = root / "annotations" / f"captions_{coco_split[split]}{year}.json"
        if not ann.is_file():
            raise DataError(f"missing file: {ann}")
        coco = COCO(str(ann))
        for img_id in sorted(coco.imgs):
            info = coco.imgs[img_id]
            caps = tuple(a["caption"].strip() for a in coco.imgToAnns.get(img_id, []))
            if not caps or not all(caps):
                raise DataError(f"{ann}: image {img_id} ({info['file_name']}) has no or an empty caption")
            records.append(Record(root / f"{coco_split[split]}{year}" / info["file_name"], str(img_id), split, caps))
    return records


def read_records(fmt: str, data_dir: str | Path, splits: list[str], karpathy_json: str | None = None,
                 coco_year: str = "2014") -> list[Record]:
    if fmt == "flickr8k":
        return read_flickr8k(data_dir, splits)
    if fmt == "karpathy":
        json_path = Path(karpathy_json) if karpathy_json else None
        if json_path is None:
            raise DataError("format 'karpathy' needs karpathy_json (e.g. dataset_coco.json)")
        if not json_path.is_absolute():
            json_path = Path(data_dir) / json_path
        return read_karpathy(json_path, data_dir, splits)
    if fmt == "coco":
        return read_coco(data_dir, splits, coco_year)
    raise ValueError(f"unknown data format {fmt!r}; use one of {FORMATS}")


def check_images(records: list[Record], skip_missing: bool) -> list[Record]:
    """Fail on the first missing image, or drop missing ones with one warning giving the count."""
    missing = [r for r in records if not r.image_path.is_file()]
    if not missing:
        return records
    if not skip_missing:
        raise DataError(f"missing image: {missing[0].image_path} ({len(missing)} missing in all; "
                        "pass --skip_missing true to skip them)")
    log.warning("skipping %d missing images (first: %s)", len(missing), missing[0].image_path)
    gone = {id(r) for r in missing}
    return [r for r in records if id(r) not in gone]
