"""Scale benchmark: every phase of `make train` at 1x, 2x, 4x and 16x Flickr8k's size (the last capped at COCO
2014's 123,287 photos), on COCO-format data simulated from Flickr8k (`training.synthetic`). Each size runs in
a fresh process through the real `Trainer` (one cross-entropy and one SCST epoch, of which `--batches`
batches are timed and the rest projected; the judge's first epochs, the rest projected) and reports each
phase's wall time and peak memory. Then each phase's growth exponent (least squares of log time on log of
what it runs over, `RUNS_OVER`, over the sizes from 16k photos up) and a projection of a whole COCO run on
this machine.

The machine's speed drifts by tens of percent over minutes, in slow spells that can last ten minutes, which
alone can move an exponent by 0.2. So the sizes the exponent is fitted on run twice, the second pass in the
same order after the first, so that each size's two runs lie a whole pass apart (a slow spell has to last
that long to cover both), and each phase counts its faster time: drift only ever adds time. The data
phases, a few seconds long, also run twice within each run. Each pass's own exponents are printed beside
the combined one.

    make bench-scale [ARGS="--sizes 8091,16182,32364,123287 --batches 40"]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from training.config import load_config
from training.synthetic import COCO_PHOTOS, COCO_VAL_PHOTOS, generate

FLICKR8K_PHOTOS = 8091
COCO_RECIPE = "configs/coco.toml"  # where COCO's output layer (decoder.softmax_head) is set
FIT_FROM = 16_000  # the exponent is fitted over sizes from here up (the range: 16k to COCO)
TOO_SMALL_S = 1.0  # a phase shorter than this at the largest size is reported but not ranked: timer noise
# What a phase's time is fitted against: what it runs over. The rest run over the training photos, which grow
# faster than all photos at COCO's size (val stops at 5,000): 4.18x against 3.81x from 32k to 123k photos.
# Validation decodes the val photos, but from 32k photos up those grow 1.24x while the vocabulary, whose
# words every beam step scores, grows 2.2x: against val photos any share of V-wide work is magnified ~4x,
# so it is fitted on all photos (the axis) and its cost per val photo is printed beside it.
RUNS_OVER = {"read records": "photos", "feature cache": "photos", "validate": "photos"}
JUDGE_EPOCHS_TIMED = 3  # of the recipe's scst_judge_epochs; the rest are projected (each epoch is the same work)
DATA_RUNS = 2  # the data phases (seconds long) run this many times in each size's process; each counts its fastest


def recipe(config: str, softmax_head: int | None, overrides: dict | None = None):
    """The config's training recipe with COCO's output layer: `softmax_head` (None: configs/coco.toml's)."""
    head = load_config(COCO_RECIPE).decoder.softmax_head if softmax_head is None else softmax_head
    return load_config(config, {**(overrides or {}), "decoder.softmax_head": head})


def run_one(config: str, data_dir: str, batches: int, softmax_head: int | None) -> dict:
    """One size, in this process: Trainer (reading, vocabulary, cache, grounding), one XE epoch and its
    validation, then SCST's setup and one SCST epoch (its validation would repeat the XE one)."""
    from training.train import Trainer

    cfg = recipe(config, softmax_head, {
        "format": "coco", "data_dir": data_dir, "coco_year": "2014", "train_splits": ["train"], "val_split": "val",
        "val_max_images": COCO_VAL_PHOTOS, "epochs": 1, "scst_epochs": 0, "max_batches_per_epoch": batches,
        "scst_judge_epochs": JUDGE_EPOCHS_TIMED, "progress": False, "out_dir": str(Path(data_dir) / "run")})
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    data_seconds = data_phase_seconds(cfg, DATA_RUNS - 1)
    trainer = Trainer(cfg)
    trainer.fit()
    trainer._ensure_reward()
    trainer.cfg.max_batches_per_epoch = max(1, batches // 2)  # an SCST batch costs 2-4 cross-entropy ones
    with trainer.clock("scst epoch"):
        scst = trainer.run_epoch_scst(0)
    phases = {name: {"seconds": p.seconds, "peak_gb": p.peak_rss_bytes / 2**30} for name, p in trainer.clock.phases.items()}
    xe = trainer.state["history"][0]
    for name, epoch in (("xe epoch", xe), ("scst epoch", scst)):  # measured per batch, times the epoch's batches
        phases[name]["seconds"] = epoch["epoch_seconds"] / epoch["batches"] * epoch["epoch_batches"]
    if "retrieval" in phases:
        phases["retrieval"]["seconds"] *= load_config(config).scst_judge_epochs / JUDGE_EPOCHS_TIMED
    for name, seconds in data_seconds.items():
        phases[name]["seconds"] = min(phases[name]["seconds"], seconds)
    return {"photos": len(trainer.data.train) + len(trainer.data.val), "train_photos": len(trainer.data.train),
            "captions": len(trainer.data.tokens), "vocab": len(trainer.data.vocab), "val": len(trainer.data.val),
            "phases": phases, "xe_batches": xe["epoch_batches"], "scst_batches": scst["epoch_batches"],
            "xe_batch_seconds": xe["epoch_seconds"] / xe["batches"], "scst_batch_seconds": scst["epoch_seconds"] / scst["batches"],
            "reward_rate": reward_rate(trainer)}


def data_phase_seconds(cfg, runs: int) -> dict[str, float]:
    """The data phases' (reading, vocabulary, cache, captions to ids) fastest time over `runs` runs of
    `prepare_data`, before the Trainer's own: single timings of a few seconds move by tens of percent with the
    machine's drift. Each run's data is dropped before the next, so none is timed with another's objects alive."""
    from captioner.encoders import create_encoder
    from training.data import prepare_data
    from training.phases import PhaseClock
    from training.runtime import SingleProcess

    encoder = create_encoder(cfg.encoder, pretrained=True, weights=cfg.encoder_weights or None)
    fastest_seconds: dict[str, float] = {}
    for _ in range(runs):
        clock = PhaseClock()
        prepare_data(cfg, encoder, SingleProcess(), clock)
        gc.collect()
        for name, phase in clock.phases.items():
            fastest_seconds[name] = min(fastest_seconds.get(name, math.inf), phase.seconds)
    return fastest_seconds


def reward_rate(trainer) -> float:
    """Captions per second through SCST's reward (CIDEr-D, BLEU, fluency: Python on one core, GPU or not),
    scoring training images' own references as if they were samples."""
    from captioner.vocab import tokenize

    images = range(min(400, len(trainer.data.train)))
    candidates = [(tokenize(c), i) for i in images for c in trainer.data.train[i].captions]
    t0 = time.perf_counter()
    for words, i in candidates:
        trainer.reward.text_terms(words, i)
    return len(candidates) / (time.perf_counter() - t0)


def measure(size: int, args: argparse.Namespace, simulate: bool) -> dict:
    """Simulate `size` photos (timed; or reuse the last pass's), then run the phases in a fresh process (so
    peaks are this size's)."""
    out = Path(args.work) / f"coco-{size}"
    t0 = time.perf_counter()
    if simulate:
        source = load_config(args.config, {"progress": False})
        generate(source, out, size, min(COCO_VAL_PHOTOS, size // 8), source.seed)
    simulated = time.perf_counter() - t0 if simulate else float("nan")
    cmd = [sys.executable, "-m", "bench.scale", "--one", str(out), "--config", args.config, "--batches", str(args.batches)]
    if args.softmax_head is not None:
        cmd += ["--softmax-head", str(args.softmax_head)]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["simulate_seconds"] = simulated
    return report


def fastest(runs: list[dict]) -> dict:
    """One size's runs (passes) as one report: each phase's and batch's fastest time, the highest peak memory;
    the runs themselves under "passes", for each pass's own exponents."""
    best = {**runs[0], "passes": runs}
    best["phases"] = {name: {"seconds": min(r["phases"][name]["seconds"] for r in runs),
                             "peak_gb": max(r["phases"][name]["peak_gb"] for r in runs)} for name in runs[0]["phases"]}
    for key in ("xe_batch_seconds", "scst_batch_seconds"):
        best[key] = min(r[key] for r in runs)
    best["reward_rate"] = max(r["reward_rate"] for r in runs)
    return best


def pass_exponents(reports: list[dict], name: str) -> str:
    """Phase `name`'s exponent in each pass alone ("1.07/0.98"), over that pass's sizes."""
    cells = []
    for k in range(max(len(r["passes"]) for r in reports)):
        runs = [r["passes"][k] for r in reports if len(r["passes"]) > k]
        cells.append(f"{phase_exponent(runs, name, [r['phases'][name]['seconds'] for r in runs]):.2f}")
    return "/".join(cells)


def phase_exponent(reports: list[dict], name: str, seconds: list[float]) -> float:
    """Growth exponent of phase `name`'s `seconds` (one per report) in what it runs over (`RUNS_OVER`)."""
    return exponent([r["photos"] for r in reports], seconds, [r[RUNS_OVER.get(name, "train_photos")] for r in reports])


def exponent(photos: list[int], seconds: list[float], counts: list[int] | None = None) -> float:
    """Least-squares slope of log seconds on log counts (default: the photos), over the sizes from FIT_FROM
    photos up."""
    fitted = [(math.log(c), math.log(max(s, 1e-6))) for n, c, s in zip(photos, counts or photos, seconds)
              if n >= FIT_FROM]
    return float(np.polyfit(*zip(*fitted), 1)[0]) if len(fitted) >= 2 else float("nan")


def photo_rates(config: str) -> tuple[float, float]:
    """Photos per second (this machine's cores) through JPEG decoding and preprocessing alone, and through
    those plus the config's encoder in batches of 16: the test fixtures, read 32 times."""
    from captioner.encoders import create_encoder
    from captioner.model import encode_images
    from captioner.preprocess import preprocess
    from training.data import preprocess_config

    cfg = load_config(config)
    pre, encoder = preprocess_config(cfg), create_encoder(cfg.encoder, pretrained=True).eval()
    photos = (sorted((Path(__file__).parent.parent / "tests" / "fixtures").glob("*.jpg")) * 32)[:32]
    t0 = time.perf_counter()
    batch = torch.stack([preprocess(p, pre) for p in photos])
    decode_rate = len(photos) / (time.perf_counter() - t0) * (os.cpu_count() or 1)  # one core; workers use all
    with torch.inference_mode():
        encode_images(encoder, batch[:16], False)
        t0 = time.perf_counter()
        for chunk in batch.split(16):
            encode_images(encoder, chunk, False)
    encode_seconds = (time.perf_counter() - t0) / len(photos)
    return decode_rate, 1 / (1 / decode_rate + encode_seconds)


def report(reports: list[dict], args: argparse.Namespace) -> None:
    sizes = [r["photos"] for r in reports]
    names = list(dict.fromkeys(name for r in reports for name in r["phases"]))
    print(f"\n{'photos':>24} " + " ".join(f"{n:>17,}" for n in sizes) + "  exponent (by pass; in photos)")
    print(f"{'captions / vocabulary':>24} " + " ".join(f"{r['captions']:>10,} / {r['vocab']:>5,}" for r in reports))
    worst = (-math.inf, "", 0.0)
    for name in names:
        secs = [r["phases"].get(name, {}).get("seconds", float("nan")) for r in reports]
        peaks = [r["phases"].get(name, {}).get("peak_gb", float("nan")) for r in reports]
        exp = phase_exponent(reports, name, secs)
        ranked = secs[-1] >= TOO_SMALL_S
        if ranked and exp > worst[0]:
            worst = (exp, name, 0.0)
        cells = " ".join(f"{s:8.2f}s {p:5.2f}GB" for s, p in zip(secs, peaks))
        print(f"{name:>24} {cells}  {exp:5.2f} ({pass_exponents(reports, name)}; {exponent(sizes, secs):.2f})"
              f"{'' if ranked else ' under 1 s: not ranked'}")
    per_photo = [r["phases"]["validate"]["seconds"] / r["val"] * 1000 for r in reports]
    print(f"{'validate ms per val photo':>24} " + " ".join(f"{s:8.2f}ms {'':>5}" for s in per_photo)
          + f"  {exponent(sizes, per_photo, [r['vocab'] for r in reports]):5.2f} in the vocabulary")
    for kind in ("xe", "scst"):  # what one batch costs grows with the vocabulary (the output layer), not the data
        batch = [r[kind + "_batch_seconds"] for r in reports]
        cells = " ".join(f"{s:8.3f}s {'':>6}" for s in batch)
        print(f"{kind + ' seconds per batch':>24} {cells}  {phase_exponent(reports, kind, batch):5.2f}")
    sim = [r["simulate_seconds"] for r in reports]
    print(f"{'(simulating the data)':>24} " + " ".join(f"{s:8.2f}s {'':>6}" for s in sim) + f"  {exponent(sizes, sim):5.2f}")
    project(reports[-1], args)
    peak = max(p["peak_gb"] for p in reports[-1]["phases"].values())
    others = "; ".join(f"{name}: {'all photos' if key == 'photos' else 'val photos'}" for name, key in RUNS_OVER.items())
    print(f"(exponent: slope of log seconds on log training photos ({others}), from {FIT_FROM:,} photos up, "
          f"on each size's faster time; by pass: each pass alone; in photos: on log photos, train and val)")
    print(f"scale: worst exponent {worst[0]:.2f} ({worst[1]}), peak RSS {peak:.1f} GB at {sizes[-1]:,} photos")


def project(largest: dict, args: argparse.Namespace) -> None:
    """A whole run of the config's recipe at the largest size, from the measured phases: feature extraction
    at the measured photo rate, each one-off phase once, each epoch (and its validation and save) times the
    config's epochs, without early stopping. One GPU: not measured here; the floor is the work that stays on
    the CPU cores whatever the GPU (JPEG decoding, reading, vocabulary, captions to ids, SCST's rewards)."""
    cfg = load_config(args.config)
    ph = {name: p["seconds"] for name, p in largest["phases"].items()}
    decode_rate, photo_rate = photo_rates(args.config)
    epochs = cfg.epochs + cfg.scst_epochs
    every_epoch = ph["validate"] + ph.get("save", 0.0)
    once = sum(s for n, s in ph.items() if n not in ("xe epoch", "scst epoch", "validate", "save"))
    rows = {"feature extraction": largest["photos"] / photo_rate, "one-off phases": once,
            f"cross-entropy, {cfg.epochs} epochs": cfg.epochs * ph["xe epoch"],
            f"SCST, {cfg.scst_epochs} epochs": cfg.scst_epochs * ph["scst epoch"],
            f"validation and save, {epochs} times": epochs * every_epoch}
    rewards = cfg.scst_epochs * largest["train_photos"] * cfg.scst_samples / largest["reward_rate"]
    floor = (largest["photos"] / decode_rate + rewards
             + sum(ph[n] for n in ("read records", "vocabulary", "feature cache", "captions to ids")))
    print(f"\nprojected `make train` ({args.config}, no early stop) on {largest['photos']:,} photos, "
          f"{os.cpu_count()} cores ({photo_rate:.1f} photos/s through JPEG decoding and the encoder, "
          f"{largest['xe_batches']:,} XE and {largest['scst_batches']:,} SCST batches per epoch):")
    for name, seconds in rows.items():
        print(f"  {name:<32} {seconds / 3600:7.2f} h")
    print(f"  {'total':<32} {sum(rows.values()) / 3600:7.2f} h")
    print(f"  one GPU, at least (CPU-bound: JPEG decoding at {decode_rate:.0f} photos/s, reading, SCST rewards at "
          f"{largest['reward_rate']:.0f} captions/s): {floor / 3600:.2f} h")


def zipf_tokens(rows: int, length: int, vocab_size: int, first: int, device: torch.device) -> torch.Tensor:
    """Word ids [rows, length] from `first` up, the word of rank r drawn with probability ~ 1/r as in text
    (Zipf's law), so an adaptive softmax's clusters see their real share of the words."""
    weights = 1.0 / torch.arange(1, vocab_size - first + 1, dtype=torch.float64)
    return (first + torch.multinomial(weights, rows * length, replacement=True)).view(rows, length).to(device)


def step_rates(config: str, device_name: str, vocab_size: int, softmax_head: int | None, steps: int = 30) -> dict:
    """Seconds per training batch on `device_name` at a vocabulary of `vocab_size`, with the config's model
    (COCO's output layer: `recipe`), batch sizes and bf16 autocast, on random vectors and Zipf-distributed
    captions (a step's cost depends on which clusters its words fall in, not on what they are): a
    cross-entropy batch (forward, backward, clipping, AdamW), and an SCST batch's model work (samples, the
    greedy baseline where the recipe has one, the teacher-forced policy-gradient pass and its backward).
    SCST's reward is not in it: it runs on the CPU at the rate `make bench-scale` measures."""
    from captioner.decoder import CaptionDecoder
    from captioner.decoding import WordBans
    from captioner.options import DecodeOptions
    from captioner.vocab import SPECIALS, Vocabulary
    from captioner.precision import autocast
    from training.runtime import pick_device
    from training.scst import greedy_captions, policy_gradient_loss, scst_samples
    from training.train import decoder_optimiser, xe_loss

    cfg, device = recipe(config, softmax_head), pick_device(device_name)
    torch.manual_seed(cfg.seed)
    vocab = Vocabulary([*SPECIALS, *(f"w{i}" for i in range(vocab_size - len(SPECIALS)))])
    decoder = CaptionDecoder(dataclasses.replace(cfg.decoder, vocab_size=vocab_size, feature_dim=1280)).to(device)
    opt = decoder_optimiser(decoder, cfg.lr, cfg.weight_decay)
    bans, words = WordBans.for_vocab(vocab, DecodeOptions()), cfg.scst_max_words or cfg.max_caption_words
    tokens = zipf_tokens(cfg.batch_size, 14, vocab_size, len(SPECIALS), device)
    tokens[:, 0], tokens[:, -1] = vocab.start_id, vocab.end_id
    feats = torch.randn(cfg.batch_size, 1280, device=device)

    def step(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
        opt.step()

    def xe() -> None:
        with autocast(device, cfg.amp):
            step(xe_loss(decoder, feats, tokens, cfg, 0.0)[0])

    def scst() -> None:
        images = feats[: cfg.scst_batch_images]
        with autocast(device, cfg.amp):
            seqs = scst_samples(decoder, images, cfg.scst_samples, words, vocab, bans)
            if cfg.scst_baseline == "greedy":
                greedy_captions(decoder, images, words, vocab, bans)
            advantages = torch.randn(seqs.size(0), device=device)
            step(policy_gradient_loss(decoder, images.repeat_interleave(cfg.scst_samples, 0), seqs, advantages,
                                      vocab.start_id, bans))

    out = {"device": str(device), "vocab": vocab_size, "softmax_head": cfg.decoder.softmax_head}
    for name, fn in (("xe", xe), ("scst", scst)):
        for _ in range(3):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[f"{name}_batch_seconds"] = (time.perf_counter() - t0) / steps
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=f"{FLICKR8K_PHOTOS},{2 * FLICKR8K_PHOTOS},{4 * FLICKR8K_PHOTOS},{COCO_PHOTOS}")
    p.add_argument("--batches", type=int, default=40,
                   help="cross-entropy batches timed (SCST: half as many); the rest of each epoch is projected")
    p.add_argument("--passes", type=int, choices=(1, 2), default=2, help="2: the sizes from 16k up run again, "
                   "a pass apart, and each phase counts its faster time (the machine's drift)")
    p.add_argument("--config", default="configs/flickr8k.toml", help="the source data set and the training recipe")
    p.add_argument("--work", default="runs/scale", help="where the simulated data sets go")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one size, in a fresh process
    p.add_argument("--steps", metavar="DEVICE", default=None, help="only time training batches on DEVICE (cuda, "
                   "cpu) at vocabularies --vocabs: what a GPU's column of the projection is built from")
    p.add_argument("--vocabs", default="2676,9630", help="with --steps (Flickr8k's and simulated COCO's)")
    p.add_argument("--softmax-head", type=int, default=None, help=f"the decoder's output layer (decoder.softmax_head; "
                   f"0: a full softmax); default: {COCO_RECIPE}'s")
    args = p.parse_args()
    if args.steps:
        for vocab in map(int, args.vocabs.split(",")):
            print(json.dumps(step_rates(args.config, args.steps, vocab, args.softmax_head)), flush=True)
        return
    if args.one:
        print(json.dumps(run_one(args.config, args.one, args.batches, args.softmax_head)))
        return
    t0 = time.perf_counter()
    sizes = list(map(int, args.sizes.split(",")))
    runs: dict[int, list[dict]] = {size: [] for size in sizes}
    again = [size for size in sizes if size >= FIT_FROM] if args.passes == 2 else []
    for size in sizes + again:
        runs[size].append(measure(size, args, simulate=not runs[size]))
        r = runs[size][-1]
        print(f"{size:,} photos (pass {len(runs[size])}): {r['captions']:,} training captions, vocabulary "
              f"{r['vocab']:,}, {time.perf_counter() - t0:.0f} s so far", flush=True)
    (Path(args.work) / "bench-scale.json").write_text(json.dumps(runs, indent=1))  # every pass, to look at again
    report([fastest(runs[size]) for size in sizes], args)
    print(f"(bench-scale took {(time.perf_counter() - t0) / 60:.1f} min; torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
