"""Training benchmark, measured side by side in one run on the same images:

* one epoch on cached image vectors (this project) against one epoch that runs the CNN on every batch
  (the pipeline of the popular tutorials, frozen CNN included);
* feature extraction throughput (JPEG decoding, in DataLoader workers where cores are free, + encoder) against the encoder's
  own batch-forward rate on tensors already in memory;
* a cross-entropy step of the shipped config (configs/flickr8k.toml: LSTM 512, embedding 512, the image at
  every step, label smoothing, clipping, AdamW) against the tutorial recipe written out below as the
  yardstick (embedding 256, LSTM 512, the image as first input, packed sequences, Adam), both at batch 128
  on the same captions, in captions per second;
* an SCST step of the shipped model and config (32 photos x 5 samples, the same reward) against the same
  step done as the code did it when issue #12 was filed, written out below: Gumbel-max sampling that draws
  noise for every vocabulary word and keeps finished captions in the batch, and a scoring pass that projects
  every padded position onto the vocabulary.

    make bench-train [ARGS="--images 256 --data-dir ../shared/data/flickr8k"]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader, Dataset

from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.decoding import NEG_INF, WordBans
from captioner.encoders import create_encoder, encoder_spec
from captioner.model import encode_images, load
from captioner.options import DecodeOptions
from captioner.preprocess import preprocess
from captioner.vocab import Vocabulary
from training.datasets import read_flickr8k
from training.config import load_config
from training.features import build_or_load, decode_workers
from training.train import decoder_optimiser, xe_loss
from training.data import encode_captions, epoch_batches, pad_rows
from training.retrieval import train_retrieval
from training.scst import Reward, scst_advantages, scst_loss

from .common import ROOT


class Pairs(Dataset):
    """(image tensor, caption row) pairs, decoded from JPEG every time: the tutorial pipeline."""

    def __init__(self, paths, img_idx, tokens, cfg):
        self.paths, self.img_idx, self.tokens, self.cfg = paths, img_idx, tokens, cfg

    def __len__(self):
        return len(self.img_idx)

    def __getitem__(self, i):
        return preprocess(self.paths[int(self.img_idx[i])], self.cfg), self.tokens[i]


class TutorialDecoder(torch.nn.Module):
    """The classic tutorial captioner: the projected image is the LSTM's first input, then the caption's
    words; packed sequences, so padding costs nothing."""

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 256, hidden_dim: int = 512):
        super().__init__()
        self.image = torch.nn.Linear(feature_dim, embed_dim)
        self.embed = torch.nn.Embedding(vocab_size, embed_dim)
        self.lstm = torch.nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.out = torch.nn.Linear(hidden_dim, vocab_size)

    def loss(self, feats: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Position 0 (the image) predicts <start>, position t the caption's word t, as in the tutorial."""
        inputs = torch.cat([self.image(feats)[:, None], self.embed(tokens[:, :-1])], dim=1)
        hidden, _ = self.lstm(pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False))
        targets = pack_padded_sequence(tokens, lengths, batch_first=True, enforce_sorted=False).data
        return F.cross_entropy(self.out(hidden.data), targets)


@torch.no_grad()
def previous_scst_samples(decoder, feats: torch.Tensor, k: int, max_words: int, start_id: int, bans: WordBans,
                          gen: torch.Generator) -> torch.Tensor:
    """Issue #12's time: per step, a uniform number and two logarithms for every word of every row (Gumbel-max),
    and every row stepped until all have ended."""
    decoder.eval()
    n, end = feats.size(0) * k, bans.end_id
    state = decoder.start(feats.repeat_interleave(k, 0))
    tokens, out = torch.full((n,), start_id), torch.full((n, max_words), end)
    done = torch.zeros(n, dtype=torch.bool)
    for t in range(max_words):
        logits, state = decoder.step(tokens, state)
        lp = F.log_softmax(logits.float(), -1).masked_fill_(bans.mask(tokens, t, logits.size(1)), NEG_INF)
        u = torch.rand(lp.shape, generator=gen)
        choice = torch.where(done, end, (lp - torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))).argmax(-1))
        out[:, t], done, tokens = choice, done | (choice == end), choice
        if bool(done.all()):
            break
    decoder.train()
    rows = [row[: row.index(end) + 1] if end in row else row for row in out.tolist()]
    return pad_rows(rows)


def previous_sequence_log_probs(decoder, feats, seqs, start_id: int, bans: WordBans) -> torch.Tensor:
    """Issue #12's time: the output layer and softmax at every position, padding included."""
    inputs = torch.cat([seqs.new_full((len(seqs), 1), start_id), seqs], dim=1)
    logits = decoder(feats, inputs).float()
    banned = bans.mask(inputs[:, :-1], torch.arange(seqs.size(1)), logits.size(-1))
    picked = logits.masked_fill(banned, NEG_INF).log_softmax(-1).gather(2, seqs.unsqueeze(2)).squeeze(2)
    return torch.where(seqs == 0, torch.zeros_like(picked), picked)


