"""Encoder backends side by side (torch, onnx, onnx-int8), every figure from one run on one machine:

    make bench-backends [ARGS="--photos 1000 --service-seconds 20 --baseline REV"]
    make bench-backends-portable    # PyTorch on AVX2 kernels (ONNX Runtime picks its kernels by CPUID)

Rows: the encoder at batch 1 and 8; one photo end to end (JPEG to caption, the model's default decoding); a
batch of 8 photos per photo; explain (49 occluded copies + the photo, one request); the service's throughput with
8 clients (one worker behind its front); the library command over real photos; and a batch-1 decoding step
against its memory floor, torch's and the ONNX backends'. Each in-process row takes the median of rounds in
which the backends take turns, so all see the same machine. Ratios are against torch; with `--baseline REV` also
against torch as it was at git revision REV (bench.baseline: its own process and service, in the same rounds).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from captioner import Captioner, default_model_path, load
from captioner.backends import BACKENDS
from captioner.bulk import caption_library, expand
from captioner.cpu import cpu_name

from . import baseline
from .common import PHOTOS, ROOT, timed
from .decode import alternating_medians
from .rows import PHOTOS_PER_RUN, ROWS
from .serve import Server, closed_loop

DEV_PHOTOS = "../shared/data/flickr8k/images"


Runner = Callable[[str], Callable[[], object]]  # a row's name -> one run of that row


def in_process_rows(runners: dict[str, Runner], rounds: int) -> dict[str, dict[str, float]]:
    """Seconds per photo for each row (bench.rows) and column, the columns alternating within each row. A runner
    gives, for a row's name, a callable that runs that row once: a backend in this process, or the baseline's
    worker."""
    out = {}
    for row in ROWS:
        medians = alternating_medians({name: runner(row) for name, runner in runners.items()}, rounds)
        out[row] = {name: s / PHOTOS_PER_RUN.get(row, 1) for name, s in medians.items()}
    return out


def service_rows(model_path: Path, servers: dict[str, tuple[Path, str]], photo: bytes,
                 seconds: float) -> dict[str, float]:
    """Requests per second with 8 clients, one worker behind its front (gunicorn alone without nginx), for each
    column's (source tree, backend)."""
    from service import front

    rates = {}
    for name, (root, backend) in servers.items():
        srv = Server(str(model_path), 5.0, threads=8, front=bool(front.nginx_path()),
                     env={"CAPTIONER_BACKEND": backend}, root=root)
        try:
            closed_loop(srv.port, photo, 8, 3)  # warm-up
            results, secs = closed_loop(srv.port, photo, 8, seconds)
        finally:
            srv.stop()
        rates[name] = sum(code == 200 for code, _ in results) / secs
    return rates


def bulk_rows(models: dict[str, Captioner], paths: list[str]) -> dict[str, float]:
    """Seconds per photo of the library command per backend (batches of 16), torch one photo at a time too,
    and each backend's in-memory batched encoder rate over the same photos (the ceiling bulk is held to)."""
    out = {}
    for backend, model in models.items():
        runs = [(backend, 16, 2)] + ([("torch, batch 1", 1, 0)] if backend == "torch" else [])
        for label, size, workers in runs:
            with tempfile.TemporaryDirectory() as tmp:
                s = caption_library(model, paths, Path(tmp) / "out.jsonl", model.default_options, batch_size=size,
                                    workers=workers, progress=False)
            out[label] = s.seconds / max(1, s.captioned)
        batch = torch.stack([model.preprocess(p) for p in paths[:64]])
        model.encode(batch[:16])
        out[f"{backend} encoder alone"] = timed(lambda: [model.encode(c) for c in batch.split(16)], repeat=3) / len(batch)
    return out


def decoder_step(models: dict[str, Captioner], photo: Path, short: int = 6, long: int = 18, rounds: int = 5) -> None:
    """A batch-1 decoding step against its memory floor: the bytes the step must read (the recurrent weight,
    the output layer) over the fastest rate at which this machine reads them, in the step's two products in
    torch or in a plain sum of them. Two costs per backend: the step alone (`step_log_probs` on one row, as
    decoding calls it), and a step of decoding, the slope of decoding time over forced lengths (<end> banned
    until then): the step and the search's own work per word, without what a decode costs once (its start,
    grounding, the answer). torch's step and the ONNX backends' (one graph per step, captioner.onnx_step;
    onnx-int8's too where its products run in int8, against a quarter of the floor: int8 weights are a quarter
    of the bytes), medians of `rounds` rounds in which the floor and the decodes take turns."""
    dec = models["torch"].decoder
    weights = [dec.rnn.weight_hh_l0, dec.out.weight, dec.out.bias]
    size = sum(w.numel() * w.element_size() for w in weights)
    h = torch.zeros(1, dec.cfg.hidden_dim)
    v = models["torch"].encode(models["torch"].preprocess(photo).unsqueeze(0))
    runs = {"products": lambda: [(h @ dec.rnn.weight_hh_l0.T, dec.out(h)) for _ in range(20)],
            "sum": lambda: [[w.sum() for w in weights] for _ in range(20)]}
    steps = {"torch": models["torch"], "onnx": models["onnx"]}
    if models["onnx-int8"].decoder.onnx_step_int8:  # this CPU's int8 part is the step (backends.int8_part)
        steps["onnx-int8"] = models["onnx-int8"]
    with torch.inference_mode():
        for name, model in steps.items():
            start = torch.full((1,), model.vocab.start_id, dtype=torch.long)
            runs[f"{name} alone"] = lambda d=model.decoder, w=start, s=model.decoder.start(v): [
                d.step_log_probs(w, s) for _ in range(20)]
            for k in (1, 3):
                for n in (short, long):
                    runs[f"{name} {k}/{n}"] = lambda m=model, k=k, n=n: m.decode(v, beam_size=k, min_length=n,
                                                                                 max_length=n)
        t = alternating_medians(runs, rounds)
    floor = min(t["products"], t["sum"]) / 20
    print(f"\ndecoder step at batch 1: reads {size / 2**20:.1f} MiB of weights; floor {1000 * floor:.3f} ms "
          f"({size / floor / 1e9:.1f} GB/s; products {size * 20 / t['products'] / 1e9:.1f}, "
          f"sum {size * 20 / t['sum'] / 1e9:.1f} GB/s)")
    for name, model in steps.items():
        int8 = model.decoder.onnx_step_int8
        its = floor / 4 if int8 else floor
        costs = [("alone", t[f"{name} alone"] / 20)] + [
            (f"in decoding, {method}", (t[f"{name} {k}/{long}"] - t[f"{name} {k}/{short}"]) / (long - short))
            for method, k in (("greedy", 1), ("beam 3", 3))]
        for what, step in costs:
            print(f"  {name} step{' (int8 products)' if int8 else ''} {what}: {1000 * step:.3f} ms, "
                  f"{step / its:.2f}x {'its' if int8 else 'the'} floor")


