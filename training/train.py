"""Train a captioner: cached image vectors -> teacher-forced RNN decoder -> (optional) self-critical fine-tuning.

    python -m training.train --config configs/flickr8k.toml [--field value ...]

Read top to bottom: `data.prepare_data` (records, vocabulary, feature cache), `build_decoder`, then `Trainer.fit`
runs each phase (cross-entropy, then SCST in `scst.py`) one epoch function at a time, selecting on val
(`selection_score`: CIDEr-D, plus the fluency levers' terms) from the same decoding the model ships with,
and `Trainer.finish` exports the best model and scores it exactly as `training.evaluate` would. `--resume`
continues from the last epoch boundary with the same weights, optimiser, schedule, RNG and data order, so an
interrupted run ends where an uninterrupted one would.
Under `torchrun`, the decoder trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from captioner.checkpoint import atomic_write
from captioner.checkpoint import load as load_checkpoint
from captioner.checkpoint import save as save_checkpoint
from captioner.decoder import CaptionDecoder
from captioner.encoders import create_encoder
from captioner.decoding import WordBans
from captioner.model import Captioner
from captioner.options import DecodeOptions
from captioner.precision import autocast

from . import config as config_mod
from .config import TrainConfig
from .data import TrainingData, epoch_batches, prepare_data
from .datasets import DataError
from .evaluate import evaluate, human_fluency
from .export_onnx import export_for_training
from .fluency import disfluent_pct
from .grounding import caption_score_floor, fit_grounding
from .hallucination import chair
from .metrics import CiderD, quick_scores
from .phases import PhaseClock
from .report import write_model_card, write_plot
from .retrieval import Retrieval, train_retrieval, val_self_retrieval
from .runtime import Distributed, pick_device
from .scst import Reward, scst_loss

log = logging.getLogger("training")


# -- cross-entropy ----------------------------------------------------------------------------------
def lr_at(step: int, total: int, cfg: TrainConfig, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to base_lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return base_lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return base_lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def xe_loss(decoder, feats: torch.Tensor, tokens: torch.Tensor, cfg: TrainConfig, ss_prob: float) -> tuple[torch.Tensor, int]:
    """Cross-entropy over every non-pad step; with scheduled sampling, some inputs are the model's own words."""
    inputs = tokens
    if ss_prob > 0:
        with torch.no_grad():
            guess = decoder(feats, tokens).argmax(-1)  # the model's word at every step, given true history
        swap = torch.rand(guess.shape, device=tokens.device) < ss_prob
        swap[:, 0] = False  # <start> stays
        mixed = tokens[:, :-1].clone()
        mixed[:, 1:] = torch.where(swap[:, 1:], guess[:, :-1], mixed[:, 1:])
        inputs = torch.cat([mixed, tokens[:, -1:]], dim=1)
    loss = decoder(feats, inputs, label_smoothing=cfg.label_smoothing)
    return loss, int((tokens[:, 1:] != 0).sum())


def selection_score(scores: dict, disfluent_pct: float, cfg: TrainConfig, self_retrieval: float = 0.0,
                    chair_s_pct: float = 0.0) -> float:
    """What epochs are compared on (val): the reward SCST maximises, averaged over the val captions (x100;
    corpus BLEU-4 standing in for the mean sentence BLEU-4): CIDEr-D, plus `scst_bleu_weight` x BLEU-4, minus
    `scst_disfluency_penalty` x the % of disfluent captions, minus `scst_hallucination_penalty` x the % naming
    an object no reference names (CHAIR_s), plus `scst_discriminability_weight` x the mean log p(own photo |
    caption) (x100, `self_retrieval`). Plain CIDEr-D without those levers, whose gains CIDEr-D alone does
    not see (docs/experiments.md)."""
    return round(scores["CIDEr-D"] + cfg.scst_bleu_weight * scores["BLEU-4"]
                 - cfg.scst_disfluency_penalty * disfluent_pct - cfg.scst_hallucination_penalty * chair_s_pct
                 + cfg.scst_discriminability_weight * 100 * self_retrieval, 2)


def selection_rank(selection: float, disfluent_pct: float, cfg: TrainConfig) -> tuple[bool, float]:
    """The order epochs are kept in (higher is better): with `select_max_disfluent_pct`, an epoch within that
    limit outranks every epoch over it, whatever their scores, so the exported model keeps the fluency the
    project promises wherever an epoch did; then the selection score decides."""
    limit = cfg.select_max_disfluent_pct
    return (not limit or disfluent_pct <= limit, selection)


