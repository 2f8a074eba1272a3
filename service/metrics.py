"""Prometheus metrics, one registry per app (so tests and several apps in a process stay apart).

Each gunicorn worker keeps its own counters; /metrics shows the worker that answered. For a merged view
across workers, run one worker per container (the default) and scale containers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from .front import read_counts


class FrontCollector:
    """The answers the front (nginx, `service.front`) gave without a worker, by status: 408 stalled clients
    (connection closed), 400 malformed or oversized headers, 413 bodies over the limit, 429 too many requests
    from one address. Read from the front's counts file at each scrape."""

    def __init__(self, path: str):
        self.path = path

    def collect(self):
        family = CounterMetricFamily("captioner_front_rejected", "Requests the front answered or closed itself, "
                                     "by status", labels=["status"])
        for status, count in sorted(read_counts(self.path).items()):
            family.add_metric([status], count)
        yield family


class ServiceMetrics:
    def __init__(self, front_stats: str = ""):
        self.registry = CollectorRegistry()
        if front_stats:
            self.registry.register(FrontCollector(front_stats))
        self.requests = Counter("captioner_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("captioner_request_latency_seconds", "Request latency by endpoint", ["endpoint"],
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4), registry=self.registry)
        self.batch_size = Histogram("captioner_batch_size", "Images per encoder/decoder batch",
                                    buckets=(1, 2, 4, 8, 16, 32), registry=self.registry)
        self.model_load = Gauge("captioner_model_load_seconds", "Time to load and warm up the model",
                                registry=self.registry)
        self.ready = Gauge("captioner_ready", "1 when the model is loaded and warm", registry=self.registry)


def init_app(app: Flask, state: Callable) -> None:
    """Count every request by endpoint and status, and time it; `state()` holds the worker's metrics."""

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _count(response):
        m = state().metrics
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        m.requests.labels(endpoint, str(response.status_code)).inc()
        m.latency.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response
