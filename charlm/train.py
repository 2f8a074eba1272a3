"""Train a character-level language model with truncated backpropagation through time.

The text (default: the Python standard library's own source, tests excluded, files in sorted order) is cut
into a training part and a held-out tail (the last 5 %). Training cuts the training part into B parallel
streams and walks them in chunks of T characters: the hidden state is carried from chunk to chunk and
detached, so gradients flow back at most T steps while the state remembers further. Metrics are in bits
per character (bpc).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from captioner.checkpoint import atomic_write
from captioner.precision import autocast

from .model import CharLM, CharLMConfig, CharVocab, load, save
from .score import LN2, TextError, adaptive_bits_per_char, bits_per_char, detach, streams

log = logging.getLogger("charlm")


def stdlib_text() -> str:
    """The running interpreter's standard library source: real code nobody here wrote, on every machine.
    Tests excluded; files in sorted path order, so the corpus (and its held-out tail) is fixed."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
    files = sorted(p for p in root.rglob("*.py")
                   if not any(part in skip or part.startswith("test_") for part in p.relative_to(root).parts))
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def read_text(path: str | None) -> str:
    if path is None:
        return stdlib_text()
    data = Path(path).read_bytes()
    if not data.strip():
        raise TextError(f"{path}: the text is empty")
    if b"\0" in data[:65536]:
        raise TextError(f"{path}: looks binary (NUL bytes); give a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextError(f"{path}: not UTF-8 text ({exc})") from None


def split_text(text: str, held_out: float) -> tuple[str, str]:
    cut = len(text) - max(1, int(len(text) * held_out))
    return text[:cut], text[cut:]


@dataclass
class CharTrainConfig:
    text: str | None = None  # file; None: the Python standard library
    model: CharLMConfig = field(default_factory=CharLMConfig)  # --model.cell gru, --model.hidden-dim 256, ...
    batch_size: int = 128  # parallel streams
    bptt: int = 64  # T: characters per chunk (gradient horizon)
    lr: float = 4e-3  # peak learning rate
    schedule: str = "cosine"  # "cosine": warm up, then decay to lr * min_lr over the budget; "plateau": halve when held-out stalls
    warmup: float = 0.02  # share of the budget spent warming up (cosine)
    min_lr: float = 0.02  # final learning rate as a share of lr (cosine)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    minutes: float = 25.0  # time budget for training steps (evaluation and I/O not counted)
    max_steps: int = 0  # 0: no step limit
    eval_every: int = 500
    eval_chars: int = 50_000  # held-out characters scored during training; the final score uses the whole tail
    held_out: float = 0.05
    carry_state: bool = True  # False resets the state every chunk (the ablation: no memory beyond T)
    amp: bool = True  # bf16 autocast for training steps where the CPU runs bf16 natively (no-op elsewhere)
    seed: int = 1234
    threads: int = 0
    out: str = "runs/charlm"
    progress: bool = True

    def __post_init__(self):
        if self.model.vocab_size:
            raise ValueError("model.vocab_size comes from the training text; leave it unset")
        if self.schedule not in ("cosine", "plateau"):
            raise ValueError(f"schedule must be 'cosine' or 'plateau', got {self.schedule!r}")


def cosine_lr(cfg: CharTrainConfig, progress: float) -> float:
    """Linear warm-up over the first `warmup` of the budget, then half a cosine from `lr` down to
    `lr * min_lr` at the end, so every budget ends annealed."""
    if progress < cfg.warmup:
        return cfg.lr * (progress + 1e-3) / (cfg.warmup + 1e-3)
    done = (progress - cfg.warmup) / max(1.0 - cfg.warmup, 1e-9)
    return cfg.lr * (cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))