# -- model and decoding -------------------------------------------------------------------------
def build_decoder(cfg: TrainConfig, data: TrainingData, feature_dim: int) -> CaptionDecoder:
    """A fresh decoder (or one warm-started from `init_from`) that knows the training vectors' statistics."""
    dcfg = dataclasses.replace(cfg.decoder, vocab_size=len(data.vocab), feature_dim=feature_dim)
    torch.manual_seed(cfg.seed)  # here, not earlier: a cache miss runs a DataLoader, which draws from the RNG
    decoder = CaptionDecoder(dcfg)
    decoder.set_feature_stats(data.train_feats.cpu())
    if cfg.blind:  # its input is always 0, so this stays 0: the exported model ignores real photos too
        torch.nn.init.zeros_(decoder.image_proj.weight)
    if cfg.init_from:  # warm start, e.g. SCST on a finished cross-entropy model; ids must mean the same words
        ck = load_checkpoint(cfg.init_from)
        shape = lambda d: {k: v for k, v in d.items() if k != "dropout"}  # noqa: E731
        if ck.vocab != data.vocab.to_list() or shape(ck.decoder) != shape(dataclasses.asdict(dcfg)):
            raise ValueError(f"--init_from {cfg.init_from}: its vocabulary or decoder config differs from this run's")
        decoder.load_state_dict(ck.part("decoder"))
        log.info("decoder initialised from %s", cfg.init_from)
    return decoder


