"""Feature cache: the encoder's vector v for every image, computed once and memory-mapped as fp16.

Training the decoder on cached vectors is what makes CPU training practical: the CNN runs once per image
instead of once per image per epoch. The cache key covers the encoder, its weights, the preprocessing
and the image list, so any change builds a new cache and an unchanged setup reuses the old one.
Extraction writes rows in order and records progress after each flushed chunk, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from captioner.bulk import ImageFiles, decode_workers
from captioner.model import encode_images
from captioner.preprocess import PreprocessConfig

log = logging.getLogger(__name__)


class ImageDataset(ImageFiles):
    """Image files -> preprocessed tensors, for a DataLoader (feature extraction, evaluation): a file that
    cannot be read stops the run, naming the file (a bare PIL error in a worker says nothing useful)."""

    def __getitem__(self, i: int) -> torch.Tensor:
        _, tensor, error = super().__getitem__(i)
        if tensor is None:
            raise RuntimeError(f"cannot read image {self.paths[i]}: {error}")
        return tensor


def image_loader(paths: list[Path], cfg: PreprocessConfig, batch_size: int, num_workers: int,
                 device: str | torch.device) -> DataLoader:
    """Batches of preprocessed images, in order, decoded by `decode_workers` workers (or in this process)."""
    workers = decode_workers(num_workers, device)
    return DataLoader(ImageDataset(paths, cfg), batch_size=batch_size, num_workers=workers,
                      prefetch_factor=4 if workers else None)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(encoder_id: str, cfg: PreprocessConfig, names: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"encoder": encoder_id, "preprocess": cfg.to_dict()}, sort_keys=True).encode())
    for name in names:
        h.update(name.encode() + b"\0")
    return h.hexdigest()[:20]


def relative_names(paths: list[Path], root: Path) -> list[str]:
    """Image names relative to the data folder: moving or re-mounting a data set keeps its cache. Each folder
    is resolved once (a data set has a few folders and up to hundreds of thousands of files)."""
    root = Path(root).resolve()
    folders: dict[Path, Path] = {}
    names = []
    for path in map(Path, paths):
        folder = folders.get(path.parent)
        if folder is None:
            folder = folders[path.parent] = path.parent.resolve().relative_to(root)
        names.append((folder / path.name).as_posix())
    return names


class FeatureCache:
    """features.f16 ([N, D] fp16 memmap) + index.json (image order, key info) + progress.json."""

    def __init__(self, root: Path, data_root: Path):
        self.root, self.data_root = root, Path(data_root)
        self.index = json.loads((root / "index.json").read_text())
        n, d = self.index["shape"]
        self.array = np.memmap(root / "features.f16", dtype=np.float16, mode="r", shape=(n, d))
        self.row = {path: i for i, path in enumerate(self.index["images"])}

    def tensor(self, paths: list[Path]) -> torch.Tensor:
        """float32 vectors for `paths`, in that order."""
        rows = [self.row[name] for name in relative_names(paths, self.data_root)]
        return torch.from_numpy(np.asarray(self.array[rows], dtype=np.float32))


def _progress(root: Path) -> int:
    p = root / "progress.json"
    return json.loads(p.read_text())["done"] if p.is_file() else 0


def cache_root(cache_dir: str | Path, encoder_id: str, cfg: PreprocessConfig, paths: list[Path], data_root: Path) -> Path:
    """The one place the cache's folder (its key) is computed."""
    return Path(cache_dir) / cache_key(encoder_id, cfg, sorted(set(relative_names(paths, data_root))))


def is_complete(root: Path) -> bool:
    return (root / "index.json").is_file() and _progress(root) >= json.loads((root / "index.json").read_text())["shape"][0]


def is_cached(cache_dir: str | Path, encoder_id: str, cfg: PreprocessConfig, paths: list[Path], data_root: Path) -> bool:
    """Whether every image's vector is already in the cache (then the images need not be read again)."""
    return is_complete(cache_root(cache_dir, encoder_id, cfg, paths, data_root))


def _create(root: Path, encoder_id: str, cfg: PreprocessConfig, names: list[str], dim: int) -> None:
    """An empty cache: the index (image order, what made the vectors) and a zeroed [N, dim] array."""
    root.mkdir(parents=True, exist_ok=True)
    np.memmap(root / "features.f16", dtype=np.float16, mode="w+", shape=(len(names), dim)).flush()
    index = {"encoder": encoder_id, "preprocess": cfg.to_dict(), "shape": [len(names), dim], "images": names}
    (root / "index.json").write_text(json.dumps(index))


def store(cache_dir: str | Path, encoder_id: str, cfg: PreprocessConfig, paths: list[Path], data_root: Path,
          vectors: np.ndarray) -> Path:
    """A complete cache of vectors already in hand (`vectors[i]` is `paths[i]`'s), under the key training
    computes for those paths: simulated data sets (`training.synthetic`) need no image files."""
    names = relative_names(paths, data_root)
    order = sorted(range(len(names)), key=names.__getitem__)
    root = cache_root(cache_dir, encoder_id, cfg, paths, data_root)
    _create(root, encoder_id, cfg, [names[i] for i in order], vectors.shape[1])
    array = np.memmap(root / "features.f16", dtype=np.float16, mode="r+", shape=vectors.shape)
    array[:] = vectors[order]
    array.flush()
    (root / "progress.json").write_text(json.dumps({"done": len(names)}))
    return root


def build_or_load(
    cache_dir: str | Path,
    encoder: torch.nn.Module,
    encoder_id: str,
    cfg: PreprocessConfig,
    paths: list[Path],
    data_root: Path,
    batch_size: int = 32,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> FeatureCache:
    """Return the cache for (encoder, preprocessing, images), extracting whatever is not there yet."""
    names = sorted(set(relative_names(paths, data_root)))
    paths = [Path(data_root) / name for name in names]
    root = cache_root(cache_dir, encoder_id, cfg, paths, data_root)
    n, d = len(paths), int(encoder.out_dim)
    if not (root / "index.json").is_file():
        _create(root, encoder_id, cfg, names, d)
    done = _progress(root)
    if done >= n:
        log.info("feature cache hit: %s (%d images)", root, n)
        return FeatureCache(root, data_root)
    first = done
    if done:
        log.info("resuming feature extraction at image %d of %d", done, n)
    array = np.memmap(root / "features.f16", dtype=np.float16, mode="r+", shape=(n, d))
    loader = image_loader(paths[done:], cfg, batch_size, num_workers, device)
    encoder = encoder.eval().to(device).to(memory_format=torch.channels_last)
    start = time.perf_counter()
    bar = tqdm(total=n, initial=done, unit="img", desc="features", disable=not progress)
    with torch.inference_mode():
        for batch in loader:
            v = encode_images(encoder, batch.to(device), cfg.hflip_average).float().cpu().numpy()
            array[done : done + len(v)] = v.astype(np.float16)
            done += len(v)
            array.flush()
            (root / "progress.json").write_text(json.dumps({"done": done}))
            bar.update(len(v))
    bar.close()
    rate = (done - first) / max(time.perf_counter() - start, 1e-9)
    log.info("extracted features of %d images into %s (%.1f img/s)", done - first, root, rate)
    return FeatureCache(root, data_root)
