"""Decode benchmark: per-image latency of the encoder and of greedy / beam-3 / beam-5 decoding at batch 1
and 32, and batched beam search against a one-image-at-a-time loop, measured side by side in one run.

    make bench-decode [ARGS="--model PATH --threads 2 --baseline OLD.safetensors"]

With --baseline, one photo end to end is also timed with that model (each with its own default decoding),
the two alternating so both see the same machine, and the ratio is printed. A model with grounding is also
timed end to end against itself without it (the target: grounding's own work costs at most 5 % of a request).
"""

from __future__ import annotations

import argparse

import torch

from captioner.decoding import WordBans, beam_search, sequential_decode
from captioner.options import DecodeOptions

from .common import PHOTOS, load_or_build, timed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--random", action="store_true", help="use random weights of realistic size (vocab 3000, hidden 512)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--baseline", default=None, help="a second model to compare end-to-end latency with")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, what = load_or_build("/nonexistent" if args.random else args.model)
    dec, v = model.decoder, model.vocab
    print(f"model: {what}; vocab {len(v)}, hidden {dec.cfg.hidden_dim}, cell {dec.cfg.cell}; torch threads {torch.get_num_threads()}")
    images = [model.preprocess(PHOTOS[i % 2]) for i in range(32)]
    batch = {n: torch.stack(images[:n]) for n in (1, 32)}
    with torch.inference_mode():
        feats = {n: model.encode(batch[n]) for n in (1, 32)}
    bans = WordBans.for_vocab(v, DecodeOptions())
    greedy_opts, beam3_opts, beam5_opts = (DecodeOptions(beam_size=k, max_length=args.max_length) for k in (1, 3, 5))

    rows = []
    for n in (1, 32):
        enc = timed(lambda: model.encode(batch[n]), repeat=3 if n == 32 else 10)
        greedy = timed(lambda: sequential_decode(dec, feats[n], v.start_id, bans, greedy_opts))
        beam3 = timed(lambda: beam_search(dec, feats[n], v.start_id, bans, beam3_opts))
        beam5 = timed(lambda: beam_search(dec, feats[n], v.start_id, bans, beam5_opts))
        rows.append((n, enc / n, greedy / n, beam3 / n, beam5 / n))
    print("\nper-image latency (ms), median of repeated runs")
    print(f"{'batch':>5} {'encoder':>9} {'greedy':>9} {'beam 3':>9} {'beam 5':>9}")
    for n, *ms in rows:
        print(f"{n:>5} " + " ".join(f"{1000 * x:9.2f}" for x in ms))

    one_by_one = timed(lambda: [beam_search(dec, feats[32][i : i + 1], v.start_id, bans, beam3_opts) for i in range(32)],
                       repeat=3)
    batched = timed(lambda: beam_search(dec, feats[32], v.start_id, bans, beam3_opts), repeat=3)
    print(f"\nbeam 3 over 32 images: one at a time {1000 * one_by_one:.1f} ms, batched {1000 * batched:.1f} ms "
          f"-> batched is {one_by_one / batched:.1f}x faster")
    print(f"batch 32 vs batch 1, per image: encoder {rows[0][1] / rows[1][1]:.2f}x, greedy {rows[0][2] / rows[1][2]:.1f}x, "
          f"beam 3 {rows[0][3] / rows[1][3]:.1f}x faster")
    fused = {}
    for label, use_fast in (("fast path", True), ("fused nn.LSTM step", False)):
        dec.use_fast_path = use_fast
        fused[label] = (timed(lambda: model.decode(feats[1], method="greedy"), repeat=10),
                        timed(lambda: model.decode(feats[1], method="beam", beam_size=3), repeat=10))
    dec.use_fast_path = True
    (fg, fb), (sg, sb) = fused["fast path"], fused["fused nn.LSTM step"]
    print(f"batch-1 decoding with the model's defaults: greedy {1000 * fg:.1f} ms (fused step {1000 * sg:.1f} ms, "
          f"{sg / fg:.1f}x), beam 3 {1000 * fb:.1f} ms (fused step {1000 * sb:.1f} ms, {sb / fb:.1f}x)")
    end_to_end = timed(lambda: model.caption([PHOTOS[0]], method="beam", beam_size=3), repeat=10)
    print(f"one photo end to end (decode JPEG, preprocess, encode, beam 3): {1000 * end_to_end:.1f} ms")
    if args.baseline:
        compare_end_to_end(model, args.baseline)
    if model.grounding is not None:
        grounding_cost(model, feats[1])


def alternating_medians(runs: dict, rounds: int = 7) -> dict[str, float]:
    """Median seconds of each named callable, the callables taking turns so all see the same load."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(timed(run, repeat=5))
    return {name: sorted(t)[rounds // 2] for name, t in times.items()}


def grounding_cost(model, features: torch.Tensor) -> None:
    """Both bench photos end to end with the model's defaults, alternating: with no grounding at all; with the
    grounding computed (evidence, word scores, each caption's evidence, the verdict) but decoding ungrounded,
    so the captions are the same and the difference is grounding's own work; and grounded, where the captions
    differ (a banned word can make a caption longer or shorter)."""
    grounding = model.grounding

    def without() -> None:
        model.grounding = None
        try:
            model.caption(PHOTOS, grounded=False)
        finally:
            model.grounding = grounding

    t = alternating_medians({"none": without, "computed": lambda: model.caption(PHOTOS, grounded=False),
                             "grounded": lambda: model.caption(PHOTOS)})
    alone = timed(lambda: grounding.word_scores(*grounding.image_evidence(features)[:2]), repeat=50)
    none = t["none"]
    print(f"grounding, both photos end to end: {1000 * none:.1f} ms without it; its work (same captions) "
          f"{1000 * t['computed']:.1f} ms, {100 * (t['computed'] / none - 1):+.1f} % (target <= +5 %); decoded grounded "
          f"(other captions) {1000 * t['grounded']:.1f} ms, {100 * (t['grounded'] / none - 1):+.1f} %; evidence and "
          f"word scores alone {1000 * alone:.2f} ms per photo")


def compare_end_to_end(model, baseline_path: str, rounds: int = 5) -> None:
    """One photo end to end with each model's default decoding, alternating models so both see the same load."""
    baseline, _ = load_or_build(baseline_path)
    t = alternating_medians({"model": lambda: model.caption([PHOTOS[0]]),
                             "baseline": lambda: baseline.caption([PHOTOS[0]])}, rounds)
    new, old = t["model"], t["baseline"]
    print(f"one photo end to end, each model's default decoding ({model.encoder_name} vs {baseline.encoder_name} "
          f"baseline, {rounds} alternating rounds): {1000 * new:.1f} vs {1000 * old:.1f} ms -> {new / old:.2f}x the baseline")


if __name__ == "__main__":
    main()