def table(title: str, rows: dict[str, dict[str, float]], columns: list[str], ratios: list[tuple[str, str]]) -> None:
    """Milliseconds per column, then each (column, against) ratio."""
    print(f"\n{title}")
    labels = [f"{a}/{b}" for a, b in ratios]
    print(f"{'':<30}" + "".join(f"{c:>15}" for c in columns) + "".join(f"{x:>{len(x) + 3}}" for x in labels))
    for row, values in rows.items():
        cells = "".join(f"{1000 * values[c]:>13.1f}ms" for c in columns)
        cells += "".join(f"{values[a] / values[b]:>{len(x) + 2}.2f}x" for (a, b), x in zip(ratios, labels))
        print(f"{row:<30}{cells}")


def report_service(model_path: Path, servers: dict[str, tuple[Path, str]], photo: bytes, seconds: float,
                   ratios: list[tuple[str, str]]) -> None:
    rates = service_rows(model_path, servers, photo, seconds)
    print("\nservice, 8 clients, one worker: " + ", ".join(f"{b} {r:.1f} req/s" for b, r in rates.items()) + "; " +
          ", ".join(f"{a}/{b} {rates[a] / rates[b]:.2f}x" for a, b in ratios))


def report_bulk(models: dict[str, Captioner], paths: list[str]) -> None:
    bulk = bulk_rows(models, paths)
    print(f"\nlibrary command over {len(paths)} photos (batches of 16, 2 reading workers), ms per photo: " +
          ", ".join(f"{k} {1000 * v:.1f}" for k, v in bulk.items()))
    for b in models:
        print(f"  {b}: {bulk[f'{b} encoder alone'] / bulk[b]:.2f}x the encoder's own batched rate; "
              f"{bulk[b] / bulk['torch, batch 1']:.2f}x the time per photo of torch at batch 1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--photos", type=int, default=1000, help="library-command photos (0: skip that row)")
    p.add_argument("--data-dir", default=DEV_PHOTOS)
    p.add_argument("--service-seconds", type=float, default=20, help="per backend (0: skip the service row)")
    p.add_argument("--baseline", default=None, metavar="REV",
                   help="also time torch as it was at this git revision (bench.baseline), e.g. where an issue began")
    args = p.parse_args()
    models = {b: load(args.model, backend=b) for b in BACKENDS}
    backends = list(models)
    model_path = Path(args.model or default_model_path()).resolve()
    paths = expand([args.data_dir])[: args.photos] if Path(args.data_dir).is_dir() else []
    photos = [Path(x).resolve() for x in paths[:8]] or PHOTOS
    isa = os.environ.get("ATEN_CPU_CAPABILITY", "default") + " torch kernels"
    cpu = cpu_name() or platform.processor() or "unknown CPU"
    print(f"{cpu}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads, {isa}; "
          f"photos: {photos[0].parent}")
    runners = {b: (lambda row, m=m: ROWS[row](m, photos)) for b, m in models.items()}
    servers = {b: (ROOT, b) for b in backends}
    ratios = [(b, "torch") for b in backends[1:]]
    base, worker, tree = f"torch@{args.baseline}", None, None
    if args.baseline:
        tree = baseline.checkout(args.baseline)
        worker = baseline.Worker(tree, model_path, torch.get_num_threads(), photos)
        print(f"baseline {base}: its captioner from {worker.source.parent}, its service from {tree}")
        runners = {base: worker.row, **runners}
        servers = {base: (tree, "torch"), **servers}
        ratios += [(b, base) for b in backends]
    try:
        rows = in_process_rows(runners, args.rounds)
    finally:
        if worker:
            worker.close()
    table("in process, per photo (median of alternating rounds)", rows, list(runners), ratios)
    if args.service_seconds:
        report_service(model_path, servers, photos[0].read_bytes(), args.service_seconds, ratios)
    if tree:
        shutil.rmtree(tree)
    if paths:
        report_bulk(models, paths)
    decoder_step(models, photos[0])
    e2e = rows["one photo end to end"]
    print("\nbackends: one photo end to end " + ", ".join(f"{a} {e2e[a] / e2e[b]:.2f}x the time of {b}"
                                                      for a, b in ratios))


if __name__ == "__main__":
    main()
