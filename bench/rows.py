"""The in-process rows of `make bench-backends`, and a worker that runs them on another source tree's captioner.

This file imports no `captioner` of its own, so the same rows can time this tree's backends and, in a worker
process, the code of an earlier revision (bench.baseline). They use only what every revision's model has:
`preprocess`, `encode` and `caption(..., explain=True)`.

Worker: `python bench/rows.py TREE MODEL THREADS PHOTO...` loads MODEL with TREE's captioner, says "ready" and
the file that captioner came from, then for each row name read on stdin runs that row once and says "done".
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Row = Callable[[Any, list[Path]], Callable[[], object]]  # (model, photos) -> one run of the row


def _eight(photos: list[Path]) -> list[Path]:
    return [photos[i % len(photos)] for i in range(8)]


ROWS: dict[str, Row] = {
    "encoder, batch 1": lambda m, photos: (lambda x=m.preprocess(photos[0]).unsqueeze(0): m.encode(x)),
    "encoder, batch 8 (per photo)": lambda m, photos: (
        lambda x=torch.stack([m.preprocess(p) for p in _eight(photos)]): m.encode(x)),
    "one photo end to end": lambda m, photos: (lambda: m.caption([photos[0]])),
    "8 photos batched (per photo)": lambda m, photos: (lambda: m.caption(_eight(photos))),
    "explain, one photo": lambda m, photos: (lambda: m.caption([photos[0]], explain=True)),
}
PHOTOS_PER_RUN = {"encoder, batch 8 (per photo)": 8, "8 photos batched (per photo)": 8}


def serve(tree: Path, model: Path, threads: int, photos: list[Path]) -> None:
    """The worker's loop (see the module's docstring). `tree` takes the place of this script's folder on sys.path
    before captioner is imported, so TREE's captioner is the one loaded."""
    sys.path[0] = str(tree)
    import captioner

    torch.set_num_threads(threads)
    loaded = captioner.load(model)
    runs = {name: make(loaded, photos) for name, make in ROWS.items()}
    print("ready", captioner.__file__, flush=True)
    for line in sys.stdin:
        runs[line.strip()]()
        print("done", flush=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), [Path(p) for p in sys.argv[4:]])
