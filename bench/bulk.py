"""Bulk benchmark: `python -m captioner caption DIR --out FILE` over real photos, against the encoder's own
batched rate on the same photos already in memory (the ceiling: decoding JPEGs in worker processes should
hide behind it) and against one photo at a time (batch 1, no workers), side by side in one run.

    make bench-bulk [ARGS="--photos 1000 --data-dir ../shared/data/flickr8k/images"]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from captioner import load
from captioner.bulk import caption_library, expand


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="../shared/data/flickr8k/images")
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    paths = expand([args.data_dir])[: args.photos]
    model = load()
    options = model.default_options
    print(f"{len(paths)} photos from {args.data_dir}; torch threads {torch.get_num_threads()}, {os.cpu_count()} cores")

    batch = torch.stack([model.preprocess(path) for path in paths[: 4 * args.batch_size]])
    model.encode(batch[: args.batch_size])  # warm-up
    t0 = time.perf_counter()
    vectors = [model.encode(chunk) for chunk in batch.split(args.batch_size)]
    encoder_rate = len(batch) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for v in vectors:
        model.decode(v, options)
    ceiling = len(batch) / (len(batch) / encoder_rate + time.perf_counter() - t0)

    rates = {}
    for label, size, workers in (("bulk", args.batch_size, args.workers), ("one at a time", 1, 0)):
        with tempfile.TemporaryDirectory() as tmp:
            summary = caption_library(model, paths, Path(tmp) / "out.jsonl", options, batch_size=size, workers=workers,
                                      progress=False)
        rates[label] = summary.captioned / summary.seconds
        print(f"{label:>14} (batch {size}, up to {workers} workers): {rates[label]:6.1f} photos/s; {summary.line()}")
    print(f"in memory, batches of {args.batch_size}: encoder {encoder_rate:6.1f} photos/s, encoder + decoder "
          f"{ceiling:6.1f} photos/s")
    print(f"bulk vs the encoder's batched rate: {rates['bulk'] / encoder_rate:.2f}x; vs encoder + decoder in memory: "
          f"{rates['bulk'] / ceiling:.2f}x; time per photo, bulk vs one at a time: "
          f"{rates['one at a time'] / rates['bulk']:.2f}x")


if __name__ == "__main__":
    main()
