"""Command line: `python -m captioner caption [--model PATH] [--beam-size K ...] IMAGE|DIR|GLOB...
[--out FILE.jsonl [--resume]]`; the decoding flags come from `DecodeOptions`, and those not given keep the
model's own defaults."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from .backends import BACKEND_ENV, BACKENDS, default_backend
from .bulk import caption_library, expand, photo_record
from .model import default_model_path, load
from .options import add_arguments, from_arguments
from .explain import explanation_page
from .preprocess import ImageError, load_image


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m captioner")
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("caption", help="caption image files, folders (recursively) or globs")
    cap.add_argument("images", nargs="+", metavar="IMAGE|DIR|GLOB")
    cap.add_argument("--model", default=None, help=f"checkpoint (default: {default_model_path()})")
    cap.add_argument("--backend", choices=BACKENDS, default=None, help="what runs the encoder and the decoding step "
                     f"(default: ${BACKEND_ENV}, else {default_backend()} on this CPU)")
    add_arguments(cap)
    cap.add_argument("--json", action="store_true", help="one JSON object per image and line")
    cap.add_argument("--explain", action="store_true", help="each word with its probability, entropy and alternatives")
    cap.add_argument("--explain-html", metavar="OUT.html", help="write a self-contained page: photos, words coloured "
                     "by probability, each word's saliency over the photo, the decoder's cell traces")
    cap.add_argument("--out", metavar="FILE.jsonl", help="a whole library: one JSON line per photo written to FILE "
                     "as it completes, photos read by worker processes, in batches")
    cap.add_argument("--resume", action="store_true", help="with --out: skip the photos FILE already holds")
    cap.add_argument("--batch-size", type=int, default=16, help="with --out: photos per encoder batch")
    cap.add_argument("--workers", type=int, default=2, help="with --out: processes reading photos at most (on the "
                     "CPU: only cores the encoder leaves free)")
    cap.add_argument("--no-progress", action="store_true", help="with --out: no progress bar")
    cap.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help="with --out: caption on Ray Data "
                     "actors (the `ray` extra): a local instance, or the cluster at ADDRESS ('auto', 'ray://head:10001')")
    cap.add_argument("--actors", type=int, default=2, help="with --ray: actors, each holding one model")
    args = parser.parse_args(argv)
    if args.out and (args.explain or args.explain_html):
        parser.error("--out writes captions only; --explain and --explain-html are for a few photos")
    if args.batch_size < 1 or args.workers < 0 or args.actors < 1:
        parser.error("--batch-size and --actors must be at least 1, --workers at least 0")
    if args.ray and not args.out:
        parser.error("--ray needs --out FILE.jsonl")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model = load(args.model, args.backend)
    except (FileNotFoundError, ValueError) as exc:  # CheckpointError, a bad $CAPTIONER_BACKEND
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        options = model.default_options.updated(from_arguments(args), len(model.vocab), public_only=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = expand(args.images)
    if args.out:
        return caption_to_file(model, paths, options, args)
    return caption_and_print(model, paths, options, args)


def caption_to_file(model, paths: list[str], options, args) -> int:
    try:
        if args.ray:
            from .ray_bulk import caption_library_ray

            summary = caption_library_ray(args.model, paths, Path(args.out), options, backend=model.backend,
                                          address=None if args.ray == "local" else args.ray, actors=args.actors,
                                          resume=args.resume, batch_size=args.batch_size, progress=not args.no_progress)
        else:
            summary = caption_library(model, paths, Path(args.out), options, resume=args.resume,
                                      batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {summary.line()}", file=sys.stderr)
    return 1 if summary.failed else 0


def caption_and_print(model, paths: list[str], options, args) -> int:
    explain = args.explain or bool(args.explain_html)
    status, pages = 0, []
    for path in paths:
        try:
            captions = model.caption([path], options, explain=explain)[0]
        except (FileNotFoundError, ImageError, ValueError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps(photo_record(path, captions)))
        else:
            print_captions(path, captions, args.explain)
        if args.explain_html:
            pages.append((path, photo_jpeg(path), [c.to_dict() for c in captions]))
    if args.explain_html and pages:
        Path(args.explain_html).write_text(explanation_page(pages, model.preprocess_cfg.resize))
        print(f"wrote {args.explain_html}", file=sys.stderr)
    return status


def print_captions(path: str, captions, explain: bool) -> None:
    image = captions[0].image
    if image is not None and image.low_confidence:
        print(f"{path}\tlow confidence: {image.alt_text(captions[0].text)}")
    for c in captions:
        evidence = "\t" + ", ".join(f"{e.word} {e.prob:.2f}" for e in c.evidence) if c.evidence else ""
        print(f"{path}\t{c.text}\t{c.log_prob:.3f}{evidence}")
        if explain:
            print_explanation(c)


def print_explanation(caption) -> None:
    for w in caption.explanation.words:
        alternatives = ", ".join(f"{a['word']} {a['prob']:.2f}" for a in w.alternatives if a["word"] != w.word)
        print(f"    {w.word:<14} p={w.prob:.3f}  entropy {w.entropy:.2f}  alternatives: {alternatives}")


def photo_jpeg(path: str, longest: int = 800) -> bytes:
    """The photo as a browser shows it: upright, RGB, at most `longest` pixels a side."""
    img = load_image(path)
    img.thumbnail((longest, longest))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
