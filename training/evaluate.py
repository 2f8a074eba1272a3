"""Score a trained model on a split with the COCO caption toolkit.

    python -m training.evaluate --model PATH --format flickr8k|coco|karpathy --data-dir DIR --split test \
        [--beam-size K] [--length-penalty P] [--no-repeat-ngram N] [--out metrics.json] [--captions-out captions.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from captioner import load

from .datasets import FORMATS, DataError, read_records
from .features import _Images
from .metrics import coco_scores

log = logging.getLogger("training.evaluate")


def caption_records(model, records, beam_size: int, max_length: int, batch_size: int = 32, num_workers: int = 2,
                    **decoding) -> list[str]:
    loader = torch.utils.data.DataLoader(_Images([r.image_path for r in records], model.preprocess_cfg),
                                         batch_size=batch_size, num_workers=num_workers)
    method = "beam" if beam_size > 1 else "greedy"
    out = []
    for batch in loader:
        caps = model.decode(model.encode(batch), method=method, beam_size=max(beam_size, 1), max_length=max_length, **decoding)
        out.extend(c[0].text for c in caps)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate")
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--karpathy-json", default="")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--length-penalty", type=float, default=None, help="default: the checkpoint's setting")
    p.add_argument("--no-repeat-ngram", type=int, default=None, help="default: the checkpoint's setting")
    p.add_argument("--out", default=None, help="write metrics JSON here")
    p.add_argument("--captions-out", default=None, help="write [{image_id, caption}] JSON here")
    p.add_argument("--num-workers", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        records = read_records(args.format, args.data_dir, [args.split], args.karpathy_json or None)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = load(args.model)
    decoding = {"length_penalty": args.length_penalty, "no_repeat_ngram_size": args.no_repeat_ngram}
    caps = caption_records(model, records, args.beam_size, args.max_length, num_workers=args.num_workers, **decoding)
    scores = coco_scores(caps, [list(r.captions) for r in records])
    used = {k: v if v is not None else model.decoding.get(k, 0) for k, v in decoding.items()}
    used["no_end_after_words"] = len(model.decoding.get("no_end_after", ()))  # the checkpoint's bad-ending rule
    result = {"split": args.split, "images": len(records), "beam_size": args.beam_size, **used, **scores}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.captions_out:
        Path(args.captions_out).write_text(json.dumps(
            [{"image_id": r.image_id, "caption": c} for r, c in zip(records, caps)], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
