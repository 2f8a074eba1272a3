"""Caption a whole photo library: folders, globs and files in, one JSON line per photo out.

    python -m captioner caption ~/Pictures 'scans/*.png' --out captions.jsonl [--resume] [--batch-size 16]

Photos are read and preprocessed in worker processes while the encoder runs on the batch before, the
results are written (and flushed) one line per photo as each batch completes, and `--resume` skips the
photos already in the file, so an interrupted run continues where it stopped and never writes a photo
twice. A file that cannot be read gets an `{"image", "error"}` line and the run goes on.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .model import Caption, Captioner
from .options import DecodeOptions
from .preprocess import DEFAULT_MAX_PIXELS, PreprocessConfig, preprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def expand(inputs: Sequence[str]) -> list[str]:
    """Files as given; a folder's images (recursively, by suffix); a glob's matches. Sorted within each input,
    duplicates dropped, so a run's order (and what --resume skips) is fixed."""
    found, seen = [], set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif glob.has_magic(item):
            matches = sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            matches = [item]
        for match in matches:
            if match not in seen:
                seen.add(match)
                found.append(match)
    return found


class ImageFiles(Dataset):
    """Image files preprocessed in DataLoader workers: (index, tensor or None, what went wrong or None), so a
    file that cannot be read is reported, not fatal (training's feature extraction raises on it instead)."""

    def __init__(self, paths: Sequence[str | Path], cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.paths, self.cfg, self.max_pixels = list(paths), cfg, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return i, *read_photo(self.paths[i], self.cfg, self.max_pixels)


def read_photo(path: str | Path, cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor | None, str | None]:
    """(preprocessed tensor, None), or (None, what went wrong) for a file that cannot be read."""
    try:
        return preprocess(path, cfg, max_pixels), None
    except Exception as exc:  # whatever a decoder raises on a damaged file, reported with the file's name
        return None, str(exc) or type(exc).__name__


def decode_workers(requested: int, device: str | torch.device) -> int:
    """How many of `requested` DataLoader workers to start for decoding images the encoder runs on `device`.
    On a GPU all of them: the CPU is otherwise idle. On the CPU only the cores the encoder's torch threads
    leave free: a worker sharing a core with them stalls those threads at every synchronisation point
    (docs/experiments.md has the measurement)."""
    if torch.device(device).type != "cpu":
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(requested, cores - torch.get_num_threads()))


def _keep_failures(items):
    return items  # a batch stays a list: failed photos have no tensor to stack


def done_images(out: Path) -> set[str]:
    """The photos `out` already holds. A last line cut short by a crash is removed from the file first, so
    appending never leaves a broken line behind."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        out.write_bytes(data)
    return {json.loads(line)["image"] for line in data.decode().splitlines() if line.strip()}


@dataclass
class Summary:
    captioned: int = 0
    failed: int = 0
    skipped: int = 0  # already in the output (--resume)
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.captioned / self.seconds if self.seconds else 0.0
        return (f"{self.captioned} captioned, {self.failed} unreadable, {self.skipped} already done; "
                f"{self.seconds:.1f} s ({rate:.1f} photos/s)")


def batches(model: Captioner, paths: Sequence[str], batch_size: int, workers: int) -> Iterator[list]:
    """Batches of `ImageFiles` items, read by at most `workers` processes (`decode_workers` of them)."""
    workers = decode_workers(workers, next(model.encoder.parameters()).device)
    loader = DataLoader(ImageFiles(paths, model.preprocess_cfg), batch_size=batch_size, num_workers=workers,
                        collate_fn=_keep_failures, prefetch_factor=2 if workers else None)
    yield from loader


def open_library(paths: Sequence[str], out: Path, resume: bool) -> tuple[list[str], Summary]:
    """The photos still to caption into `out` and a summary counting the ones it already holds; refuses to
    overwrite an existing file unless resuming."""
    if out.exists() and not resume:
        raise FileExistsError(f"{out} exists: pass --resume to continue it, or remove it")
    done = done_images(out) if resume else set()
    todo = [p for p in paths if p not in done]
    return todo, Summary(skipped=len(paths) - len(todo))


def caption_library(model: Captioner, paths: Sequence[str], out: Path, options: DecodeOptions, *,
                    resume: bool = False, batch_size: int = 16, workers: int = 2, progress: bool = True) -> Summary:
    """Caption every photo of `paths` not yet in `out` into it, one JSON line each, batch by batch."""
    todo, summary = open_library(paths, out, resume)
    started, bar = time.perf_counter(), _progress(len(todo), progress)
    with open(out, "a", encoding="utf-8") as f:
        for batch in batches(model, todo, batch_size, workers) if todo else []:
            names = [todo[i] for i, _, _ in batch]
            write_lines(f, caption_lines(model, names, [(t, e) for _, t, e in batch], options), summary)
            bar.update(len(batch))
    bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def caption_lines(model: Captioner, names: list[str], items: list[tuple[torch.Tensor | None, str | None]],
                  options: DecodeOptions) -> list[dict]:
    """Each photo's JSON line, from its preprocessed tensor or what went wrong reading it: the photos read are
    encoded and decoded as one batch."""
    ok = [(name, tensor) for name, (tensor, _) in zip(names, items) if tensor is not None]
    captions = model.decode(model.encode(torch.stack([t for _, t in ok])), options) if ok else []
    by_name = {name: caps for (name, _), caps in zip(ok, captions)}
    return [photo_record(name, by_name[name]) if tensor is not None else {"image": name, "error": error}
            for name, (tensor, error) in zip(names, items)]


def write_lines(f, lines: list[dict], summary: Summary) -> None:
    """Append a batch's lines and flush, counting them and reporting the unreadable ones on stderr."""
    for line in lines:
        if "error" in line:
            print(f"error: {line['image']}: {line['error']}", file=sys.stderr)
            summary.failed += 1
        else:
            summary.captioned += 1
        f.write(json.dumps(line) + "\n")
    f.flush()


def photo_record(name: str, captions: list[Caption]) -> dict:
    """One photo's JSON line: its captions, best first, and its grounding evidence."""
    image = captions[0].image
    return {"image": name, "captions": [c.to_dict() for c in captions],
            "grounding": image.to_dict() if image is not None else None}


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    """A tqdm bar on stderr when tqdm is installed (it is not in the serving image)."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="photo", desc="captioning")
