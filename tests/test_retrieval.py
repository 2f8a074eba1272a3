"""Self-retrieval, SCST's discriminability term: the retrieval model learns which words go with which photo,
and the reward and the selection score add exactly the configured share of it."""

from dataclasses import replace

import pytest
import torch

from captioner.decoding import WordBans
from training.config import TrainConfig
from training.retrieval import Retrieval, self_retrieval, train_retrieval, val_self_retrieval
from training.scst import Reward, scst_loss, scst_samples
from training.train import selection_score

from .conftest import tiny_decoder, tiny_vocab

PAD, START, END = 0, 1, 2
SPECIAL = (PAD, START, END)
BANS = WordBans(END, suppress=(0, 1, 3), min_length=1)


def clustered(n_photos: int = 64, clusters: int = 4, seed: int = 0):
    """Photos in `clusters` groups (vectors around one centre each); each photo's 3 captions say its group's
    word (4 + group) among two words every caption shares, so only that word tells photos apart."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, 32, generator=gen) * 3
    group = torch.arange(n_photos) % clusters
    feats = centres[group] + torch.randn(n_photos, 32, generator=gen)
    img_idx = torch.arange(n_photos).repeat_interleave(3)
    common = torch.tensor([10, 11])
    tokens = torch.stack([torch.cat([torch.tensor([START]), common[torch.randperm(2, generator=gen)][:1],
                                     torch.tensor([4 + int(group[i]), common[1], END])]) for i in img_idx])
    return feats, tokens, img_idx, group


def test_retrieval_model_learns_which_words_go_with_which_photo():
    feats, tokens, img_idx, group = clustered()
    rng = torch.get_rng_state()
    model = train_retrieval(feats, tokens, img_idx, vocab_size=16, ignore_ids=SPECIAL, epochs=40, batch_images=16)
    assert torch.equal(torch.get_rng_state(), rng)  # training the reward model does not move SCST's samples
    one_each = tokens[::3]  # photo i's first caption
    others = one_each[(torch.arange(len(feats)) + 1) % len(feats)]  # the next photo's: always another group
    own, wrong = self_retrieval(model, one_each, feats), self_retrieval(model, others, feats)
    chance = -torch.log(torch.tensor(float(len(feats))))
    # a caption can only narrow 64 photos down to its group's 16 (log(1/16) = -2.77); chance is log(1/64)
    assert own.mean() > chance + 1.0, (own.mean(), chance)
    assert wrong.mean() < own.mean() - 3.0, (wrong.mean(), own.mean())


def test_self_retrieval_reads_k_captions_per_photo_in_order():
    torch.manual_seed(0)
    model = Retrieval(16, 32, dim=8, ignore_ids=SPECIAL)
    feats = torch.randn(3, 32)
    ids = torch.randint(3, 16, (6, 5))
    got = self_retrieval(model, ids, feats, k=2)
    with torch.no_grad():
        logp = model.logits(ids, feats).log_softmax(-1)
    assert got.shape == (3, 2)
    for photo in range(3):
        for j in range(2):
            assert got[photo, j] == pytest.approx(float(logp[2 * photo + j, photo]))
    # padding, <start> and <end> are not words: they change nothing
    padded = torch.cat([ids, torch.full((6, 3), PAD)], 1)
    padded[:, -2] = END
    torch.testing.assert_close(self_retrieval(model, padded, feats, k=2), got)


def test_reward_adds_the_discriminability_term():
    """With weight w, each caption's reward is its text terms plus exactly w x log p(own photo | caption)
    among the batch's photos; the reward refuses a weight without the model that scores it."""
    vocab, refs = tiny_vocab(8), [["w1 w2"], ["w3"], ["w4 w5"]]
    feats = torch.randn(3, 1280, generator=torch.Generator().manual_seed(8))
    torch.manual_seed(1)
    retrieval = Retrieval(12, 1280, dim=8, ignore_ids=SPECIAL)
    seqs = torch.tensor([[4, 5, END], [6, END, 0], [4, 4, 5], [7, 8, END], [5, END, 0], [8, 8, END]])
    plain = Reward(refs)(seqs, [0, 1, 2], feats, vocab, per_image=2)
    weighted = Reward(refs, discriminability_weight=0.4, retrieval=retrieval)(seqs, [0, 1, 2], feats, vocab, per_image=2)
    assert plain.shape == (3, 2)
    torch.testing.assert_close(weighted - plain, 0.4 * self_retrieval(retrieval, seqs, feats, 2))
    with pytest.raises(ValueError, match="retrieval"):
        Reward(refs, discriminability_weight=0.4)


