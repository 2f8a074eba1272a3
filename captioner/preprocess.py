"""Image loading and preprocessing: one function for training and serving, its settings stored in the checkpoint."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps

ImageInput = Union[Image.Image, str, Path, bytes, bytearray]

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 7,000 x 5,700; larger inputs are refused before decoding


class ImageError(ValueError):
    """The input is not an image we can decode, or is too large to decode safely."""


class ImageTooLarge(ImageError):
    """The image's pixel count is over the limit (a decompression bomb, or simply too big)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the encoder's input. No defaults for what depends on the encoder: ask its
    registry entry (`captioner.encoders.encoder_spec(name).preprocess()`)."""

    size: int
    resize: str  # "squash": straight to size x size; "center_crop": shorter side to size, then crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hflip_average: bool = False  # average the encoder's vector over the image and its mirror

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        d = dict(d)
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(x) for x in d[k])
        return cls(**d)

    def __post_init__(self):
        if self.resize not in ("squash", "center_crop"):
            raise ValueError(f"resize must be 'squash' or 'center_crop', got {self.resize!r}")


def _open(source: ImageInput) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)) and not source:
        raise ImageError("empty image data")
    try:
        return Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image too large: {exc}") from exc
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # a wrong path is the caller's mistake, not bad image data
    except Exception as exc:  # untrusted bytes: whatever a decoder plugin raises means "not an image"
        raise ImageError(f"not a decodable image: {exc}") from exc


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float images: rescale to 0..255 instead of letting PIL clip them to white."""
    arr = np.asarray(img, dtype=np.float64)
    hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
    else:
        arr = arr / hi * 255.0
    return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8), "L")


def load_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode any supported input to an upright 8-bit RGB image.

    Handles EXIF orientation, grayscale, CMYK, palette and alpha (composited on white), 16-bit and float
    images, and animations (first frame). Raises :class:`ImageError` for data that is not an image or
    whose pixel count exceeds `max_pixels` (checked from the header, before any pixel is decoded).
    """
    img = _open(source)
    try:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError("image has no pixels")
        if width * height > max_pixels:
            raise ImageTooLarge(f"image too large: {width}x{height} exceeds {max_pixels} pixels")
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))  # DCT-domain downscale: much cheaper decode of big photos
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            img = _to_8bit(img)
        if img.mode == "P":
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        return img.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image too large: {exc}") from exc
    except Exception as exc:  # Pillow's plugins raise TypeError, struct.error, ZeroDivisionError... on bad files
        raise ImageError(f"image data is corrupt or truncated: {exc}") from exc


def image_to_tensor(img: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    """RGB PIL image -> normalised float tensor [3, size, size]."""
    s = cfg.size
    if cfg.resize == "squash":
        img = img.resize((s, s), Image.BICUBIC)
    else:
        w, h = img.size
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - s) // 2, (nh - s) // 2
        img = img.crop((left, top, left + s, top + s))
    # (x / 255 - mean) / std as one multiply-add per channel, written straight into a channels-first array:
    # no full-size float temporaries, no transposed copy (docs/experiments.md has the timing). numpy, not
    # torch: request threads then never start OpenMP teams that would compete with the batch thread's.
    std = np.asarray(cfg.std, dtype=np.float32)
    scale, offset = (1.0 / (255.0 * std))[:, None, None], (-np.asarray(cfg.mean, dtype=np.float32) / std)[:, None, None]
    pixels = np.asarray(img).transpose(2, 0, 1)
    out = np.multiply(pixels, scale, out=np.empty(pixels.shape, dtype=np.float32))
    out += offset
    return torch.from_numpy(out)


def preprocess(source: ImageInput, cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Load and normalise one image: the single entry point used by training and serving."""
    return image_to_tensor(load_image(source, max_pixels=max_pixels, draft_size=cfg.size), cfg)
