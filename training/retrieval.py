"""Self-retrieval: how well a caption picks out its own photo among others, as an SCST reward term.

CIDEr-D rewards the words a photo's references share with many similar photos' references, so SCST drifts
to templates that fit a whole class of photos ("a dog runs through the grass"). A discriminability term
(Luo et al. 2018, "Discriminability objective for training descriptive captions") adds, per sampled
caption, the log-probability that a retrieval model, given the caption, picks the caption's photo out of
the other photos of the batch. Here the retrieval model is small and trained in seconds on the training
captions at the start of SCST: a bag of words (mean of word vectors) and a linear map of the standardised
image vector into one space, compared by cosine similarity with a learned scale (a contrastive loss over
the batch, in both directions).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from captioner.vocab import Vocabulary

from .data import pad_rows


class Retrieval(nn.Module):
    """Captions (mean of word vectors) and photos (a linear map of the standardised vector) in one space:
    about the least that can tell photos apart by their captions' words, cheap enough to score every SCST
    sample."""

    def __init__(self, vocab_size: int, feature_dim: int, dim: int = 256, ignore_ids: tuple[int, ...] = (0,)):
        super().__init__()
        # sparse: a step's gradient holds only the rows of the words in its batch, not all V (`train_retrieval`)
        self.words = nn.EmbeddingBag(vocab_size, dim, mode="sum", sparse=True)
        self.image = nn.Linear(feature_dim, dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        keep = torch.ones(vocab_size)
        keep[list(ignore_ids)] = 0.0  # <pad>, <start>, <end>: not words of the caption
        self.register_buffer("keep", keep)

    def embed_captions(self, ids: torch.Tensor) -> torch.Tensor:
        """Unit vectors [N, dim] of captions given as padded word ids [N, T]: the mean of their words'."""
        weights = self.keep[ids]
        bag = self.words(ids, per_sample_weights=weights / weights.sum(1, keepdim=True).clamp_min(1.0))
        return F.normalize(bag, dim=-1)

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image((features - self.feature_mean) / self.feature_std), dim=-1)

    def logits(self, ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Similarity [captions, images] of every caption with every image, scaled."""
        return self.log_scale.exp() * self.embed_captions(ids) @ self.embed_images(features).T


def train_retrieval(features: torch.Tensor, tokens: torch.Tensor, img_idx: torch.Tensor, vocab_size: int,
                    ignore_ids: tuple[int, ...], epochs: int, batch_images: int = 256, lr: float = 3e-3,
                    word_lr: float = 4e-3, seed: int = 0) -> Retrieval:
    """Fit `Retrieval` on the training captions (`tokens` [captions, T], each of photo `img_idx`) and photos'
    vectors `features` [photos, D]. Each batch holds distinct photos with one of their captions, so the
    other photos of a batch are true negatives. Leaves the global RNG untouched.

    The word table is updated lazily (`SparseAdam`: only the rows of a batch's words), so a step costs the
    same whatever the vocabulary; a dense Adam step over all V rows made the fit grow faster than the data
    (docs/scale.md). Rows updated only when their word appears move less than under dense Adam, which
    `word_lr` makes up for: Flickr8k's val self-retrieval -1.741 at 4e-3 against dense Adam's -1.786 at 3e-3."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Retrieval(vocab_size, features.size(1), ignore_ids=ignore_ids).to(features.device)
    model.feature_mean.copy_(features.mean(0))
    model.feature_std.copy_(features.std(0).clamp_min(1e-3))
    order = torch.argsort(img_idx, stable=True)
    counts = torch.bincount(img_idx, minlength=len(features))
    first = torch.cumsum(counts, 0) - counts
    rest = [p for name, p in model.named_parameters() if name != "words.weight"]
    opts = [torch.optim.SparseAdam([model.words.weight], lr=word_lr), torch.optim.Adam(rest, lr=lr, fused=True)]
    for _ in range(epochs):
        for photos in torch.randperm(len(features), generator=gen).split(batch_images):
            rows = order[first[photos] + (torch.rand(len(photos), generator=gen) * counts[photos]).long()]
            logits = model.logits(tokens[rows].to(features.device), features[photos])
            target = torch.arange(len(photos), device=features.device)
            loss = F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in opts:
                opt.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def self_retrieval(model: Retrieval, ids: torch.Tensor, features: torch.Tensor, k: int = 1) -> torch.Tensor:
    """log p(own photo | caption) [N, k] among the N photos `features` [N, D], for k captions per photo
    given as ids [N*k, T] (photo i's captions at rows i*k .. i*k+k-1). Chance is log(1/N)."""
    logp = model.logits(ids, features).log_softmax(dim=-1)
    own = torch.arange(features.size(0), device=ids.device).repeat_interleave(k)
    return logp.gather(1, own[:, None]).view(-1, k)


def val_self_retrieval(model: Retrieval, captions: list[str], vocab: Vocabulary, features: torch.Tensor,
                       group: int) -> float:
    """Mean log p(own photo | caption) of one caption per photo, among consecutive groups of `group` photos
    (the SCST batch size, so the number is on the training reward's scale; the last group may be smaller,
    and a last lone photo, which has nothing to be told apart from, is left out)."""
    padded = pad_rows([vocab.encode(c)[1:] for c in captions])  # words and <end>, without <start>
    parts = [self_retrieval(model, padded[i : i + group].to(features.device), features[i : i + group])
             for i in range(0, len(captions), group) if len(captions) - i > 1]
    return round(float(torch.cat(parts).mean()), 4) if parts else 0.0
