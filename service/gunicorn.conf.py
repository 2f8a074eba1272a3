"""Gunicorn settings, all from the environment (see service/settings.py): `make serve` uses this file.
It also sets what is process-wide in each worker (logging, torch's thread count) before the app loads."""

import logging

from service.settings import Settings

_s = Settings.from_env()

bind = f"{_s.bind}:{_s.port}"
workers = _s.workers
worker_class = "gthread"  # threads let one worker gather concurrent requests into a batch
threads = _s.threads
timeout = _s.gunicorn_timeout_s  # generous: a worker loads and warms the model before its first request
graceful_timeout = 30  # on SIGTERM, finish in-flight requests for up to this long
keepalive = 5
accesslog = "-"
errorlog = "-"
preload_app = False  # each worker loads its own model after fork (torch threads do not survive fork)
limit_request_line = 8190


def post_fork(server, worker):
    """Each worker, before it builds the app: log lines with their level, and torch threads = its share of
    the cores (workers x threads <= cores)."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(_s.resolved_torch_threads())