def captions_per_second(run_step, batches: list[torch.Tensor], rounds: int = 2) -> float:
    run_step(batches[0])  # warm-up
    t0, n = time.perf_counter(), 0
    for _ in range(rounds):
        for idx in batches:
            run_step(idx)
            n += len(idx)
    return n / (time.perf_counter() - t0)


def step(decoder, opt, feats, tokens):
    logits = decoder(feats, tokens)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1), ignore_index=0)
    opt.zero_grad()
    loss.backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser()
    default_data = ROOT.parent / "shared" / "data" / "flickr8k"
    p.add_argument("--data-dir", default=str(default_data if default_data.is_dir() else ROOT / "data" / "demo"))
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    recs = read_flickr8k(args.data_dir, ["train"])[: args.images]
    paths = [r.image_path for r in recs]
    shipped = load_config(ROOT / "configs" / "flickr8k.toml")
    cfg = encoder_spec(shipped.encoder).preprocess(shipped.image_size or None, shipped.resize or None)
    encoder = create_encoder(shipped.encoder, pretrained=True).eval().to(memory_format=torch.channels_last)
    vocab = Vocabulary.build((c for r in recs for c in r.captions), 1)
    img_idx, tokens, lengths = encode_captions(recs, vocab, 20)
    print(f"data: {args.data_dir}, {len(recs)} images, {len(tokens)} captions; encoder {shipped.encoder} at {cfg.size} px; "
          f"torch threads {torch.get_num_threads()}")

    # 1. feature extraction vs the encoder's own batch-forward rate, alternating, best of two each
    batch = torch.stack([preprocess(p_, cfg) for p_ in paths[:32]])
    extract_rates, forward_rates = [], []
    for _ in range(2):
        with torch.inference_mode():
            encode_images(encoder, batch, False)
            t0 = time.perf_counter()
            for _ in range(3):
                encode_images(encoder, batch, False)
            forward_rates.append(3 * len(batch) / (time.perf_counter() - t0))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            cache = build_or_load(tmp, encoder, "bench", cfg, paths, Path(args.data_dir), batch_size=32,
                                  num_workers=args.workers, progress=False)
            extract_rates.append(len(paths) / (time.perf_counter() - t0))
            feats = cache.tensor(paths)
    extract_rate, forward_rate = max(extract_rates), max(forward_rates)

    # 2. one epoch on cached vectors vs one epoch running the CNN on every batch
    def fresh():
        torch.manual_seed(0)
        dec = CaptionDecoder(DecoderConfig(vocab_size=len(vocab), feature_dim=1280))
        dec.set_feature_stats(feats)
        return dec, torch.optim.AdamW(dec.parameters(), lr=5e-4)

    dec, opt = fresh()
    t0 = time.perf_counter()
    for idx in epoch_batches(lengths, args.batch_size, 0, 0):
        width = int(lengths[idx].max())
        step(dec, opt, feats[img_idx[idx]], tokens[idx, :width])
    cached_s = time.perf_counter() - t0

    dec, opt = fresh()
    loader = DataLoader(Pairs(paths, img_idx, tokens, cfg), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.workers, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for images, toks in loader:
        with torch.no_grad():
            v = encode_images(encoder, images, False)
        step(dec, opt, v, toks)
    cnn_s = time.perf_counter() - t0

    # 3. a cross-entropy step: the shipped config against the tutorial recipe, same batches of 128 captions
    torch.manual_seed(0)
    ours = CaptionDecoder(dataclasses.replace(shipped.decoder, vocab_size=len(vocab), feature_dim=feats.size(1))).train()
    ours.set_feature_stats(feats)
    ours_opt = decoder_optimiser(ours, shipped.lr, shipped.weight_decay)
    tutorial = TutorialDecoder(len(vocab), feats.size(1)).train()
    tutorial_opt = torch.optim.Adam(tutorial.parameters(), lr=1e-3)

    def ours_step(idx):
        width = int(lengths[idx].max())
        loss, _ = xe_loss(ours, feats[img_idx[idx]], tokens[idx, :width], shipped, 0.0)
        ours_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), shipped.grad_clip)
        ours_opt.step()

    def tutorial_step(idx):
        loss = tutorial.loss(feats[img_idx[idx]], tokens[idx], lengths[idx])
        tutorial_opt.zero_grad(set_to_none=True)
        loss.backward()
        tutorial_opt.step()

    xe_batches = epoch_batches(lengths, 128, 0, 0)
    rates = {"ours": [], "tutorial": []}
    for _ in range(2):  # alternate, so both see the same machine
        rates["ours"].append(captions_per_second(ours_step, xe_batches, rounds=1))
        rates["tutorial"].append(captions_per_second(tutorial_step, xe_batches, rounds=1))
    ours_rate, tutorial_rate = max(rates["ours"]), max(rates["tutorial"])

    # 4. an SCST step of the shipped model: this project's against the code of issue #12's time
    shipped_model = load()
    svocab, cfg_scst = shipped_model.vocab, shipped
    sbans = WordBans.for_vocab(svocab, DecodeOptions.from_dict(shipped_model.decoding))
    s_img, s_tok, _ = encode_captions(recs, svocab, shipped.max_caption_words)
    human = s_tok[torch.searchsorted(s_img, torch.arange(len(recs)))]  # each photo's first caption
    retrieval = train_retrieval(feats, s_tok, s_img, len(svocab), (svocab.pad_id, svocab.start_id, svocab.end_id),
                                shipped.scst_judge_epochs)
    reward = Reward.from_config(shipped, [r.captions for r in recs], retrieval)
    k, max_words = shipped.scst_samples, shipped.scst_max_words or shipped.max_caption_words
    decoders = {name: copy.deepcopy(shipped_model.decoder).train() for name in ("ours", "previous")}
    optims = {"ours": decoder_optimiser(decoders["ours"], shipped.scst_lr, shipped.weight_decay),
              "previous": torch.optim.AdamW(decoders["previous"].parameters(), lr=shipped.scst_lr)}
    gen = torch.Generator().manual_seed(0)

    def scst_step(name: str, images: torch.Tensor) -> None:
        dec, f, h = decoders[name], feats[images], human[images, : int((human[images] != 0).sum(1).max())]
        if name == "ours":
            loss, _ = scst_loss(dec, f, images.tolist(), svocab, reward, cfg_scst, sbans, h)
        else:
            seqs = previous_scst_samples(dec, f, k, max_words, svocab.start_id, sbans, gen)
            scores = reward(seqs, images.tolist(), f, svocab, k)
            adv = scst_advantages(scores, shipped.scst_baseline).reshape(-1)
            lp = previous_sequence_log_probs(dec, f.repeat_interleave(k, 0), seqs, svocab.start_id, sbans)
            logits = dec(f, h)
            loss = (-(adv[:, None] * lp).sum() / (seqs != 0).sum() + shipped.scst_xe_weight
                    * F.cross_entropy(logits.reshape(-1, logits.size(-1)), h[:, 1:].reshape(-1), ignore_index=0))
        optims[name].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec.parameters(), shipped.grad_clip)
        optims[name].step()

    scst_batches = list(torch.randperm(len(recs), generator=gen).split(shipped.scst_batch_images))
    scst_seconds = {"ours": [], "previous": []}
    for _ in range(2):  # alternate, so both see the same machine
        for name in scst_seconds:
            scst_step(name, scst_batches[0])  # warm-up
            t0 = time.perf_counter()
            for images in scst_batches:
                scst_step(name, images)
            scst_seconds[name].append((time.perf_counter() - t0) / len(scst_batches))
    ours_scst, previous_scst = min(scst_seconds["ours"]), min(scst_seconds["previous"])

    workers = decode_workers(args.workers, "cpu")
    decoding = f"{workers} DataLoader workers" if workers else "the main process (no core to spare)"
    print(f"\nfeature extraction: {extract_rate:.1f} img/s (JPEG decode in {decoding} + encoder); "
          f"encoder batch-32 forward alone: {forward_rate:.1f} img/s -> extraction runs at "
          f"{extract_rate / forward_rate:.2f}x the encoder's own rate")
    print(f"one epoch over {len(tokens)} captions: cached vectors {cached_s:.1f} s, CNN on every batch {cnn_s:.1f} s "
          f"-> cached is {cnn_s / cached_s:.1f}x faster")
    print(f"the cache pays for itself in the first epoch: extraction {len(paths) / extract_rate:.1f} s + cached epoch "
          f"{cached_s:.1f} s vs {cnn_s:.1f} s")
    print(f"cross-entropy step, batch 128, fp32 ({shipped.cell.upper()} {shipped.hidden_dim}): "
          f"shipped config {ours_rate:.0f} captions/s, tutorial recipe {tutorial_rate:.0f} captions/s -> "
          f"{ours_rate / tutorial_rate:.2f}x the tutorial's rate")
    print(f"SCST step, {shipped.scst_batch_images} photos x {k} samples, fp32 (shipped model and config): "
          f"{ours_scst:.2f} s, as at issue #12's time {previous_scst:.2f} s -> {previous_scst / ours_scst:.2f}x faster")


if __name__ == "__main__":
    main()
