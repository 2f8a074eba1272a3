"""Character-model benchmark: held-out bits per character of `rnn`, `lstm` and `gru` trained for the same
time budget on the same text, beside `xz -9` (liblzma, preset 9) compressing the held-out tail alone, and
each cell's training throughput (torch's fused modules), measured side by side in one run.

    make bench-charlm [ARGS="--minutes 5 --text FILE"]
"""

from __future__ import annotations

import argparse
import lzma
import tempfile
from pathlib import Path

from charlm.model import CharLMConfig
from charlm.train import CharTrainConfig, CharTrainer, read_text, split_text


def xz_bits_per_char(text: str) -> float:
    """What `xz -9` needs for the text: compressed bits over characters."""
    return 8 * len(lzma.compress(text.encode("utf-8"), format=lzma.FORMAT_XZ, preset=9)) / len(text)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--text", default=None, help="default: the Python standard library's source")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per cell")
    p.add_argument("--cells", default="rnn,lstm,gru")
    p.add_argument("--hidden-dim", type=int, default=CharLMConfig.hidden_dim)
    args = p.parse_args()
    _, tail = split_text(read_text(args.text), CharTrainConfig.held_out)
    xz = xz_bits_per_char(tail)
    print(f"held-out tail: {len(tail)} characters; xz -9: {xz:.3f} bits per character")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cell in args.cells.split(","):
            cfg = CharTrainConfig(text=args.text, model=CharLMConfig(cell=cell, hidden_dim=args.hidden_dim),
                                  minutes=args.minutes, out=str(Path(tmp) / cell), progress=False)
            trainer = CharTrainer(cfg)
            trainer.fit()
            m = trainer.finish()
            rows.append((cell, m["val_bpc"], m["chars_per_second"], m["train_chars"]))
            print(f"{cell}: held-out bpc {m['val_bpc']:.3f} after {m['train_chars']} characters", flush=True)
    print(f"\n{'model':<8} {'held-out bpc':>13} {'vs xz -9':>9} {'train chars/s':>14} {'chars seen':>11}")
    print(f"{'xz -9':<8} {xz:>13.3f} {1.0:>8.2f}x {'':>14} {'':>11}")
    for cell, bpc, rate, seen in rows:
        print(f"{cell:<8} {bpc:>13.3f} {bpc / xz:>8.2f}x {rate:>14,} {seen:>11,}")
    print(f"(same budget: {args.minutes:g} min of training steps per cell, hidden {args.hidden_dim}; "
          "below 1.00x beats xz)")


if __name__ == "__main__":
    main()
