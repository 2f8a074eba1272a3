"""Cross-request micro-batching: concurrent requests in one worker share encoder and decoder calls.

Request threads decode their image and submit the tensor; one batching thread waits up to `wait_ms` for
more requests (or until `max_batch`), runs the encoder once over all of them, then the decoder once per
group of identical options (seeds stay per image, so a sampled caption is the same batched or alone).
With wait_ms = 0 every request runs alone, under a lock so torch never runs two batches at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from captioner.model import Caption, Captioner
from captioner.options import DecodeOptions



@dataclass
class Job:
    image: torch.Tensor  # preprocessed [3, H, W]
    options: DecodeOptions
    explain: bool = False  # attach an Explanation to each caption (after the batch's decoding)
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class Result:
    captions: list[Caption]
    batch_size: int
    queue_ms: float
    encode_ms: float
    decode_ms: float


def run_batch(model: Captioner, jobs: list[Job]) -> None:
    """Encode all images together, decode per option group, and resolve every job's future."""
    started = time.perf_counter()
    try:
        t0 = time.perf_counter()
        features = model.encode(torch.stack([j.image for j in jobs]))
        encode_ms = (time.perf_counter() - t0) * 1000
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.options.batch_key()].append(i)
        for rows in groups.values():
            t1 = time.perf_counter()
            captions = model.decode(features[rows], jobs[rows[0]].options, seeds=[jobs[i].options.seed for i in rows])
            decode_ms = (time.perf_counter() - t1) * 1000
            for i, caps in zip(rows, captions):
                if jobs[i].explain:  # on this thread too: torch work stays on one thread per worker
                    model.explain(jobs[i].image, caps, jobs[i].options)
                jobs[i].future.set_result(Result(caps, len(jobs), (started - jobs[i].submitted) * 1000, encode_ms, decode_ms))
    except BaseException as exc:  # never leave a request thread waiting forever
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)


class Batcher:
    def __init__(self, model: Captioner, wait_ms: float = 5.0, max_batch: int = 16, on_batch=None):
        self.model, self.wait_s, self.max_batch = model, wait_ms / 1000.0, max(1, max_batch)
        self.on_batch = on_batch or (lambda size: None)
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._thread = None
        if self.wait_s > 0:
            self._thread = threading.Thread(target=self._loop, name="captioner-batcher", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    def submit(self, image: torch.Tensor, options: DecodeOptions, timeout: float, explain: bool = False) -> Result:
        job = Job(image, options, explain)
        if not self.enabled:
            with self._lock:
                self.on_batch(1)
                run_batch(self.model, [job])
        else:
            self._queue.put(job)
        try:
            return job.future.result(timeout=timeout)
        except TimeoutError:
            job.future.cancel()  # the batcher skips it if it has not started it yet
            raise

    def _loop(self) -> None:
        while True:
            jobs = [self._queue.get()]
            deadline = time.perf_counter() + self.wait_s
            while len(jobs) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    jobs.append(self._queue.get(timeout=remaining))
                except queue.Empty:
                    break
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if jobs:
                self.on_batch(len(jobs))
                run_batch(self.model, jobs)
