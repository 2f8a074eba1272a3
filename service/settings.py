"""Service settings from environment variables, with defaults that suit a small CPU machine.

Nothing here imports the model library, so the front process (`service.front`) reads its limits without
loading torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Settings:
    model_path: str = ""  # empty: captioner's default ($CAPTIONER_MODEL, else the shipped model)
    backend: str = ""  # what runs the encoder and decoding step: torch, onnx, onnx-int8 (empty: captioner's default)
    workers: int = 1  # gunicorn worker processes
    threads: int = 8  # request threads per worker (they mostly wait on the batcher)
    torch_threads: int = 0  # 0: cores // workers, so workers x torch threads <= cores
    port: int = 8000
    bind: str = "0.0.0.0"
    max_body_mb: float = 10.0
    max_pixels: int = 0  # 0: captioner's own limit (captioner.preprocess.DEFAULT_MAX_PIXELS)
    batch_wait_ms: float = 5.0  # micro-batching window; 0 turns batching off
    max_batch: int = 16
    request_timeout_s: float = 30.0
    gunicorn_timeout_s: int = 120  # allows for model loading
    # The front (service.front: nginx reads each request whole before gunicorn sees it)
    header_timeout_s: float = 10.0  # the whole request line and headers must arrive within this
    body_timeout_s: float = 10.0  # longest pause between two reads of a request body
    max_header_kb: int = 16  # request line and headers together at most (4 buffers of this size)
    max_conns_per_client: int = 256  # requests in flight from one address (slow ones too); more get 429
    keepalive_timeout_s: float = 15.0  # an idle keep-alive connection is closed after this
    max_inflight: int = 0  # requests handed to gunicorn at once, more get 503 + Retry-After (0: 1.5 x workers x threads)
    front_stats: str = ""  # where the front writes its counts for /metrics (set by service.front)

    ENV_PREFIX = "CAPTIONER_"

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        """CAPTIONER_<FIELD> for every field (CAPTIONER_MODEL for the path; PORT also works)."""
        env = dict(os.environ if env is None else env)
        values = {}
        for f in fields(cls):
            key = "CAPTIONER_MODEL" if f.name == "model_path" else cls.ENV_PREFIX + f.name.upper()
            raw = env.get(key)
            if f.name == "port" and raw is None:
                raw = env.get("PORT")
            if raw is None or raw == "":
                continue
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{key}={raw!r} is not a valid {kind.__name__}") from None
        return cls(**values)

    def resolved_max_inflight(self) -> int:
        """Every request thread busy, and half as many again waiting for one: a thread that frees up never
        waits for a refused client to come back, and no request waits behind more than a round of others."""
        return self.max_inflight or (3 * self.workers * self.threads + 1) // 2

    def resolved_torch_threads(self) -> int:
        return self.torch_threads or max(1, _cores() // max(1, self.workers))

    def resolved_model_path(self) -> str:
        from captioner.model import default_model_path

        return self.model_path or str(default_model_path())

    def resolved_max_pixels(self) -> int:
        from captioner.preprocess import DEFAULT_MAX_PIXELS

        return self.max_pixels or DEFAULT_MAX_PIXELS
