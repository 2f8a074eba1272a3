"""Seeded malformed uploads for the service: real photos saved in six formats, then truncated, bit-flipped,
padded with junk or replaced by random bytes, sent as multipart, raw body or base64 JSON, with odd content
types and options. Used by the real-server test (a few hundred) and `make bench-serve`'s soak (thousands).

Every case is a (path with query, body, content type) triple; what a case gets back may be 200, 400, 413,
415 or 422, never a 5xx.
"""

from __future__ import annotations

import base64
import io
import json
import random
import uuid
from pathlib import Path

from PIL import Image

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")
MUTATIONS = ("none", "truncate", "bitflip", "pad", "random")
CONTENT_TYPES = ("image/jpeg", "image/png", "image/tiff", "application/octet-stream", "image/x-unknown", "text/plain")
OPTIONS = ({}, {"method": "greedy"}, {"method": "sample", "seed": "7", "temperature": "0.7"}, {"beam_size": "2"},
           {"beam_size": "0"}, {"temperature": "nan", "method": "sample"}, {"n_best": "3", "beam_size": "2"},
           {"colour": "red"}, {"max_length": "1"})


def encoded_photos(photo: Path, size: tuple[int, int] = (96, 72)) -> dict[str, bytes]:
    """The photo, made small, saved in each format."""
    img = Image.open(photo).convert("RGB").resize(size)
    out = {}
    for fmt in FORMATS:
        buf = io.BytesIO()
        img.save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


def mutate(data: bytes, how: str, rng: random.Random) -> bytes:
    if how == "truncate":
        return data[: rng.randrange(0, len(data))]
    if how == "bitflip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(out))
            out[pos] ^= 1 << rng.randrange(8)
        return bytes(out)
    if how == "pad":
        return data + rng.randbytes(rng.randint(1, 256))
    if how == "random":
        return rng.randbytes(rng.randint(0, 2048))
    return data


def multipart(data: bytes, fields: dict, ctype: str = "image/jpeg") -> tuple[bytes, str]:
    """A multipart/form-data body with the file field 'image' and text `fields`; (body, content type)."""
    boundary = uuid.UUID(int=random.Random(len(data)).getrandbits(128)).hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="upload"\r\n'
                 f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def cases(photo: Path, n: int, seed: int = 0) -> list[tuple[str, bytes, str]]:
    """n seeded requests: (path with query string, body, content type)."""
    rng = random.Random(seed)
    photos = encoded_photos(photo)
    out = []
    for _ in range(n):
        data = mutate(photos[rng.choice(FORMATS)], rng.choice(MUTATIONS), rng)
        options = rng.choice(OPTIONS)
        transport = rng.choice(("multipart", "raw", "json"))
        if transport == "multipart":
            body, ctype = multipart(data, options, rng.choice(CONTENT_TYPES))
            out.append(("/v1/captions", body, ctype))
        elif transport == "raw":
            query = "&".join(f"{k}={v}" for k, v in options.items())
            out.append(("/v1/captions" + (f"?{query}" if query else ""), data, rng.choice(CONTENT_TYPES)))
        else:
            payload = {"image": base64.b64encode(data).decode(), **options}
            out.append(("/v1/captions", json.dumps(payload).encode(), "application/json"))
    return out
