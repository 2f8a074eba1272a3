"""The library command beyond one machine: the same job on Ray Data (the optional `ray` extra).

    python -m captioner caption DIR --out captions.jsonl --ray [ADDRESS] [--actors N] [--batch-size 16]

Photo names go into a Ray dataset; `map_batches` runs them through a pool of `--actors` actors, each holding
one Captioner, which read, encode and decode a batch at a time; this process writes the lines as batches come
back, so the output file, `--resume` and the summary are those of `captioner.bulk`. Without an address Ray
starts a local instance; with one (`auto`, or `ray://head:10001`) it joins that cluster, whose workers must see
the photos at the same paths (a shared file system) and have this package installed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .bulk import Summary, _progress, caption_lines, open_library, read_photo, write_lines
from .model import load
from .options import DecodeOptions


class CaptionActor:
    """One Captioner per Ray actor: a batch of photo names in, their JSON lines out."""

    def __init__(self, model_path: str | None, backend: str | None, options: DecodeOptions):
        self.model, self.options = load(model_path, backend), options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        names = [str(name) for name in batch["image"]]
        items = [read_photo(name, self.model.preprocess_cfg) for name in names]
        return {"line": [json.dumps(line) for line in caption_lines(self.model, names, items, self.options)]}


def caption_library_ray(model_path: str | None, paths: Sequence[str], out: Path, options: DecodeOptions, *,
                        backend: str | None = None, address: str | None = None, actors: int = 2,
                        cpus_per_actor: float = 1.0, resume: bool = False, batch_size: int = 16,
                        progress: bool = True) -> Summary:
    """`captioner.bulk.caption_library`'s job, the captioning done by `actors` Ray actors."""
    import ray  # only here: the extra is optional

    todo, summary = open_library(paths, out, resume)
    started, bar = time.perf_counter(), _progress(len(todo), progress)
    if todo:
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        dataset = ray.data.from_items([{"image": name} for name in todo]).map_batches(
            CaptionActor, fn_constructor_kwargs={"model_path": model_path, "backend": backend, "options": options},
            batch_size=batch_size, concurrency=actors, num_cpus=cpus_per_actor, batch_format="numpy")
        with open(out, "a", encoding="utf-8") as f:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                write_lines(f, [json.loads(line) for line in batch["line"]], summary)
                bar.update(len(batch["line"]))
    bar.close()
    summary.seconds = time.perf_counter() - started
    return summary
