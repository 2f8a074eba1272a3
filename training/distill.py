"""Teach a trained decoder the int8 encoder's vectors, keeping its captions:

    python -m training.distill --model PATH --config configs/flickr8k.toml [--distill-epochs 2] [--out PATH]

The onnx-int8 encoder's vector of a photo is close to torch's (cosine ~0.998) but not equal, and a decoder
trained on fp32 vectors loses about 1 dev CIDEr on it (docs/speed.md). Here the trained decoder is its own
teacher: a copy of it learns to give, from a photo's int8 vector, the next-word distribution the original
gives from its fp32 vector, and to keep giving it from the fp32 vector too (the KL divergence of both from
the teacher, summed). It learns along the human training captions and along its own captions of the
training photos, the paths decoding walks. The teacher's distributions are the only target: no new captions
are learned. For whoever serves a model on onnx-int8 (`make distill`); measured in docs/speed.md. The int8
vectors go into the feature cache under the int8 file's own digest.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from captioner import Captioner
from captioner.backends import ImageEncoder, OnnxEncoder, encoder_digest, onnx_path
from captioner.checkpoint import save as save_checkpoint
from captioner.decoder import CaptionDecoder

from . import config as config_mod
from .data import TrainingData, encoder_identity, pad_rows, prepare_data
from .features import build_or_load, file_digest
from .runtime import SingleProcess

log = logging.getLogger("training.distill")


class _EncoderModule(nn.Module):
    """An ONNX encoder dressed as the torch module the feature cache extracts with."""

    def __init__(self, encoder: ImageEncoder, out_dim: int):
        super().__init__()
        self.encoder, self.out_dim = encoder, out_dim

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.encoder(batch)


def int8_training_vectors(model: Captioner, checkpoint: Path, cfg: config_mod.TrainConfig,
                          data: TrainingData) -> torch.Tensor:
    """The onnx-int8 vector (`checkpoint`'s file, `model`'s encoder) of every training photo [N, D], from the
    feature cache (extracted into it on first use, keyed by the int8 file's bytes)."""
    path = onnx_path(checkpoint, "onnx-int8")  # the int8 encoder itself, whichever part `onnx-int8` runs here
    int8 = OnnxEncoder(path, encoder_digest(model.encoder, model.preprocess_cfg))
    identity = f"{encoder_identity(cfg)}+onnx-int8:{file_digest(path)[:16]}"
    photos = [r.image_path for r in data.train]
    encoder = _EncoderModule(int8, model.encoder.out_dim)
    cache = build_or_load(cfg.cache_dir, encoder, identity, data.preprocess, photos, Path(cfg.data_dir),
                          num_workers=cfg.num_workers, progress=cfg.progress)
    return cache.tensor(photos)


def own_captions(model: Captioner, features: torch.Tensor, max_words: int) -> torch.Tensor:
    """The model's captions of these vectors, decoded as it ships, as padded ids [N, max_words + 2]."""
    texts = [caps[0].text for chunk in features.split(250) for caps in model.decode(chunk)]
    return pad_rows([model.vocab.encode(t, max_words) for t in texts], max_words + 2)


def distill_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the next-word distributions, averaged over the real (non-pad) steps."""
    teacher = teacher_logits[real].float().log_softmax(-1)
    student = student_logits[real].float().log_softmax(-1)
    return (teacher.exp() * (teacher - student)).sum(-1).mean()


@dataclasses.dataclass
class DistillSet:
    """What the student learns from: each training caption's image, its ids, and both vectors of every image."""

    images: torch.Tensor  # [M]
    tokens: torch.Tensor  # [M, T] padded ids from <start>
    fp32: torch.Tensor  # [N, D]: what the teacher sees
    int8: torch.Tensor  # [N, D]


def distill(decoder: CaptionDecoder, data: DistillSet, epochs: int, lr: float, batch_size: int, grad_clip: float,
            seed: int) -> list[float]:
    """Fine-tune `decoder` in place towards its own (frozen) distributions on fp32 vectors, from int8 and
    fp32 vectors alike: AdamW, cosine from `lr` to 0, gradients clipped to `grad_clip` (global norm), no
    dropout (int8's error is the perturbation trained for). Returns each epoch's mean KL on int8 vectors."""
    teacher = copy.deepcopy(decoder).eval().requires_grad_(False)
    decoder.eval()
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    n, steps, step, history = len(data.tokens), epochs * math.ceil(len(data.tokens) / batch_size), 0, []
    for _ in range(epochs):
        total, batches = 0.0, 0
        for rows in torch.randperm(n, generator=gen).split(batch_size):
            tokens = data.tokens[rows]
            tokens = tokens[:, : int((tokens != 0).sum(1).max())]
            images, real = data.images[rows], tokens[:, 1:] != 0
            with torch.no_grad():
                target = teacher(data.fp32[images], tokens)
            int8_loss = distill_loss(target, decoder(data.int8[images], tokens), real)
            loss = int8_loss + distill_loss(target, decoder(data.fp32[images], tokens), real)
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), grad_clip)
            opt.step()
            step, total, batches = step + 1, total + int8_loss.item(), batches + 1
        history.append(total / batches)
        log.info("distillation epoch %d/%d: KL on int8 vectors %.5f", len(history), epochs, history[-1])
    return history


