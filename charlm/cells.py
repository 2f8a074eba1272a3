"""Find the character model's interpretable cells, as in Karpathy, Johnson and Fei-Fei (2015): for each
simple property of the text (inside a string literal, inside a comment, indentation depth, position in the
line, bracket depth) the cell whose activation correlates best with it, and a page that shows the text
coloured by those cells."""

from __future__ import annotations

import html

import torch

from .model import CharLM, CharVocab

PROPERTIES = ("in_string", "in_comment", "indentation", "line_position", "bracket_depth")


def text_properties(text: str) -> dict[str, list[float]]:
    """Per character of (Python-like) source: a small scanner, not a parser, so it works on any slice.
    Strings are '...', "...", and their triple-quoted forms (with backslash escapes); comments run from #
    outside a string to the end of the line; brackets count outside strings and comments."""
    props = {name: [] for name in PROPERTIES}
    quote, comment, escaped, depth, column, indent, at_indent = None, False, False, 0, 0, 0, True
    i = 0
    while i < len(text):
        ch = text[i]
        step = 1
        if ch == "\n":  # the newline belongs to its line; the next character starts a new one
            _append(props, quote is not None and len(quote) == 3, False, indent, column, depth)
            if quote in ("'", '"'):
                quote = None  # an unterminated one-line string ends with the line
            comment, column, indent, at_indent = False, 0, 0, True
            i += 1
            continue
        if quote is None and not comment:
            if ch == "#":
                comment = True
            elif ch in "'\"":
                quote = ch * 3 if text.startswith(ch * 3, i) else ch
                step = len(quote)
            elif ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth = max(0, depth - 1)
        elif quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif text.startswith(quote, i):
                step = len(quote)
                for _ in range(step):
                    _append(props, True, comment, indent, column, depth)
                    column += 1
                quote = None
                i += step
                continue
        if at_indent and ch == " ":
            indent += 1
        else:
            at_indent = False
        for _ in range(step):
            _append(props, quote is not None, comment, indent, column, depth)
            column += 1
        i += step
    return props


def _append(props, in_string, in_comment, indent, column, depth) -> None:
    props["in_string"].append(float(in_string))
    props["in_comment"].append(float(in_comment))
    props["indentation"].append(indent / 4)
    props["line_position"].append(float(column))
    props["bracket_depth"].append(float(depth))


def correlations(activations: torch.Tensor, values: list[float]) -> torch.Tensor:
    """Pearson r of each cell's activation [T, H] with one property [T]; 0 for constant series."""
    a = activations - activations.mean(0)
    v = torch.tensor(values, dtype=activations.dtype)
    v = v - v.mean()
    denom = a.norm(dim=0) * v.norm()
    return torch.where(denom > 0, (a * v[:, None]).sum(0) / denom.clamp_min(1e-12), torch.zeros_like(denom))


def cell_report(model: CharLM, vocab: CharVocab, text: str) -> dict:
    """Each property's best cell and its r, with every cell's activation over `text` (for the page)."""
    activations = model.cell_activations(vocab.encode(text))
    props = text_properties(text)
    best = {}
    for name in PROPERTIES:
        r = correlations(activations, props[name])
        cell = int(r.abs().argmax())
        best[name] = {"cell": cell, "r": float(r[cell])}
    return {"best": best, "activations": activations, "cell_type": model.cfg.cell}


def cells_page(text: str, report: dict, show: int = 3000) -> str:
    """A self-contained page: for each property, the text coloured by its best cell (blue -1 ... red +1)."""
    sections = []
    for name, best in report["best"].items():
        acts = report["activations"][:show, best["cell"]].tolist()
        spans = []
        for ch, a in zip(text[:show], acts):
            colour = f"rgba(220,40,40,{a:.2f})" if a >= 0 else f"rgba(40,80,220,{-a:.2f})"
            spans.append(f'<span style="background:{colour}">{html.escape(ch)}</span>' if ch != "\n" else "\n")
        sections.append(f"<h2>{html.escape(name)}: cell {best['cell']} (r = {best['r']:+.3f})</h2>"
                        f"<pre>{''.join(spans)}</pre>")
    what = "tanh(c)" if report["cell_type"] == "lstm" else "h"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>character model cells</title>
<style>body{{font:15px/1.4 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem}}
pre{{font:13px/1.35 ui-monospace,monospace;white-space:pre-wrap;border:1px solid #ddd;padding:.6rem}}</style></head>
<body><h1>Cells that track the text</h1>
<p>For each property, the cell whose activation ({what}) correlates best with it over the text; each character
is coloured by that cell's activation after reading it (blue -1, white 0, red +1).</p>
{''.join(sections)}</body></html>
"""