def test_greedy_baseline_is_scored_by_the_whole_reward(monkeypatch):
    """The greedy baseline's caption earns the same reward as a sample would, discriminability included: with
    a decoder so sure of its words that every sample is the greedy caption, each advantage is 0."""
    import training.scst as scst

    dec, vocab = tiny_decoder(12, seed=9), tiny_vocab(8)
    with torch.no_grad():
        dec.out.bias[7] = 100.0  # every step: word 7, whether sampled or chosen greedily
    feats = torch.randn(3, 1280, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(1)
    reward = Reward([["w1 w2"], ["w3"], ["w4 w5"]], discriminability_weight=0.4,
                    retrieval=Retrieval(12, 1280, dim=8, ignore_ids=SPECIAL))
    seen = {}
    monkeypatch.setattr(scst, "scst_advantages", lambda scores, baseline, greedy: seen.setdefault(
        "advantages", scores - greedy[:, None]))
    cfg = TrainConfig(scst_samples=3, scst_baseline="greedy", scst_max_words=5)
    scst_loss(dec, feats, [0, 1, 2], vocab, reward, cfg, BANS)
    torch.testing.assert_close(seen["advantages"], torch.zeros(3, 3), atol=1e-5, rtol=0)  # float summation order aside
    samples = scst_samples(dec, feats, 3, 5, vocab, BANS)
    term = reward(samples, [0, 1, 2], feats, vocab, 3) - Reward([["w1 w2"], ["w3"], ["w4 w5"]])(samples, [0, 1, 2], feats, vocab, 3)
    assert term.abs().min() > 1e-3  # the term is there to be matched: a baseline without it would be far from 0


def test_selection_score_and_val_self_retrieval():
    vocab = tiny_vocab(8)
    torch.manual_seed(2)
    model = Retrieval(len(vocab), 32, dim=8, ignore_ids=SPECIAL)
    feats = torch.randn(5, 32)
    captions = [" ".join(vocab.itos[4 + i % 4] for _ in range(2)) for i in range(5)]
    ids = torch.tensor([vocab.encode(c)[1:] for c in captions])
    groups_of_two = val_self_retrieval(model, captions, vocab, feats, group=2)  # photos 0-1 and 2-3; 4 alone: out
    expected = torch.cat([self_retrieval(model, ids[i : i + 2], feats[i : i + 2]) for i in (0, 2)]).mean()
    assert groups_of_two == pytest.approx(float(expected), abs=1e-4)
    groups_of_three = val_self_retrieval(model, captions, vocab, feats, group=3)  # photos 0-2 and 3-4
    expected = torch.cat([self_retrieval(model, ids[i : i + 3], feats[i : i + 3]) for i in (0, 3)]).mean()
    assert groups_of_three == pytest.approx(float(expected), abs=1e-4)

    scores = {"CIDEr-D": 50.0, "BLEU-4": 20.0}
    cfg = TrainConfig(scst_bleu_weight=0.5, scst_disfluency_penalty=0.5)
    assert selection_score(scores, 2.0, cfg, -0.8) == pytest.approx(59.0)  # off: the term is ignored
    assert selection_score(scores, 2.0, replace(cfg, scst_discriminability_weight=0.1), -0.8) == pytest.approx(51.0)
