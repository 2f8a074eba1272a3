"""Character-model benchmark: held-out bits per character of `rnn`, `lstm` and `gru` trained for the same
time budget on the same text, beside three compressors' yardsticks on the same held-out tail (`xz -9` on the
tail alone; `xz -9` given the training text first, as the model was; `zstd -19 --patch-from` the training
text), and each cell's training throughput (torch's fused modules), measured side by side in one run.

    make bench-charlm [ARGS="--minutes 5 --text FILE"]
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import subprocess
import tempfile
from pathlib import Path

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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--text", default=None, help="default: the Python standard library's source")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per cell")
    p.add_argument("--cells", default="rnn,lstm,gru")
    p.add_argument("--hidden-dim", type=int, default=CharLMConfig.hidden_dim)
    p.add_argument("--embed-dim", type=int, default=CharLMConfig.embed_dim, help="0: one-hot input")
    p.add_argument("--batch-size", type=int, default=CharTrainConfig.batch_size)
    p.add_argument("--amp", action="store_true", help="bf16 autocast where the CPU runs bf16 natively")
    args = p.parse_args()
    train, tail = split_text(read_text(args.text), CharTrainConfig.held_out)
    marks = yardsticks(train, tail)
    xz = marks["xz -9, the tail alone"]
    print(f"held-out tail: {len(tail)} characters; " + "; ".join(f"{k}: {v:.3f}" for k, v in marks.items()) + " bpc")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cell in args.cells.split(","):
            model = CharLMConfig(cell=cell, hidden_dim=args.hidden_dim, embed_dim=args.embed_dim)
            cfg = CharTrainConfig(text=args.text, model=model, batch_size=args.batch_size, amp=args.amp,
                                  minutes=args.minutes, out=str(Path(tmp) / cell), progress=False)
            trainer = CharTrainer(cfg)
            trainer.fit()
            m = trainer.finish()
            rows.append((cell, m["val_bpc"], m["chars_per_second"], m["train_chars"]))
            print(f"{cell}: held-out bpc {m['val_bpc']:.3f} after {m['train_chars']} characters", flush=True)
    print(f"\n{'model':<40} {'held-out bpc':>13} {'vs xz -9':>9} {'train chars/s':>14} {'chars seen':>11}")
    for name, bpc in marks.items():
        print(f"{name:<40} {bpc:>13.3f} {bpc / xz:>8.2f}x")
    for cell, bpc, rate, seen in rows:
        print(f"{cell:<40} {bpc:>13.3f} {bpc / xz:>8.2f}x {rate:>14,} {seen:>11,}")
    print(f"(same budget: {args.minutes:g} min of training steps per cell, hidden {args.hidden_dim}, embedding "
          f"{args.embed_dim or 'none (one-hot)'}, batch {args.batch_size}, bf16 {'on' if args.amp else 'off'}; "
          "below 1.00x beats xz -9 on the tail alone)")


if __name__ == "__main__":
    main()
