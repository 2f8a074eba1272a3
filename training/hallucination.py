"""Object hallucination, measured: what captions name that the photo does not show.

- `chair`: CHAIR (Rohrbach et al. 2018) against human references, over the concept table
  (`captioner.concepts`): CHAIR_s, the share of captions that name a concept no reference names, and CHAIR_i,
  the share of named concepts (once per caption) that no reference names. `training.evaluate` reports it.
- `imagenet_rows`: on photos labelled with an ImageNet class (`imagenet-samples`), per concept with ImageNet
  classes, the share of other classes' photos whose caption names it and the share of its own that do.

    python -m training.hallucination --model PATH --data-dir ../shared/data/imagenet-samples [--grounded false] \
        [--out rows.json] [--captions-out captions.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from captioner import Caption, load
from captioner.concepts import CONCEPTS, named_concepts, shown_concepts, word_concepts
from captioner.options import OptionError, parse_bool
from captioner.vocab import tokenize

from .features import image_loader
from .fluency import fluency

log = logging.getLogger("training.hallucination")


def chair(captions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """CHAIR_s and CHAIR_i (%), and the concepts most often named without support."""
    table = word_concepts(CONCEPTS)
    named_total = wrong_total = wrong_captions = 0
    wrong_by_concept: Counter = Counter()
    for caption, refs in zip(captions, references, strict=True):
        named = named_concepts(tokenize(caption), table)
        shown = shown_concepts(refs, table)
        wrong = named - shown
        named_total += len(named)
        wrong_total += len(wrong)
        wrong_captions += bool(wrong)
        wrong_by_concept.update(wrong)
    return {"chair_s_pct": round(100 * wrong_captions / max(len(captions), 1), 2),
            "chair_i_pct": round(100 * wrong_total / max(named_total, 1), 2),
            "unsupported": dict(wrong_by_concept.most_common(5))}


def imagenet_rows(captions: Sequence[str], classes: Sequence[int], flagged: Sequence[bool] | None = None) -> dict[str, dict]:
    """Per concept with ImageNet classes: `other_named_pct`, the share of photos of other classes whose
    caption names it; `own_named_pct`, the share of its own photos whose caption does; with `flagged`, also
    `own_flagged_pct`, the share of its own photos answered low-confidence (with ImageNet labels instead)."""
    table = word_concepts(CONCEPTS)
    named = [named_concepts(tokenize(c), table) for c in captions]
    flagged = flagged if flagged is not None else [False] * len(captions)
    pct = lambda xs: round(100 * sum(xs) / max(len(xs), 1), 2)  # noqa: E731
    rows = {}
    for concept in CONCEPTS:
        if not concept.imagenet:
            continue
        own = [(concept.name in n, f) for n, k, f in zip(named, classes, flagged) if k in concept.imagenet]
        other = [concept.name in n for n, k in zip(named, classes) if k not in concept.imagenet]
        rows[concept.name] = {"own_photos": len(own), "own_named_pct": pct([n for n, _ in own]),
                              "own_flagged_pct": pct([f for _, f in own]), "other_photos": len(other),
                              "other_named": sum(other), "other_named_pct": pct(other)}
    return rows


def low_confidence_pct(captions: Sequence[Caption]) -> float:
    """% of photos whose answer is flagged low-confidence (`captioner.grounding`; 0 without grounding)."""
    return round(100 * sum(c.image is not None and c.image.low_confidence for c in captions) / max(len(captions), 1), 2)


def read_labels(data_dir: Path) -> list[tuple[Path, int, str]]:
    """(image path, class index, class name) from imagenet-samples' labels.tsv."""
    with open(data_dir / "labels.tsv", newline="") as f:
        return [(data_dir / "images" / r["file"], int(r["class_index"]), r["class_name"])
                for r in csv.DictReader(f, delimiter="\t")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.hallucination", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    p.add_argument("--data-dir", default="../shared/data/imagenet-samples")
    p.add_argument("--grounded", default=None, help="true/false (default: the model's own)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--captions-out", default=None, help="write [{file, class_name, caption, low_confidence}] here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        photos = read_labels(Path(args.data_dir))
        model = load(args.model)
        raw = {} if args.grounded is None else {"grounded": parse_bool("grounded", args.grounded)}
        options = model.default_options.updated(raw, len(model.vocab))
    except (OSError, KeyError, ValueError, OptionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    captions = []
    for batch in image_loader([path for path, _, _ in photos], model.preprocess_cfg, 32, 2, "cpu"):
        captions.extend(c[0] for c in model.decode(model.encode(batch), options))
    texts = [c.text for c in captions]
    reasons = [c.image.reason if c.image is not None else None for c in captions]
    low = [r is not None for r in reasons]
    result = {"photos": len(photos), "grounded": options.grounded, "low_confidence_pct": low_confidence_pct(captions),
              "low_confidence_reasons": dict(Counter(r for r in reasons if r)),
              "fluency_of_confident_captions": fluency([t for t, flag in zip(texts, low) if not flag]),
              "concepts": imagenet_rows(texts, [k for _, k, _ in photos], low)}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.captions_out:
        Path(args.captions_out).write_text(json.dumps(
            [{"file": path.name, "class_name": name, "caption": t, "low_confidence": flag}
             for (path, _, name), t, flag in zip(photos, texts, low)], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
