"""Command line: `python -m captioner caption [--model PATH] [options] IMAGE...`."""

from __future__ import annotations

import argparse
import json
import sys

from .checkpoint import CheckpointError
from .model import METHODS, default_model_path, load
from .preprocess import ImageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captioner")
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("caption", help="caption image files")
    cap.add_argument("images", nargs="+", metavar="IMAGE")
    cap.add_argument("--model", default=None, help=f"checkpoint (default: {default_model_path()})")
    cap.add_argument("--method", choices=METHODS, default="beam")
    cap.add_argument("--beam-size", type=int, default=3)
    cap.add_argument("--n-best", type=int, default=1)
    cap.add_argument("--max-length", type=int, default=20)
    cap.add_argument("--temperature", type=float, default=1.0)
    cap.add_argument("--top-k", type=int, default=0)
    cap.add_argument("--top-p", type=float, default=1.0)
    cap.add_argument("--seed", type=int, default=None)
    cap.add_argument("--json", action="store_true", help="one JSON object per image and line")
    args = parser.parse_args(argv)

    try:
        model = load(args.model)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = dict(method=args.method, beam_size=args.beam_size, n_best=args.n_best, max_length=args.max_length,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    status = 0
    for path in args.images:
        try:
            captions = model.caption([path], **options)[0]
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
