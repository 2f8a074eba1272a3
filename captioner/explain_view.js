// Renders a caption's explanation (captioner.explain): the words coloured by probability, a click on a
// word shows its occlusion-saliency heatmap over the photo with its alternatives, and the decoder's most
// varying cells as rows of words coloured by activation. One renderer for the CLI's self-contained HTML
// page and the service's web page, so both show the same numbers the same way.
"use strict";

function probColour(p) {  // 0 -> red, 1 -> green
  return `hsl(${Math.round(120 * p)}, 70%, 80%)`;
}

function activationColour(a) {  // -1 -> blue, 0 -> white, +1 -> red
  const v = Math.max(-1, Math.min(1, a));
  return v >= 0 ? `rgba(220, 40, 40, ${v.toFixed(3)})` : `rgba(40, 80, 220, ${(-v).toFixed(3)})`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// The region of the displayed photo the model saw: all of it (squash) or the centred square (center_crop).
function seenRegion(img, resize) {
  const w = img.clientWidth, h = img.clientHeight;
  if (resize !== "center_crop") return { x: 0, y: 0, w, h };
  const s = Math.min(w, h);
  return { x: (w - s) / 2, y: (h - s) / 2, w: s, h: s };
}

function drawSaliency(canvas, img, word, grid, resize) {
  canvas.width = img.clientWidth;
  canvas.height = img.clientHeight;
  canvas.style.width = img.clientWidth + "px";
  canvas.style.height = img.clientHeight + "px";
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const peak = Math.max(1e-6, ...word.saliency.flat().map((v) => Math.max(0, v)));
  const r = seenRegion(img, resize);
  for (let i = 0; i < grid; i++) {
    for (let j = 0; j < grid; j++) {
      const v = Math.max(0, word.saliency[i][j]) / peak;  // regions that support the word
      ctx.fillStyle = `rgba(255, 40, 0, ${(0.7 * v).toFixed(3)})`;
      ctx.fillRect(r.x + (j * r.w) / grid, r.y + (i * r.h) / grid, r.w / grid + 0.5, r.h / grid + 0.5);
    }
  }
  canvas.style.display = "block";
  canvas.dataset.word = word.word;
}

// container: an element to fill; img: the <img> of the photo, inside a position:relative wrapper;
// explanation: Explanation.to_dict(); resize: the model's preprocessing resize mode.
function renderExplanation(container, img, explanation, resize) {
  container.innerHTML = "";
  let canvas = img.parentElement.querySelector("canvas.saliency");
  if (!canvas) {
    canvas = el("canvas", "saliency");
    canvas.style.cssText = "position:absolute;left:0;top:0;pointer-events:none;display:none";
    img.parentElement.appendChild(canvas);
  }
  const words = el("div", "explain-words");
  const detail = el("div", "explain-detail");
  detail.textContent = "Click a word to see which parts of the photo support it.";
  explanation.words.forEach((w, t) => {
    const span = el("span", "explain-word", w.word);
    span.style.background = probColour(w.prob);
    span.style.cssText += ";padding:1px 4px;margin:1px;border-radius:3px;cursor:pointer;display:inline-block";
    span.title = `p = ${w.prob.toFixed(3)}`;
    span.dataset.index = t;
    span.addEventListener("click", () => {
      words.querySelectorAll(".explain-word").forEach((s) => (s.style.outline = ""));
      span.style.outline = "2px solid #333";
      drawSaliency(canvas, img, w, explanation.grid, resize);
      detail.innerHTML = "";
      detail.appendChild(el("div", "", `“${w.word}”: p = ${w.prob.toFixed(3)}, entropy ${w.entropy.toFixed(2)} nats`));
      const alts = el("ol", "alternatives");
      for (const a of w.alternatives) alts.appendChild(el("li", "", `${a.word}  ${a.prob.toFixed(3)}`));
      detail.appendChild(alts);
    });
    words.appendChild(span);
  });
  container.appendChild(words);
  container.appendChild(detail);
  const cells = el("div", "explain-cells");
  cells.appendChild(el("div", "meta", "Decoder cells whose activation varies most over the caption (blue -1 … red +1):"));
  for (const c of explanation.cells) {
    const row = el("div", "cell-row");
    row.appendChild(el("span", "cell-name", `cell ${c.cell}`));
    c.activation.forEach((a, t) => {
      const s = el("span", "cell-word", explanation.words[t].word);
      s.style.cssText = `background:${activationColour(a)};padding:0 3px;margin:0 1px`;
      s.title = a.toFixed(3);
      row.appendChild(s);
    });
    cells.appendChild(row);
  }
  container.appendChild(cells);
}

if (typeof module !== "undefined") module.exports = { renderExplanation };
