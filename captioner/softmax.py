"""The decoder's adaptive softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs").

Why: a full output layer costs hidden x V multiply-adds per word, forward and backward, and its optimiser
update is V rows wide; the vocabulary grows with the data (a `min_count` 5 vocabulary is 2.7k words on
Flickr8k, about 10k on COCO), so a training batch costs more as the data grows and an epoch grows faster
than the data (docs/scale.md). Here the `head` most frequent words (ids are ordered by frequency after the
special tokens) and one entry per tail cluster share a full-width softmax; each cluster's words have their
own softmax over a narrower projection of the state (hidden / 4, / 16, ...), which training evaluates only
for the words whose target falls in that cluster. p(tail word) = p(its cluster) x p(word | cluster).

Decoding reads the whole distribution (`forward`: log-probabilities [N, V]); training reads only each
target's log-probability (`target_log_probs`, `loss`), whose cost does not grow with the tail.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLUSTER_GROWTH = 4  # each tail cluster holds 4x the words of the one before, in a 4x narrower projection


def cluster_bounds(head: int, vocab_size: int) -> list[int]:
    """Where each tail cluster starts and the last one ends: [head, 4 head, 16 head, ..., V]."""
    bounds = [head]
    while bounds[-1] * CLUSTER_GROWTH < vocab_size:
        bounds.append(bounds[-1] * CLUSTER_GROWTH)
    return bounds + [vocab_size]


class AdaptiveSoftmax(nn.Module):
    """The output layer over `vocab_size` words with the first `head` of them in a full-width head."""

    def __init__(self, hidden_dim: int, vocab_size: int, head: int):
        super().__init__()
        if not 0 < head < vocab_size:
            raise ValueError(f"an adaptive softmax's head must hold 1 .. {vocab_size - 1} words, got {head}")
        self.shortlist = head
        self.bounds = cluster_bounds(head, vocab_size)
        self.head = nn.Linear(hidden_dim, head + len(self.bounds) - 1)
        self.tail = nn.ModuleList()
        for i, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
            width = max(1, hidden_dim // CLUSTER_GROWTH ** (i + 1))
            self.tail.append(nn.Sequential(nn.Linear(hidden_dim, width, bias=False), nn.Linear(width, hi - lo)))

    def head_log_probs(self, hidden: torch.Tensor, banned: torch.Tensor | None = None) -> torch.Tensor:
        """log-softmax of the head [..., head + clusters]; `banned` [N, head] (words decoding may not choose)
        are removed and the rest renormalised, which renormalises the whole distribution without them."""
        logits = self.head(hidden).float()
        return (logits if banned is None else self._ban(logits, banned)).log_softmax(-1)

    def _ban(self, head: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
        """Head scores [N, head + clusters] with the `banned` words [N, head] at -inf."""
        return head.masked_fill(F.pad(banned, (0, head.size(1) - self.shortlist)), float("-inf"))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """log p(word) for every word [..., V] from states [..., H]: what decoding reads (as a full layer's
        logits)."""
        head = self.head_log_probs(hidden)
        parts = [head[..., : self.shortlist]]
        for i, cluster in enumerate(self.tail):
            parts.append(cluster(hidden).float().log_softmax(-1) + head[..., self.shortlist + i, None])
        return torch.cat(parts, dim=-1)

    def target_log_probs(self, hidden: torch.Tensor, target: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """log p(target) [N] for states [N, H], given their `head_log_probs`; a cluster's projection and
        softmax run only for the rows whose target is in it. A cluster with none still runs, on no rows, so
        its weights always get a (zero) gradient: distributed training expects every weight's gradient on
        every process, and a rare-word cluster is often empty in one process's batch."""
        picked = head.gather(1, target.clamp_max(self.shortlist - 1)[:, None])[:, 0]
        for i, (cluster, lo, hi) in enumerate(zip(self.tail, self.bounds, self.bounds[1:])):
            rows = ((target >= lo) & (target < hi)).nonzero()[:, 0]
            inner = cluster(hidden[rows]).float().log_softmax(-1).gather(1, (target[rows] - lo)[:, None])[:, 0]
            picked = picked.index_put((rows,), inner + head[rows, self.shortlist + i])
        return picked

    def sample(self, hidden: torch.Tensor, banned: torch.Tensor, uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One word per row [N] and its log-probability [N], drawn from the distribution without the `banned`
        head words [N, head] by inverse transform of one uniform number per row [N, 1]: first over the head's
        entries, then, where a cluster's entry is drawn, within that cluster by where the number fell inside
        the entry. The cumulative order is `forward`'s column order, so the number picks the word
        `sample_categorical` would pick from `forward`'s output, and only the clusters drawn are computed.
        The log-probability is the model's, as decoding reports it: bans restrict the draw, they do not
        raise the probability of what is left."""
        head = self.head_log_probs(hidden)
        entry, position = sample_categorical(self._ban(head, banned), uniform, with_position=True)
        word, log_prob = entry.clone(), head.gather(1, entry[:, None])[:, 0]
        for i, (cluster, lo) in enumerate(zip(self.tail, self.bounds)):
            rows = (entry == self.shortlist + i).nonzero()[:, 0]
            if len(rows):
                inner = cluster(hidden[rows]).float().log_softmax(-1)
                pick = sample_categorical(inner, position[rows])
                word[rows] = lo + pick
                log_prob[rows] += inner.gather(1, pick[:, None])[:, 0]
        return word, log_prob

    def loss(self, hidden: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy of `target` [N]. Label smoothing spreads its share over the head's outputs (its
        words and the clusters standing for the rest): the full layer's uniform target over V words would
        need every cluster's softmax for every word."""
        head = self.head_log_probs(hidden)
        nll = -self.target_log_probs(hidden, target, head)
        if label_smoothing:
            nll = (1 - label_smoothing) * nll - label_smoothing * head.mean(-1)
        return nll.mean()


def sample_categorical(scores: torch.Tensor, uniform: torch.Tensor, with_position: bool = False):
    """One index per row [N] drawn from softmax(scores) [N, K] (-inf: never) by inverse transform, given one
    uniform number in [0, 1) per row [N, 1]: the first index whose cumulative probability exceeds it.
    A word of probability 0 adds nothing to the running sum, so it can never be the first to exceed it.
    `with_position` also returns where the number fell within the drawn index's probability, in [0, 1)
    [N, 1]: a uniform number again, for drawing within what that index stands for."""
    cdf = (scores - scores.amax(dim=-1, keepdim=True)).exp_().cumsum_(dim=-1)
    total = cdf[:, -1:]
    target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))  # < total always
    index = torch.searchsorted(cdf, target, right=True)
    if not with_position:
        return index[:, 0]
    upper = cdf.gather(1, index)
    lower = torch.where(index > 0, cdf.gather(1, (index - 1).clamp_min(0)), torch.zeros_like(upper))
    return index[:, 0], ((target - lower) / (upper - lower)).clamp(0.0, 1.0 - 2**-24)