def distill_checkpoint(model: Captioner, checkpoint: Path, cfg: config_mod.TrainConfig, data: TrainingData,
                       epochs: int, lr: float, out: Path | None = None) -> bool:
    """Distil the decoder of `model`, loaded from `checkpoint` (written to `out`, by default over it, with its
    ONNX files still valid: the encoder is unchanged). False, saying why, when there is no int8 encoder file
    to learn from."""
    if not onnx_path(checkpoint, "onnx-int8").is_file():
        log.warning("no onnx-int8 file beside %s to learn from: make it with `make onnx`", checkpoint)
        return False
    start = time.perf_counter()
    fp32, int8 = data.train_feats.cpu(), int8_training_vectors(model, checkpoint, cfg, data)
    own = own_captions(model, fp32, cfg.max_caption_words)
    tokens = torch.cat([data.tokens, own])
    images = torch.cat([data.img_idx, torch.arange(len(own))])
    history = distill(model.decoder, DistillSet(images, tokens, fp32, int8), epochs, lr, cfg.batch_size,
                      cfg.grad_clip, cfg.seed)
    record = {"epochs": epochs, "lr": lr, "kl_int8_by_epoch": [round(h, 6) for h in history],
              "seconds": round(time.perf_counter() - start, 1)}
    target = Path(out or checkpoint)
    save_checkpoint(target, model.checkpoint(info={**model.info, "int8_distillation": record}),
                    dtype=cfg.export_torch_dtype)
    for backend in ("onnx", "onnx-int8"):  # the same encoder: its files serve the new checkpoint too
        src, dst = onnx_path(checkpoint, backend), onnx_path(target, backend)
        if src.is_file() and src != dst:
            dst.write_bytes(src.read_bytes())
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.distill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained checkpoint with its ONNX files beside it")
    parser.add_argument("--out", default="", help="where to write the result (default: over --model)")
    parser.add_argument("--distill-epochs", type=int, default=2, help="passes over the training captions (docs/speed.md)")
    parser.add_argument("--distill-lr", type=float, default=1e-4, help="AdamW's rate, cosine to 0 (3e-4 moved the "
                        "fp32 distributions five times as far)")
    config_mod.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    cfg = config_mod.from_args(args)
    model = Captioner.from_checkpoint(args.model, backend="torch")
    data = prepare_data(cfg, model.encoder, SingleProcess())
    if data.vocab.to_list() != model.vocab.to_list():
        print(f"error: {args.model} was not trained on this config's data (its vocabulary differs)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    ok = distill_checkpoint(model, Path(args.model), cfg, data, args.distill_epochs, args.distill_lr, out)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
