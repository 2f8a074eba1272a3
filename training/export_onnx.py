"""Make a checkpoint's ONNX encoder files (captioner.backends), the int8 one calibrated on its training photos:

    python -m training.export_onnx --model PATH --format flickr8k --data-dir DIR [--photos 32]

`make onnx` runs it for the shipped model, and `make train` at the end of every run. The same checkpoint and
data always give the same files, byte for byte.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from captioner import Captioner, load
from captioner.export import export_onnx

from .datasets import FORMATS, DataError, Record, read_records

CALIBRATION_PHOTOS = 32


def calibration_photos(records: list[Record], count: int = CALIBRATION_PHOTOS) -> list[Path]:
    """`count` distinct photos spread evenly over the records, in their order; only files that exist."""
    paths = list(dict.fromkeys(r.image_path for r in records if r.image_path.is_file()))
    step = max(1, len(paths) // max(1, count))
    return paths[::step][:count]


def export_for_training(model: Captioner, checkpoint: Path, train_records: list[Record]) -> list[Path]:
    """Both files when training photos are on disk; the fp32 one alone when they are not (a feature cache only)."""
    photos = calibration_photos(train_records)
    if not photos:
        logging.getLogger("training.export_onnx").warning("no training photo on disk: %s gets no int8 encoder", checkpoint)
    return export_onnx(model, checkpoint, [model.preprocess(p) for p in photos])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export_onnx")
    p.add_argument("--model", required=True, help="checkpoint; the files are written beside it")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", default="train", help="the photos int8 is calibrated on")
    p.add_argument("--karpathy-json", default="")
    p.add_argument("--photos", type=int, default=CALIBRATION_PHOTOS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        records = read_records(args.format, args.data_dir, [args.split], args.karpathy_json or None)
        model = load(args.model, backend="torch")
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    photos = calibration_photos(records, args.photos)
    if not photos:
        print(f"error: no {args.split} photo of {args.data_dir} is on disk to calibrate int8 on", file=sys.stderr)
        return 2
    for path in export_onnx(model, Path(args.model), [model.preprocess(p) for p in photos]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
