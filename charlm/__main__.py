"""Train, sample and inspect a character-level language model.

    python -m charlm train [--text FILE] [--model.cell lstm|gru|rnn] [--minutes M] --out DIR [--resume]
    python -m charlm sample --model DIR/model.safetensors [--length N] [--temperature T] [--prime S]
    python -m charlm cells --model DIR/model.safetensors --text FILE --out page.html
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from captioner import fields
from captioner.checkpoint import CheckpointError

from .cells import cell_report, cells_page
from .model import load
from .score import TextError
from .train import CharTrainConfig, CharTrainer, read_text, split_text, stdlib_text


def _add_train_args(p: argparse.ArgumentParser) -> None:
    fields.add_field_arguments(p, CharTrainConfig, dashes=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")


def train_command(args) -> int:
    cfg = fields.build(CharTrainConfig, fields.given_fields(args, CharTrainConfig))
    trainer = CharTrainer(cfg)
    if args.resume:
        trainer.resume()
    trainer.fit()
    metrics = trainer.finish()
    print(f"wrote {trainer.out / 'model.safetensors'} ({metrics['chars_per_second']} characters/s in training)")
    print(f"held-out bpc {metrics['val_bpc']:.3f} as trained, {metrics['val_bpc_adaptive']:.3f} learning as it reads")
    return 0


def sample_command(args) -> int:
    model, vocab, _ = load(args.model)
    print(model.sample(vocab, args.length, args.prime, args.temperature, args.top_k, args.top_p, args.seed))
    return 0


def cells_command(args) -> int:
    model, vocab, _ = load(args.model)
    text = (read_text(args.text) if args.text else split_text(stdlib_text(), CharTrainConfig.held_out)[1])[: args.chars]
    report = cell_report(model, vocab, text)
    for prop, best in report["best"].items():
        print(f"{prop:<16} cell {best['cell']:>4}  r = {best['r']:+.3f}")
    Path(args.out).write_text(cells_page(text, report))
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m charlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_args(sub.add_parser("train", help="train on a text file (default: the Python standard library)"))
    s = sub.add_parser("sample", help="generate text")
    s.add_argument("--model", default="runs/charlm/model.safetensors")
    s.add_argument("--length", type=int, default=1000)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--prime", default="\n")
    s.add_argument("--seed", type=int, default=None)
    c = sub.add_parser("cells", help="find the cells that track quotes, comments, indentation, ...; write an HTML page")
    c.add_argument("--model", default="runs/charlm/model.safetensors")
    c.add_argument("--text", default=None, help="default: the Python standard library (its held-out tail)")
    c.add_argument("--chars", type=int, default=20_000, help="characters of the text to analyse")
    c.add_argument("--out", default="runs/charlm/cells.html")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        return {"train": train_command, "sample": sample_command, "cells": cells_command}[args.command](args)
    except (TextError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
