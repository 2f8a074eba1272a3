"""Why the model said it: for each word of a caption, its probability, the alternatives at that step, the
entropy of the step's distribution, which regions of the photo support it, and what the decoder's most
active cells did (after Karpathy, Johnson and Fei-Fei 2015, "Visualizing and Understanding Recurrent
Networks").

Saliency is by occlusion: each cell of a grid x grid partition of the (preprocessed) photo is greyed out
in turn, all grid^2 copies are encoded in one batch, and the caption is scored under teacher forcing with
each copy's vector; a region's importance for a word is how much the word's log-probability falls without
it. Occlusion is used rather than gradients because it measures what the decoder actually does when the
region is gone (no linearisation through ReLU6/BatchNorm), needs no autograd through the CNN, and costs a
fixed grid^2 encoder forwards in one batch (`make bench-serve` times it).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch

from .decoder import CaptionDecoder
from .decoding import WordBans, teacher_forced_steps
from .options import DecodeOptions, OptionError
from .preprocess import PreprocessConfig
from .vocab import Vocabulary

GRID = 7
TOP_CELLS = 8
ALTERNATIVES = 5
MAX_N_BEST = 3  # captions explained per image: each costs a teacher-forced pass over grid^2 + 1 vectors


@dataclass
class WordExplanation:
    word: str  # "<end>" for the end of a finished caption
    prob: float  # the model's probability of this word at this step: the words' probabilities multiply to the caption's
    entropy: float  # nats, of the model's whole next-word distribution at this step
    alternatives: list[dict]  # the likeliest words the decoder could choose here, {"word", "prob"}, best first
    saliency: list[list[float]]  # grid x grid: drop in log p(word) when that region is greyed out (> 0: it supports the word)


@dataclass
class CellTrace:
    cell: int  # index of the hidden unit
    activation: list[float]  # per word (while predicting it): tanh(c_t) for an LSTM, h_t for a GRU or RNN


@dataclass
class Explanation:
    words: list[WordExplanation]
    cells: list[CellTrace]  # the cells whose activation varies most over this caption
    grid: int
    saliency_method: str = "occlusion"

    def to_dict(self) -> dict:
        return asdict(self)


class Explainable(Protocol):
    """What explaining needs of a model (a `captioner.Captioner` has it)."""

    decoder: CaptionDecoder
    vocab: Vocabulary
    preprocess_cfg: PreprocessConfig

    def encode(self, batch: torch.Tensor) -> torch.Tensor: ...


def check_explainable(n_captions: int) -> None:
    """Refuse (OptionError, so the service answers 422) more captions per image than explain covers."""
    if n_captions > MAX_N_BEST:
        raise OptionError(f"explain covers at most {MAX_N_BEST} captions per image: n_best must be <= "
                          f"{MAX_N_BEST} with explain, got {n_captions}")


def occluded_copies(image: torch.Tensor, grid: int, fill: torch.Tensor) -> torch.Tensor:
    """grid^2 copies of a preprocessed image [3, H, W], copy r*grid+c with region (r, c) set to `fill` [3]."""
    _, h, w = image.shape
    rows = torch.linspace(0, h, grid + 1).round().long().tolist()
    cols = torch.linspace(0, w, grid + 1).round().long().tolist()
    copies = image.unsqueeze(0).repeat(grid * grid, 1, 1, 1)
    for r in range(grid):
        for c in range(grid):
            copies[r * grid + c, :, rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = fill[:, None, None]
    return copies


def explain_captions(model: Explainable, image: torch.Tensor, captions: list[list[int]], options: DecodeOptions,
                     grid: int = GRID, top_cells: int = TOP_CELLS) -> list[Explanation]:
    """Explain each of one image's captions, given as word ids (and <end> if it finished); `image` is the
    preprocessed tensor [3, H, W] they came from."""
    check_explainable(len(captions))
    pre, vocab = model.preprocess_cfg, model.vocab
    grey = (0.5 - torch.tensor(pre.mean)) / torch.tensor(pre.std)  # mid-grey, normalised as the encoder sees it
    features = model.encode(torch.cat([image.unsqueeze(0), occluded_copies(image, grid, grey)]))
    bans = WordBans.for_vocab(vocab, options)
    out = []
    for ids in captions:
        log_probs, cells = teacher_forced_steps(model.decoder, features, ids, vocab.start_id)
        chosen = log_probs.gather(2, torch.tensor(ids).expand(log_probs.size(0), -1).unsqueeze(2)).squeeze(2)
        drop = (chosen[:1] - chosen[1:]).T.reshape(len(ids), grid, grid)  # [T, grid, grid]
        own = log_probs[0]  # the unoccluded photo: the numbers the caption was scored with
        entropy = -(own.exp() * own.clamp_min(-1e4)).sum(-1)
        previous = torch.tensor([vocab.start_id] + ids[:-1])
        allowed = own.masked_fill(bans.mask(previous, torch.arange(len(ids)), own.size(-1)), float("-inf"))
        top = allowed.topk(ALTERNATIVES, dim=-1)
        words = [WordExplanation(
            word=vocab.itos[w], prob=float(own[t, w].exp()), entropy=float(entropy[t]),
            alternatives=[{"word": vocab.itos[i], "prob": math.exp(lp)}
                          for lp, i in zip(top.values[t].tolist(), top.indices[t].tolist()) if lp > float("-inf")],
            saliency=drop[t].tolist()) for t, w in enumerate(ids)]
        trace = cells[0]  # [T, H]
        varying = trace.var(0, unbiased=False).topk(min(top_cells, trace.size(1))).indices.tolist()
        out.append(Explanation(words, [CellTrace(i, trace[:, i].tolist()) for i in varying], grid))
    return out


VIEW_JS = Path(__file__).with_name("explain_view.js")


def explanation_page(photos: list[tuple[str, bytes, list[dict]]], resize: str) -> str:
    """A self-contained HTML page: for each (name, JPEG bytes, explained captions as their `to_dict()`), the
    photo and each caption's explanation, drawn by the same renderer as the service's web page."""
    data = [{"name": name, "photo": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode(), "captions": caps}
            for name, jpeg, caps in photos]
    payload = json.dumps(data).replace("</", "<\\/")  # safe inside <script>
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>captioner: explained captions</title>
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}
.photo{{position:relative;display:inline-block}} .photo img{{max-width:100%;max-height:420px;display:block}}
.meta{{color:#777;font-size:.85rem}} .cell-name{{display:inline-block;width:6rem;color:#555;font-size:.85rem}}
.caption{{margin:1rem 0;border-top:1px solid #ddd;padding-top:.6rem}}</style></head>
<body><h1>Explained captions</h1><div id="root"></div>
<script>{VIEW_JS.read_text()}</script>
<script>
const DATA = {payload};
for (const item of DATA) {{
  const section = document.createElement("section");
  section.innerHTML = "<h2></h2><div class='photo'><img></div>";
  section.querySelector("h2").textContent = item.name;
  const img = section.querySelector("img");
  img.src = item.photo;
  document.getElementById("root").appendChild(section);
  for (const c of item.captions) {{
    const box = document.createElement("div");
    box.className = "caption";
    const head = document.createElement("div");
    head.textContent = `${{c.text}}  (log p = ${{c.log_prob.toFixed(2)}})`;
    const body = document.createElement("div");
    box.append(head, body);
    section.appendChild(box);
    img.addEventListener("load", () => renderExplanation(body, img, c.explanation, {json.dumps(resize)}), {{once: true}});
  }}
}}
</script></body></html>
"""
