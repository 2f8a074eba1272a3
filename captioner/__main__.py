"""Command line: `python -m captioner caption [--model PATH] [--beam-size K ...] IMAGE...`; the decoding flags
come from `DecodeOptions`, and those not given keep the model's own defaults."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .model import default_model_path, load
from .options import add_arguments, from_arguments
from .explain import explanation_page
from .preprocess import ImageError, load_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m captioner")
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("caption", help="caption image files")
    cap.add_argument("images", nargs="+", metavar="IMAGE")
    cap.add_argument("--model", default=None, help=f"checkpoint (default: {default_model_path()})")
    add_arguments(cap)
    cap.add_argument("--json", action="store_true", help="one JSON object per image and line")
    cap.add_argument("--explain", action="store_true", help="each word with its probability, entropy and alternatives")
    cap.add_argument("--explain-html", metavar="OUT.html", help="write a self-contained page: photos, words coloured "
                     "by probability, each word's saliency over the photo, the decoder's cell traces")
    args = parser.parse_args(argv)

    try:
        model = load(args.model)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        options = model.default_options.updated(from_arguments(args), len(model.vocab), public_only=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    explain = args.explain or bool(args.explain_html)
    status, pages = 0, []
    for path in args.images:
        try:
            captions = model.caption([path], options, explain=explain)[0]
        except (FileNotFoundError, ImageError, ValueError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            status = 1
            continue
        image = captions[0].image
        if args.json:
            print(json.dumps({"image": path, "captions": [c.to_dict() for c in captions],
                              "grounding": image.to_dict() if image is not None else None}))
        else:
            if image is not None and image.low_confidence:
                print(f"{path}\tlow confidence: {image.alt_text(captions[0].text)}")
            for c in captions:
                evidence = "\t" + ", ".join(f"{e.word} {e.prob:.2f}" for e in c.evidence) if c.evidence else ""
                print(f"{path}\t{c.text}\t{c.log_prob:.3f}{evidence}")
                if args.explain:
                    print_explanation(c)
        if args.explain_html:
            pages.append((path, photo_jpeg(path), [c.to_dict() for c in captions]))
    if args.explain_html and pages:
        Path(args.explain_html).write_text(explanation_page(pages, model.preprocess_cfg.resize))
        print(f"wrote {args.explain_html}", file=sys.stderr)
    return status


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
