"""Command line: `python -m captioner caption [--model PATH] [--beam-size K ...] IMAGE...`; the decoding flags
come from `DecodeOptions`, and those not given keep the model's own defaults."""

from __future__ import annotations

import argparse
import json
import sys

from .checkpoint import CheckpointError
from .model import default_model_path, load
from .options import add_arguments, from_arguments
from .preprocess import ImageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captioner")
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("caption", help="caption image files")
    cap.add_argument("images", nargs="+", metavar="IMAGE")
    cap.add_argument("--model", default=None, help=f"checkpoint (default: {default_model_path()})")
    add_arguments(cap)
    cap.add_argument("--json", action="store_true", help="one JSON object per image and line")
    args = parser.parse_args(argv)

    try:
        model = load(args.model)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        options = model.default_options.updated(from_arguments(args), len(model.vocab), public_only=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = 0
    for path in args.images:
        try:
            captions = model.caption([path], options)[0]
        except (FileNotFoundError, ImageError, ValueError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            record = {"image": path, "captions": [{"text": c.text, "log_prob": round(c.log_prob, 4)} for c in captions]}
            print(json.dumps(record))
        else:
            for c in captions:
                print(f"{path}\t{c.text}\t{c.log_prob:.3f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
