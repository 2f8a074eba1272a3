"""The adaptive softmax is a true distribution over every word, training reads it without computing the
clusters its targets are not in, and decoding and SCST read it exactly as they read a full softmax."""

import pytest
import torch
import torch.nn.functional as F

import captioner
from captioner.checkpoint import save
from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.decoding import WordBans, sequence_log_probs, sequential_decode
from captioner.encoders import create_encoder
from captioner.model import Captioner
from captioner.options import DecodeOptions
from captioner.softmax import AdaptiveSoftmax, cluster_bounds, sample_categorical

from .conftest import LITE0, tiny_vocab

V, HEAD, H = 300, 10, 32


@pytest.fixture
def softmax() -> AdaptiveSoftmax:
    torch.manual_seed(0)
    layer = AdaptiveSoftmax(H, V, HEAD)
    with torch.no_grad():  # sharper than at initialisation, so the clusters' shares differ
        for p in layer.parameters():
            p.mul_(4.0)
    return layer


def adaptive_decoder(head: int = HEAD, seed: int = 0) -> CaptionDecoder:
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=V, feature_dim=24, embed_dim=16, hidden_dim=H, dropout=0.0, softmax_head=head)
    return CaptionDecoder(cfg).eval()


def test_clusters_cover_the_vocabulary_in_growing_sizes():
    assert cluster_bounds(10, 300) == [10, 40, 160, 300]
    assert cluster_bounds(2000, 9630) == [2000, 8000, 9630]
    with pytest.raises(ValueError):
        AdaptiveSoftmax(H, V, V)  # no tail: that is a full softmax


def test_every_row_is_a_distribution_over_the_whole_vocabulary(softmax):
    log_probs = softmax(torch.randn(64, H))
    assert log_probs.shape == (64, V)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(64))
    assert log_probs[:, HEAD:].exp().sum(-1).mean() > 0.1  # the tail holds real mass


def test_target_log_probs_and_loss_read_the_same_distribution(softmax):
    hidden, target = torch.randn(200, H), torch.randint(0, V, (200,))
    full = softmax(hidden)
    picked = softmax.target_log_probs(hidden, target, softmax.head_log_probs(hidden))
    torch.testing.assert_close(picked, full.gather(1, target[:, None])[:, 0])
    torch.testing.assert_close(softmax.loss(hidden, target), F.nll_loss(full, target))


def test_bans_renormalise_the_whole_distribution(softmax):
    hidden, target = torch.randn(200, H), torch.randint(4, V, (200,))
    banned = torch.zeros(200, HEAD, dtype=torch.bool)
    banned[:, [0, 2]] = True
    banned[::2, 7] = True
    expect = softmax(hidden).masked_fill(F.pad(banned, (0, V - HEAD)), float("-inf")).log_softmax(-1)
    picked = softmax.target_log_probs(hidden, target, softmax.head_log_probs(hidden, banned))
    allowed = ~banned.gather(1, target.clamp_max(HEAD - 1)[:, None])[:, 0] | (target >= HEAD)
    torch.testing.assert_close(picked[allowed], expect.gather(1, target[:, None])[:, 0][allowed])


def test_training_computes_a_cluster_only_for_the_words_in_it(softmax):
    seen = [0] * len(softmax.tail)
    for i, cluster in enumerate(softmax.tail):
        cluster.register_forward_hook(lambda m, inputs, out, i=i: seen.__setitem__(i, seen[i] + len(inputs[0])))
    target = torch.tensor([1, 5, 12, 15, 39, 100, 299, 3])
    softmax.loss(torch.randn(len(target), H), target, label_smoothing=0.1)
    assert seen == [3, 1, 1]  # [10, 40): 12, 15, 39; [40, 160): 100; [160, 300): 299


def test_a_cluster_without_targets_still_gets_a_gradient(softmax):
    """Distributed training reduces every weight's gradient on every process; an empty cluster must not
    leave its weights without one."""
    softmax.loss(torch.randn(5, H), torch.tensor([1, 4, 5, 12, 9])).backward()  # only [10, 40) besides the head
    grads = [p.grad for cluster in softmax.tail for p in cluster.parameters()]
    assert all(g is not None for g in grads)
    assert grads[0].abs().sum() > 0 and all(g.abs().sum() == 0 for g in grads[3:])


