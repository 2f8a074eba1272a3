"""Real-world image files made in memory: the odd inputs users actually send."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def left_red_right_blue(w: int = 64, h: int = 32) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


def exif_rotated_jpeg() -> bytes:
    """A 64x32 image whose EXIF says 'rotate 90 CW to display' (orientation 6): upright it is 32x64."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(left_red_right_blue(), "JPEG", exif=exif.tobytes(), quality=95)


def cmyk_jpeg() -> bytes:
    return encode(left_red_right_blue().convert("CMYK"), "JPEG", quality=95)


def grayscale_png() -> bytes:
    return encode(left_red_right_blue().convert("L"), "PNG")


def rgba_transparent_png() -> bytes:
    img = left_red_right_blue().convert("RGBA")
    img.putalpha(Image.new("L", img.size, 0))  # fully transparent: must come out white, not black
    return encode(img, "PNG")


def palette_transparency_png() -> bytes:
    img = left_red_right_blue().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    return encode(img, "PNG", transparency=0)


def sixteen_bit_png() -> bytes:
    arr = np.full((32, 32), 30000, dtype=np.uint16)  # mid-grey in 16 bits; naive conversion clips to white
    return encode(Image.fromarray(arr), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def truncated_jpeg() -> bytes:
    data = encode(left_red_right_blue(256, 256), "JPEG", quality=95)
    return data[: len(data) // 2]


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A small valid PNG whose header claims width x height pixels (a decompression bomb's signature)."""
    data = encode(Image.new("1", (8, 8)), "PNG")
    ihdr_start = 8  # after the signature: length(4) 'IHDR'(4) data(13) crc(4)
    body = bytearray(data[ihdr_start + 8 : ihdr_start + 8 + 13])
    body[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)) & 0xFFFFFFFF)
    return data[: ihdr_start + 8] + bytes(body) + crc + data[ihdr_start + 8 + 13 + 4 :]


def tiff_flipped(byte: int = 8, bit: int = 0) -> bytes:
    """A TIFF with one bit flipped: at byte 8 (the first directory's entry count) Pillow's TIFF plugin raises
    TypeError('Missing dimensions') from `n_frames`, at byte 72 a TypeError from a rational; both were 500s
    once, found by fuzzing the service."""
    data = bytearray(encode(left_red_right_blue(), "TIFF"))
    data[byte] ^= 1 << bit
    return bytes(data)
