"""Character-model benchmark: held-out bits per character of `rnn`, `lstm` and `gru` trained for the same
time budget on the same text, beside three compressors' yardsticks on the same held-out tail (`xz -9` on the
tail alone; `xz -9` given the training text first, as the model was; `zstd -19 --patch-from` the training
text), and each run's training throughput, measured side by side in one run. `--vary` adds runs with one
lever changed (chunk length, cell size, depth, schedule, ...) against the same baseline.

    make bench-charlm [ARGS="--minutes 5 --text FILE"]
    make bench-charlm ARGS="--cells lstm --minutes 3 --adaptive false --vary bptt=64,256 --vary model.num_layers=2"
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import subprocess
import tempfile
from pathlib import Path

from captioner import fields

from charlm.model import CharLMConfig
from charlm.train import CharTrainConfig, CharTrainer, read_text, split_text


def xz_size(data: bytes) -> int:
    """Bytes `xz -9` (liblzma, preset 9) makes of `data`."""
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, preset=9))


def xz_bits_per_char(text: str) -> float:
    """What `xz -9` needs for the text: compressed bits over characters."""
    return 8 * xz_size(text.encode("utf-8")) / len(text)


def yardsticks(train: str, tail: str) -> dict[str, float]:
    """Bits per character of the held-out tail: `xz -9` on it alone, `xz -9` given the training text (what
    compressing training text + tail adds to compressing the training text), and `zstd -19 --patch-from` the
    training text (when the zstd command is installed)."""
    before, after = train.encode("utf-8"), tail.encode("utf-8")
    out = {"xz -9, the tail alone": xz_bits_per_char(tail),
           "xz -9 given the training text": 8 * (xz_size(before + after) - xz_size(before)) / len(tail)}
    if shutil.which("zstd"):
        with tempfile.TemporaryDirectory() as tmp:
            ref, data = Path(tmp) / "train.txt", Path(tmp) / "tail.txt"
            ref.write_bytes(before)
            data.write_bytes(after)
            subprocess.run(["zstd", "-q", "-19", f"--patch-from={ref}", str(data), "-o", f"{data}.zst"], check=True,
                           capture_output=True)  # its tuning notes go to stderr
            out["zstd -19 --patch-from the training text"] = 8 * Path(f"{data}.zst").stat().st_size / len(tail)
    return out


def variants(args) -> list[tuple[str, dict]]:
    """(name, config values) per run: each cell at the base settings, then the first cell with each --vary
    value changed alone, so every lever is measured against the same baseline in the same run."""
    base = {"model.hidden_dim": args.hidden_dim, "model.embed_dim": args.embed_dim, "batch_size": args.batch_size,
            "amp": args.amp == "true", "schedule": args.schedule}
    cells = args.cells.split(",")
    runs = [(cell, {**base, "model.cell": cell}) for cell in cells]
    for spec in args.vary:
        key, _, values = spec.partition("=")
        kind = fields.field_type(CharTrainConfig, key)
        runs += [(f"{cells[0]}, {key}={text}", {**base, "model.cell": cells[0], key: fields.parse_value(kind, text)})
                 for text in values.split(",")]
    return runs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--text", default=None, help="default: the Python standard library's source")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per run")
    p.add_argument("--cells", default="rnn,lstm,gru")
    p.add_argument("--hidden-dim", type=int, default=CharLMConfig.hidden_dim)
    p.add_argument("--embed-dim", type=int, default=CharLMConfig.embed_dim, help="0: one-hot input")
    p.add_argument("--batch-size", type=int, default=CharTrainConfig.batch_size)
    p.add_argument("--amp", choices=("true", "false"), default=str(CharTrainConfig.amp).lower(),
                   help="bf16 autocast where the CPU runs bf16 natively")
    p.add_argument("--schedule", choices=("cosine", "plateau"), default=CharTrainConfig.schedule)
    p.add_argument("--vary", action="append", default=[], metavar="FIELD=V1,V2",
                   help="also train the first cell with FIELD (a train config field, model.* for the model's) set "
                        "to each value in turn, e.g. --vary bptt=64,256 --vary model.num_layers=2")
    p.add_argument("--adaptive", choices=("true", "false"), default="true",
                   help="also score each model learning as it reads (about 1.5 min per model on 2 cores)")
    args = p.parse_args()
    try:
        runs = variants(args)
    except ValueError as exc:
        p.error(f"--vary: {exc}")
    train, tail = split_text(read_text(args.text), CharTrainConfig.held_out)
    marks = yardsticks(train, tail)
    xz = marks["xz -9, the tail alone"]
    print(f"held-out tail: {len(tail)} characters; " + "; ".join(f"{k}: {v:.3f}" for k, v in marks.items()) + " bpc")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, values) in enumerate(runs):
            cfg = fields.build(CharTrainConfig, {**values, "text": args.text, "minutes": args.minutes,
                                                 "out": str(Path(tmp) / str(i)), "progress": False})
            trainer = CharTrainer(cfg)
            trainer.fit()
            m = trainer.finish(adaptive=args.adaptive == "true")
            rows.append((name, m["val_bpc"], m["chars_per_second"], m["train_chars"]))
            if "val_bpc_adaptive" in m:
                rows.append((f"{name}, learning as it reads", m["val_bpc_adaptive"], None, None))
            print(f"{name}: held-out bpc {m['val_bpc']:.3f} after {m['train_chars']} characters", flush=True)
    print(f"\n{'model':<44} {'held-out bpc':>13} {'vs xz -9':>9} {'train chars/s':>14} {'chars seen':>12}")
    for name, bpc in marks.items():
        print(f"{name:<44} {bpc:>13.3f} {bpc / xz:>8.2f}x")
    for name, bpc, rate, seen in rows:
        print(f"{name:<44} {bpc:>13.3f} {bpc / xz:>8.2f}x" + (f" {rate:>14,} {seen:>12,}" if rate else ""))
    print(f"(same budget: {args.minutes:g} min of training steps per run; hidden {args.hidden_dim}, embedding "
          f"{args.embed_dim or 'none (one-hot)'}, batch {args.batch_size}, bf16 {args.amp}, {args.schedule} "
          "schedule unless the row says otherwise; below 1.00x beats xz -9 on the tail alone. 'Learning as it "
          "reads': the model takes a step on each chunk of the tail after scoring it, as an adaptive compressor "
          "does; charlm/score.py)")


if __name__ == "__main__":
    main()