def decoder_optimiser(decoder: CaptionDecoder, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, fused: one kernel per step instead of a dozen passes over every weight, of which the embedding
    and the output layer grow with the vocabulary. A fused step leaves the weights' version counters as they
    were, so the decoder drops its cached word-gate table whenever it enters training mode
    (`CaptionDecoder.train`)."""
    return torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


def shipped_options(cfg: TrainConfig, no_end_after: list[str]) -> DecodeOptions:
    """The decoding a model is selected with during training and ships with in its checkpoint."""
    return DecodeOptions(beam_size=cfg.beam_size, max_length=cfg.max_caption_words, length_penalty=cfg.length_penalty,
                         no_repeat_ngram_size=cfg.no_repeat_ngram_size, no_end_after=tuple(no_end_after),
                         grounded=cfg.grounded).validate()


# -- the run --------------------------------------------------------------------------------------
PHASES = ("xe", "scst")


class Trainer:
    """One training run: `fit()` (resumable), then `finish()` on the main process."""

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.out = cfg, Path(cfg.out_dir)
        self.dist = Distributed(pick_device(cfg.device))
        self.device = self.dist.device
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.encoder = create_encoder(cfg.encoder, pretrained=True, weights=cfg.encoder_weights or None)
        self.clock = PhaseClock()  # each phase's time and peak memory: OUT_DIR/phases.json, make bench-scale
        self.data = prepare_data(cfg, self.encoder, self.dist, self.clock)
        self.val_cider = CiderD(self.data.val_refs)
        self.decoder = build_decoder(cfg, self.data, self.encoder.out_dim).to(self.device)
        self.model = self.decoder
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.decoder, device_ids=ids)
        self.options = shipped_options(cfg, self.data.no_end_after)
        v = self.data.vocab
        self.bans = WordBans.for_vocab(v, self.options)  # SCST samples under the rule the model decodes with
        d = self.data
        with self.clock("grounding"):
            grounding = fit_grounding(cfg, v, d.train, d.train_feats.cpu()).to(self.device)
        self.captioner = Captioner(self.encoder, self.decoder, v, d.preprocess, cfg.encoder,
                                   decoding=self.options.to_dict(), grounding=grounding)
        self.opt = self._optimiser(cfg.lr)
        self.reward: Reward | None = None  # SCST's reward, its references prepared on first use
        self.retrieval: Retrieval | None = None  # its discriminability term's model, trained on first use
        self.state = {"phase": "xe", "epoch": 0, "step": 0, "best": None, "best_epoch": None, "bad_epochs": 0,
                      "history": [], "train_seconds": 0.0}
        log.info("train: %d images, %d captions; val: %d images; vocab %d words; device %s%s",
                 len(self.data.train), len(self.data.tokens), len(self.data.val), len(v), self.device,
                 f" x{self.dist.world}" if self.dist.enabled else "")

    def _optimiser(self, lr: float) -> torch.optim.Optimizer:
        return decoder_optimiser(self.decoder, lr, self.cfg.weight_decay)

    # -- resume state (torch.load(weights_only=True): tensors, numbers, strings, lists, dicts only) --
    def save_last(self) -> None:
        blob = {"decoder": self.decoder.state_dict(), "opt": self.opt.state_dict(), "state": self.state,
                "rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "config": dataclasses.asdict(self.cfg)}
        atomic_write(self.out / "last.pt", lambda tmp: torch.save(blob, tmp))

    def resume(self) -> None:
        path = self.out / "last.pt"
        if not path.is_file():
            log.info("nothing to resume at %s; starting fresh", path)
            return
        blob = torch.load(path, map_location=self.device, weights_only=True)
        self.decoder.load_state_dict(blob["decoder"])
        self.opt.load_state_dict(blob["opt"])
        self.state = blob["state"]
        if isinstance(self.state["best"], float):  # saved before epochs were ranked by selection_rank
            self.state["best"] = [True, self.state["best"]] if self.state["best_epoch"] else None
        torch.set_rng_state(blob["rng"].cpu())
        if blob["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in blob["cuda_rng"]])
        log.info("resumed from %s at epoch %d (%s phase)", path, self.state["epoch"], self.state["phase"])

    # -- one epoch of each phase --
    def _my_part(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's part of each global batch (`batch_size` x world items), so a step of N ranks sees the
        same examples as one process with N times the batch. Every rank gets the same number of steps (a
        last batch too small to split is dropped), so collectives stay in step."""
        world = self.dist.world
        return [b[self.dist.rank :: world] for b in batches if len(b) >= world] if world > 1 else batches

    def run_epoch_xe(self, epoch: int) -> dict:
        """Teacher forcing: cross-entropy over every word of every training caption, clipped gradients."""
        cfg, dev, data = self.cfg, self.device, self.data
        batches = self._my_part(epoch_batches(data.lengths, cfg.batch_size * self.dist.world, cfg.seed, epoch))
        in_epoch, batches = len(batches), batches[: cfg.max_batches_per_epoch or None]
        total_steps = cfg.epochs * math.ceil(len(data.lengths) / cfg.batch_size / self.dist.world)
        ss_prob = cfg.scheduled_sampling * min(1.0, epoch / max(1, cfg.epochs - 1))
        self.model.train()
        loss_sum, tok_sum = 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not (cfg.progress and self.dist.main))
        t0 = time.perf_counter()
        for idx in bar:
            width = int(data.lengths[idx].max())
            tokens = data.tokens[idx, :width].to(dev)
            feats = data.train_feats[data.img_idx[idx].to(dev)]
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.state["step"], total_steps, cfg, cfg.lr)
            with autocast(dev, cfg.amp):
                loss, ntok = xe_loss(self.model, feats, tokens, cfg, ss_prob)
            self.opt.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients; weighting each rank's mean by its share of the global batch's
            # words makes that the gradient of the global batch's mean, as one process would compute it.
            (loss * self.dist.share(ntok)).backward()
            torch.nn.utils.clip_grad_norm_(self.decoder.parameters(), cfg.grad_clip)
            self.opt.step()
            self.state["step"] += 1
            loss_sum += loss.item() * ntok
            tok_sum += ntok
            bar.set_postfix(loss=f"{loss_sum / tok_sum:.3f}", cap_s=f"{tok_sum / max(1, width) / (time.perf_counter() - t0):.0f}")
        return {"train_loss": loss_sum / max(tok_sum, 1), "epoch_seconds": time.perf_counter() - t0,
                "batches": len(batches), "epoch_batches": in_epoch}

    def run_epoch_scst(self, epoch: int) -> dict:
        """Self-critical sequence training: sample, score with `Reward` (CIDEr-D and the levers), push up what
        beat its baseline."""
        cfg, dev, data = self.cfg, self.device, self.data
        self._ensure_reward()
        for group in self.opt.param_groups:
            group["lr"] = cfg.scst_lr
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(data.train), generator=g)
        self.model.train()
        t0, rew_sum, n = time.perf_counter(), 0.0, 0
        batches = self._my_part(list(order.split(cfg.scst_batch_images * self.dist.world)))
        in_epoch, batches = len(batches), batches[: cfg.max_batches_per_epoch or None]
        bar = tqdm(batches, desc=f"scst {epoch + 1}", unit="batch", disable=not (cfg.progress and self.dist.main))
        for idx in bar:
            human = data.one_caption_each(idx).to(dev) if cfg.scst_xe_weight else None
            with autocast(dev, cfg.amp):
                loss, reward = scst_loss(self.decoder, data.train_feats[idx.to(dev)], idx.tolist(), data.vocab,
                                         self.reward, cfg, self.bans, human)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.dist.enabled:  # SCST runs on the bare module (no DDP hooks), so average gradients by hand
                for p in self.decoder.parameters():
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= self.dist.world
            torch.nn.utils.clip_grad_norm_(self.decoder.parameters(), cfg.grad_clip)
            self.opt.step()
            rew_sum, n = rew_sum + reward, n + 1
            bar.set_postfix(reward=f"{rew_sum / n:.3f}")
        return {"scst_sample_reward": rew_sum / max(n, 1), "epoch_seconds": time.perf_counter() - t0,
                "batches": len(batches), "epoch_batches": in_epoch}

    def _ensure_reward(self) -> None:
        """Build SCST's reward (and its retrieval model) once per process, each timed as its own phase."""
        if self.reward is None:
            self._ensure_retrieval()
            with self.clock("scst reward"):
                self.reward = Reward.from_config(self.cfg, [r.captions for r in self.data.train], self.retrieval)

    def _ensure_retrieval(self) -> None:
        """Fit the discriminability term's retrieval model once per process (seconds; deterministic in the seed,
        so a resumed run refits the same one)."""
        if self.cfg.scst_discriminability_weight and self.retrieval is None:
            v, data = self.data.vocab, self.data
            with self.clock("retrieval"):
                self.retrieval = train_retrieval(data.train_feats, data.tokens, data.img_idx, len(v),
                                                 (v.pad_id, v.start_id, v.end_id), self.cfg.scst_judge_epochs,
                                                 seed=self.cfg.seed)

    def val_captions(self) -> list[str]:
        """The val split decoded with the options the model ships with (on cached vectors)."""
        return [caps[0].text for chunk in self.data.val_feats.split(250)
                for caps in self.captioner.decode(chunk, self.options)]

    def validate(self) -> dict:
        captions = self.val_captions()
        scores = quick_scores(self.val_cider, captions, self.data.val_refs)
        disfluent = disfluent_pct(captions)
        extra = {}
        if self.cfg.scst_discriminability_weight:
            self._ensure_retrieval()
            extra["self_retrieval"] = val_self_retrieval(self.retrieval, captions, self.data.vocab, self.data.val_feats,
                                                         self.cfg.scst_batch_images)
        if self.cfg.scst_hallucination_penalty:
            extra["chair_s_pct"] = chair(captions, self.data.val_refs)["chair_s_pct"]
        return {**scores, "disfluent_pct": disfluent, **extra,
                "selection": selection_score(scores, disfluent, self.cfg, extra.get("self_retrieval", 0.0),
                                             extra.get("chair_s_pct", 0.0))}

    # -- the phases --
    def fit(self) -> None:
        """Cross-entropy, then SCST from the best cross-entropy model; each phase stops early after
        `patience` epochs without a better val `selection_score`."""
        for phase in PHASES[PHASES.index(self.state["phase"]):]:
            n_epochs = self.cfg.epochs if phase == "xe" else self.cfg.scst_epochs
            if n_epochs <= 0:
                continue
            if phase == "scst" and self.state["phase"] == "xe":
                self._start_scst()
            while self.state["epoch"] < n_epochs and self.state["bad_epochs"] < self.cfg.patience:
                epoch = self.state["epoch"]
                if phase == "scst":
                    self._ensure_reward()  # before the epoch's clock starts: its setup is a phase of its own
                with self.clock(f"{phase} epoch"):
                    stats = self.run_epoch_xe(epoch) if phase == "xe" else self.run_epoch_scst(epoch)
                self._end_epoch(phase, epoch, stats)
        self.dist.barrier()

    def _start_scst(self) -> None:
        if self.state["best"] is not None:  # fine-tune the best cross-entropy model, not the last one
            if self.dist.main:  # only rank 0 saved it (nodes need not share a filesystem): it sends it to the others
                self._load_best_decoder()
            self.dist.broadcast_weights(self.decoder)
        self.opt = self._optimiser(self.cfg.scst_lr)
        self.state.update(phase="scst", epoch=0, bad_epochs=0)

    def _end_epoch(self, phase: str, epoch: int, stats: dict) -> None:
        """Validate, keep the best model, log, and save the resume point (main process)."""
        st = self.state
        st["train_seconds"] += stats["epoch_seconds"]
        record = {"phase": phase, "epoch": epoch + 1, **stats}
        if self.dist.main:
            with self.clock("validate"):
                record.update({f"val_{k}": v for k, v in self.validate().items()})
            rank = selection_rank(record["val_selection"], record["val_disfluent_pct"], self.cfg)
            better = st["best"] is None or rank > tuple(st["best"])
            if better:
                st.update(best=list(rank), best_epoch=f"{phase}:{epoch + 1}", bad_epochs=0)
                with self.clock("save"):
                    self._save_best({k[4:]: v for k, v in record.items() if k.startswith("val_")})
            else:
                st["bad_epochs"] += 1
            log.info("%s epoch %d: %s%s", phase, epoch + 1,
                     ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                               if k not in ("phase", "epoch")), "  (best)" if better else "")
            st["history"].append(record)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        self.dist.check_in_sync(self.decoder, f"{phase} epoch {epoch + 1}")
        if self.dist.enabled:  # everyone follows rank 0's selection: early stopping, and which model SCST starts from
            best = st["best"] or [False, 0.0]
            shared = torch.tensor([st["bad_epochs"], st["best"] is not None, *best], dtype=torch.float64, device=self.device)
            torch.distributed.broadcast(shared, 0)
            st["bad_epochs"] = int(shared[0])
            st["best"] = [bool(shared[2]), float(shared[3])] if shared[1] else None
        st["epoch"] = epoch + 1
        if self.dist.main:
            with self.clock("save"):
                self.save_last()

    def _save_best(self, metrics: dict) -> None:
        ck = self.captioner.checkpoint(metrics={"val": metrics}, info={"config": dataclasses.asdict(self.cfg)})
        save_checkpoint(self.out / "best.safetensors", ck)

    def _load_best_decoder(self) -> None:
        self.decoder.load_state_dict(load_checkpoint(self.out / "best.safetensors").part("decoder"))

    # -- select and export --
    def finish(self) -> dict:
        """Export the best model, then score the exported file on the val split exactly as
        `training.evaluate` does (images read and encoded again): its default decoding, and each of
        `final_beam_sizes`. Writes the card, the plot and the default decoding's captions."""
        cfg = self.cfg
        self._load_best_decoder()
        with self.clock("caption floor"):
            self.captioner.grounding.min_word_score = caption_score_floor(self.captioner, self.data.val_feats,
                                                                          self.options, cfg.low_confidence_caption_share)
        info = {"config": dataclasses.asdict(cfg), "train_images": len(self.data.train),
                "train_captions": len(self.data.tokens), "train_seconds": round(self.state["train_seconds"], 1),
                "feature_seconds": round(self.data.feature_seconds, 1), "torch": torch.__version__}
        path = self.out / "model.safetensors"
        save_checkpoint(path, self.captioner.checkpoint(metrics={}, info=info), dtype=cfg.export_torch_dtype)
        with self.clock("onnx export"):  # from the file, so the ONNX weights are the ones it holds (export_dtype)
            export_for_training(Captioner.from_checkpoint(path, backend="torch"), path, self.data.train)
        others = [k for k in cfg.final_beam_sizes if k != self.options.beam_size]  # the default is scored anyway
        options = [self.options] + [dataclasses.replace(self.options, beam_size=k) for k in others]
        with self.clock("final evaluation"):
            (default, captions), *rest = evaluate(Captioner.from_checkpoint(path), self.data.val, options,
                                                  cfg.num_workers)
        log.info("val, default decoding (beam %d): %s", self.options.beam_size, default)
        scored = {self.options.beam_size: default, **{k: scores for k, (scores, _) in zip(others, rest)}}
        by_beam = {f"beam{k}": scored[k] for k in cfg.final_beam_sizes}
        metrics = {"split": cfg.val_split, "images": len(self.data.val), "best_epoch": self.state["best_epoch"],
                   "decoding": self.options.public_dict(), "default": default, "by_beam_size": by_beam,
                   "human_fluency": human_fluency(self.data.val)}
        save_checkpoint(path, dataclasses.replace(load_checkpoint(path), metrics=metrics), dtype=cfg.export_torch_dtype)
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (self.out / "val_captions.json").write_text(json.dumps(
            [{"image_id": r.image_id, "caption": c} for r, c in zip(self.data.val, captions)], indent=1))
        write_plot(self.state["history"], self.out / "training.png")
        write_model_card(self.out / "model.md", cfg, metrics, info, self.state["history"])
        self.clock.write(self.out / "phases.json")
        log.info("where the time went (also in %s):\n%s", self.out / "phases.json", self.clock.table())
        log.info("wrote %s", path)
        return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config_mod.add_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = config_mod.from_args(args)
    except (ValueError, OSError) as exc:  # unknown keys, bad choices, unreadable TOML: one line, no traceback
        parser.error(str(exc))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        trainer = Trainer(cfg)
    except (DataError, ValueError, OSError) as exc:  # missing data or weights, an incompatible --init_from
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.resume:
        trainer.resume()
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    trainer.fit()
    if trainer.dist.main:
        trainer.finish()
    if trainer.dist.enabled:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
