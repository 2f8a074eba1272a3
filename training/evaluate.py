"""Score a trained model on a split with the COCO caption toolkit.

    python -m training.evaluate --model PATH --format flickr8k|coco|karpathy --data-dir DIR --split test \
        [--beam-size K] [--length-penalty P] [--no-repeat-ngram-size N] ... [--out metrics.json] [--captions-out captions.json]

Decoding flags are `DecodeOptions`' (as in `python -m captioner caption`); those not given keep the model's
own defaults. Beside the toolkit's scores it reports the captions' fluency (`training.fluency`) and the same
rows for the first human reference of each photo, object hallucination (CHAIR, `training.hallucination`) and
the share of photos answered low-confidence. Training scores its final model with `caption_records` too, so a
checkpoint's stored metrics are what this command reports for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from captioner import Caption, Captioner, load
from captioner.backends import BACKENDS
from captioner.options import DecodeOptions, add_arguments, from_arguments

from .datasets import FORMATS, DataError, Record, read_records
from .features import image_loader
from .fluency import fluency
from .hallucination import chair, low_confidence_pct
from .metrics import coco_scores

log = logging.getLogger("training.evaluate")


def caption_records(model: Captioner, records: list[Record], options: Sequence[DecodeOptions], batch_size: int = 32,
                    num_workers: int = 2) -> list[list[Caption]]:
    """For each options, the model's best caption of each record's image: files read, encoded (once) and
    decoded as served."""
    loader = image_loader([r.image_path for r in records], model.preprocess_cfg, batch_size, num_workers,
                          next(model.encoder.parameters()).device)
    out: list[list[Caption]] = [[] for _ in options]
    for batch in loader:
        features = model.encode(batch)
        for captions, opts in zip(out, options):
            captions.extend(c[0] for c in model.decode(features, opts))
    return out


def evaluate(model: Captioner, records: list[Record], options: Sequence[DecodeOptions],
             num_workers: int = 2) -> list[tuple[dict, list[str]]]:
    """For each options: COCO-toolkit scores plus the captions' fluency and hallucination, and the captions they
    were computed from."""
    refs = [list(r.captions) for r in records]
    out = []
    for captions in caption_records(model, records, options, num_workers=num_workers):
        texts = [c.text for c in captions]
        out.append(({**coco_scores(texts, refs), "fluency": fluency(texts), "hallucination": chair(texts, refs),
                     "low_confidence_pct": low_confidence_pct(captions)}, texts))
    return out


def human_fluency(records: list[Record]) -> dict:
    """The fluency rows of the first human reference of each photo: the yardstick for a model's."""
    return fluency([r.captions[0] for r in records])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate")
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--karpathy-json", default="")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="what runs the encoder and the decoding step "
                   "(default: $CAPTIONER_BACKEND, else captioner's default)")
    add_arguments(p)
    p.add_argument("--out", default=None, help="write metrics JSON here")
    p.add_argument("--captions-out", default=None, help="write [{image_id, caption}] JSON here")
    p.add_argument("--num-workers", type=int, default=2, help="image-decoding workers at most (on the CPU: only spare cores)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        records = read_records(args.format, args.data_dir, [args.split], args.karpathy_json or None)
        model = load(args.model, args.backend)
        options = model.default_options.updated(from_arguments(args), len(model.vocab), public_only=True)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    [(scores, captions)] = evaluate(model, records, [options], num_workers=args.num_workers)
    used = {k: v for k, v in options.public_dict().items() if k != "seed"}
    result = {"split": args.split, "images": len(records), "backend": model.backend, **used, "no_end_after_words": len(options.no_end_after),
              **scores, "human_fluency": human_fluency(records)}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.captions_out:
        Path(args.captions_out).write_text(json.dumps(
            [{"image_id": r.image_id, "caption": c} for r, c in zip(records, captions)], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
