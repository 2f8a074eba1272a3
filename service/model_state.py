"""The model a worker serves: loaded, warmed with one real inference, then ready. `init_app` attaches it
to the app; `current_state()` and `ready_state()` are how routes reach it."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from flask import Flask, current_app
from PIL import Image

from captioner import Captioner, load

from .batching import Batcher
from .errors import ApiError
from .metrics import ServiceMetrics
from .settings import Settings

log = logging.getLogger("captioner.service")
EXTENSION = "captioner"


class ServiceState:
    """The model, its batcher and readiness, shared by the request threads of one worker."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics):
        self.settings, self.metrics = settings, metrics
        self.model: Captioner | None = None
        self.batcher: Batcher | None = None
        self.ready = False
        self.load_error: str | None = None
        self.load_seconds: float | None = None

    def load(self, model: Captioner | None = None) -> None:
        t0 = time.perf_counter()
        try:
            model = model or load(self.settings.resolved_model_path(), self.settings.backend or None)
            self.batcher = Batcher(model, self.settings.batch_wait_ms, self.settings.max_batch,
                                   on_batch=self.metrics.batch_size.observe)
            self.model = model
            warm = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1)), "L").convert("RGB")
            self.batcher.submit(model.preprocess(warm), model.default_options, timeout=120)
        except Exception as exc:  # stay up and say why on /readyz instead of crash-looping
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load from %s", self.settings.resolved_model_path())
            return
        self.load_seconds = time.perf_counter() - t0
        self.metrics.model_load.set(self.load_seconds)
        self.metrics.ready.set(1)
        self.ready = True
        log.info("model %s loaded and warm in %.2f s", self.settings.resolved_model_path(), self.load_seconds)


def init_app(app: Flask, settings: Settings, model: Captioner | None = None, load_in_background: bool = False) -> None:
    """Attach a ServiceState; load `model` or the one settings name, now or in a background thread."""
    st = ServiceState(settings, ServiceMetrics(settings.front_stats))
    app.extensions[EXTENSION] = st
    if model is not None:
        st.load(model)
    elif load_in_background:
        threading.Thread(target=st.load, name="captioner-load", daemon=True).start()
    else:
        st.load()


def current_state() -> ServiceState:
    return current_app.extensions[EXTENSION]


def ready_state() -> ServiceState:
    """The state, or a 503 that says why the model is not (yet) there."""
    st = current_state()
    if not st.ready:
        raise ApiError(503, "not_ready", st.load_error or "model is loading")
    return st