class CharTrainer:
    """Truncated BPTT over B streams with exact resume (weights, optimiser, RNG, position, carried state)."""

    def __init__(self, cfg: CharTrainConfig):
        self.cfg, self.out = cfg, Path(cfg.out)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        text = read_text(cfg.text)
        train_text, self.val_text = split_text(text, cfg.held_out)
        self.vocab = CharVocab.build(train_text)
        self.train = streams(self.vocab.encode(train_text), cfg.batch_size)
        self.val = self.vocab.encode(self.val_text)
        if len(self.val) < 2:
            raise TextError(f"the text is too short: its held-out {cfg.held_out:.0%} is {len(self.val)} character(s)")
        if self.train.size(1) < cfg.bptt + 1:
            raise TextError(f"the text is too short: {len(train_text)} training characters make streams of "
                            f"{self.train.size(1)}, fewer than one chunk of {cfg.bptt + 1} (batch {cfg.batch_size})")
        self.model = CharLM(dataclasses.replace(cfg.model, vocab_size=len(self.vocab)))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.carried = None
        self.state = {"step": 0, "position": 0, "epoch": 0, "seconds": 0.0, "chars": 0, "best": float("inf"),
                      "lr": cfg.lr, "history": []}
        shape = self.model.cfg
        log.info("text: %d training characters in %d streams, %d held out; %d distinct characters; %s %dx%d, %d parameters",
                 len(train_text), cfg.batch_size, len(self.val_text), len(self.vocab), shape.cell, shape.num_layers,
                 shape.hidden_dim, sum(p.numel() for p in self.model.parameters()))

    def save_last(self) -> None:
        blob = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "state": self.state,
                "rng": torch.get_rng_state(), "vocab": self.vocab.itos,
                "carried": list(self.carried) if isinstance(self.carried, tuple) else
                ([self.carried] if self.carried is not None else [])}
        atomic_write(self.out / "last.pt", lambda tmp: torch.save(blob, tmp))

    def resume(self) -> None:
        path = self.out / "last.pt"
        if not path.is_file():
            return
        blob = torch.load(path, weights_only=True)
        if blob["vocab"] != self.vocab.itos:
            raise TextError(f"{path} was trained on another text (its characters differ)")
        self.model.load_state_dict(blob["model"])
        self.opt.load_state_dict(blob["opt"])
        self.state = blob["state"]
        torch.set_rng_state(blob["rng"])
        carried = blob["carried"]
        self.carried = tuple(carried) if len(carried) == 2 else (carried[0] if carried else None)
        log.info("resumed at step %d", self.state["step"])

    def step(self) -> float:
        cfg, st = self.cfg, self.state
        pos = st["position"]
        x, y = self.train[:, pos : pos + cfg.bptt], self.train[:, pos + 1 : pos + cfg.bptt + 1]
        if cfg.schedule == "cosine":
            st["lr"] = cosine_lr(cfg, self.progress())
        for group in self.opt.param_groups:
            group["lr"] = st["lr"]
        with autocast(torch.device("cpu"), cfg.amp):
            logits, state = self.model(x, self.carried if cfg.carry_state else None)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.carried = detach(state)  # carried forward (as autocast left it), no gradient flows back past this chunk
        st["step"] += 1
        st["chars"] += x.numel()
        st["position"] = pos + cfg.bptt
        if st["position"] + cfg.bptt + 1 > self.train.size(1):  # end of the streams: a new epoch from the start
            st.update(position=0, epoch=st["epoch"] + 1)
            self.carried = None
        return loss.item() / LN2

    def progress(self) -> float:
        """How much of the budget is spent, 0 to 1: the time budget, or the step limit where one is set and
        nearer (tests), both read from the resumable state."""
        st, cfg = self.state, self.cfg
        done = st["seconds"] / (cfg.minutes * 60) if cfg.minutes > 0 else 0.0
        if cfg.max_steps:
            done = max(done, st["step"] / cfg.max_steps)
        return min(done, 1.0)

    def evaluate(self) -> float:
        return bits_per_char(self.model, self.val[: self.cfg.eval_chars])

    def fit(self) -> None:
        cfg, st = self.cfg, self.state
        self.out.mkdir(parents=True, exist_ok=True)
        budget = cfg.minutes * 60
        bar = tqdm(desc="charlm", unit="step", initial=st["step"], disable=not cfg.progress)
        train_bpc, started = [], time.perf_counter()
        while st["seconds"] < budget and not (cfg.max_steps and st["step"] >= cfg.max_steps):
            t0 = time.perf_counter()
            train_bpc.append(self.step())
            st["seconds"] += time.perf_counter() - t0
            bar.update(1)
            if st["step"] % cfg.eval_every == 0:
                self._checkpoint(sum(train_bpc) / len(train_bpc))
                train_bpc = []
                bar.set_postfix(val_bpc=f"{st['history'][-1]['val_bpc']:.3f}", chars_s=f"{st['chars'] / st['seconds']:.0f}")
        bar.close()
        if train_bpc:
            self._checkpoint(sum(train_bpc) / len(train_bpc))
        log.info("trained %d steps (%d characters) in %.0f s of steps (%.0f s wall)", st["step"], st["chars"],
                 st["seconds"], time.perf_counter() - started)

    def _checkpoint(self, train_bpc: float) -> None:
        """Score a slice of the held-out text, halve the learning rate when it stops improving, keep the
        best model, and save the resume point. Decided by step count alone, so resume is exact."""
        st = self.state
        val = self.evaluate()
        if val < st["best"]:
            st["best"] = val
            save(self.out / "best.safetensors", self.model, self.vocab)
        elif self.cfg.schedule == "plateau":
            st["lr"] *= 0.5
        st["history"].append({"step": st["step"], "chars": st["chars"], "seconds": round(st["seconds"], 1),
                              "train_bpc": round(train_bpc, 4), "val_bpc": round(val, 4), "lr": st["lr"]})
        log.info("step %d: train bpc %.3f, held-out bpc (first %d chars) %.3f, %.0f chars/s", st["step"], train_bpc,
                 min(len(self.val), self.cfg.eval_chars), val, st["chars"] / max(st["seconds"], 1e-9))
        self.save_last()

    def finish(self, adaptive: bool = True) -> dict:
        """Score the best model on the whole held-out tail, as trained and (unless told not to) as an adaptive
        coder (see `charlm.score`), and export it with its metrics."""
        model, _, _ = load(self.out / "best.safetensors")
        st = self.state
        metrics = {"val_bpc": round(bits_per_char(model, self.val), 4), "held_out_chars": len(self.val_text),
                   "steps": st["step"], "train_chars": st["chars"], "train_seconds": round(st["seconds"], 1),
                   "chars_per_second": round(st["chars"] / max(st["seconds"], 1e-9)),
                   "config": dataclasses.asdict(self.cfg), "history": st["history"]}
        if adaptive:
            metrics["val_bpc_adaptive"] = round(adaptive_bits_per_char(model, self.val), 4)
        save(self.out / "model.safetensors", model, self.vocab, metrics)
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