def test_sampling_cluster_by_cluster_draws_what_the_full_distribution_draws(softmax):
    """One uniform number picks the same word from the head-then-cluster draw as from `forward`'s columns."""
    hidden, uniform = torch.randn(2000, H), torch.rand(2000, 1, generator=torch.Generator().manual_seed(1))
    banned = torch.zeros(2000, HEAD, dtype=torch.bool)
    banned[:, 2] = True
    full = softmax(hidden).masked_fill(F.pad(banned, (0, V - HEAD)), float("-inf"))
    words, log_probs = softmax.sample(hidden, banned, uniform)
    expect = sample_categorical(full, uniform)
    assert (words != expect).sum() <= 2  # a number within float rounding of a boundary may fall either side
    assert (words >= HEAD).float().mean() > 0.2 and not (words == 2).any()
    torch.testing.assert_close(log_probs, softmax(hidden).gather(1, words[:, None])[:, 0])  # as decoding reports


def test_the_decoder_trains_and_scores_through_the_adaptive_layer():
    dec = adaptive_decoder().train()
    assert isinstance(dec.out, AdaptiveSoftmax)
    feats, tokens = torch.randn(4, 24), torch.tensor([[1, 5, 200, 2, 0], [1, 9, 50, 60, 2], [1, 299, 2, 0, 0], [1, 7, 15, 2, 0]])
    log_probs = dec(feats, tokens).log_softmax(-1)  # teacher forcing: every word's log-probability
    real = tokens[:, 1:] != 0
    nll = -log_probs.gather(2, tokens[:, 1:, None])[..., 0][real].mean()
    torch.testing.assert_close(dec(feats, tokens, label_smoothing=0.0), nll)
    dec(feats, tokens, label_smoothing=0.1).backward()
    assert all(p.grad is not None for p in dec.out.parameters())


def test_scst_scores_samples_under_the_bans_decoding_used():
    dec = adaptive_decoder()
    bans = WordBans(end_id=2, suppress=(0, 1, 3), min_length=2)
    feats = torch.randn(6, 24)
    hyps = sequential_decode(dec, feats, 1, bans, DecodeOptions(method="sample", max_length=8), seeds=list(range(6)))
    seqs = torch.nn.utils.rnn.pad_sequence([torch.tensor(h.tokens + [2] * h.finished) for h in hyps], batch_first=True)
    inputs = torch.cat([torch.ones(6, 1, dtype=torch.long), seqs[:, :-1]], dim=1)
    banned = bans.mask(inputs, torch.arange(seqs.size(1)), V)  # the distribution drawn from: bans renormalised
    drawn_from = dec(feats, torch.cat([inputs, seqs[:, -1:]], dim=1)).masked_fill(banned, float("-inf")).log_softmax(-1)
    expect = drawn_from.gather(2, seqs[..., None])[..., 0].masked_fill(seqs == 0, 0.0)
    torch.testing.assert_close(sequence_log_probs(dec, feats, seqs, 1, bans), expect)
    with pytest.raises(ValueError, match="below 10"):  # an adaptive softmax bans only words of its head
        sequence_log_probs(dec, feats, seqs, 1, WordBans(end_id=2, suppress=(0, 1, 3, 250)))


def test_sampled_captions_do_not_depend_on_drawing_cluster_by_cluster(monkeypatch):
    dec, bans = adaptive_decoder(), WordBans(end_id=2, suppress=(0, 1, 3))
    feats, opts = torch.randn(8, 24), DecodeOptions(method="sample", max_length=10)
    by_cluster = sequential_decode(dec, feats, 1, bans, opts, seeds=list(range(8)))
    monkeypatch.setattr("captioner.decoding._draws_by_cluster", lambda *a: False)
    whole = sequential_decode(dec, feats, 1, bans, opts, seeds=list(range(8)))
    assert [h.tokens for h in by_cluster] == [h.tokens for h in whole]
    assert any(t >= HEAD for h in whole for t in h.tokens)  # the tail was drawn from
    torch.testing.assert_close([h.log_prob for h in by_cluster], [h.log_prob for h in whole])


def test_an_adaptive_model_round_trips_through_its_checkpoint(tmp_path):
    vocab = tiny_vocab(60)
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=len(vocab), feature_dim=1280, embed_dim=16, hidden_dim=H, dropout=0.0, softmax_head=12)
    model = Captioner(create_encoder("efficientnet_lite0", pretrained=False), CaptionDecoder(cfg), vocab,
                      LITE0.preprocess(), "efficientnet_lite0")
    save(tmp_path / "adaptive.safetensors", model.checkpoint())
    loaded = captioner.load(tmp_path / "adaptive.safetensors", backend="torch")
    assert isinstance(loaded.decoder.out, AdaptiveSoftmax) and loaded.describe()["decoder"]["softmax_head"] == 12
    feats = torch.randn(3, 1280)
    for opts in ({"beam_size": 3}, {"method": "sample", "seed": 4}):
        a, b = model.decode(feats, **opts), loaded.decode(feats, **opts)
        assert [(c[0].text, round(c[0].log_prob, 4)) for c in a] == [(c[0].text, round(c[0].log_prob, 4)) for c in b]
