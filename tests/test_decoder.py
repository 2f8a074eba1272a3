"""The decoder is faithful to the textbook equations, and teacher forcing matches step-by-step decoding."""

import pytest
import torch
import torch.nn.functional as F

from captioner import decoder as decoder_module
from captioner.decoder import CaptionDecoder, DecoderConfig, rows_product

from .conftest import tiny_decoder
from .equations import hand_step, weights

H = 32


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("conditioning", ["every_step", "first_input"])
def test_one_step_matches_the_equations(cell, conditioning):
    dec = tiny_decoder(40, cell=cell, conditioning=conditioning, feature_dim=24, hidden=H)
    with torch.no_grad():
        for p in dec.rnn.parameters():  # make the state non-trivial
            p.normal_(0, 0.3)
    v = torch.randn(3, 24)
    tok = torch.tensor([5, 6, 7])
    state = dec.start(v)
    h0 = state["h"][0]
    c0 = state["c"][0] if cell == "lstm" else None
    logits, new = dec.step(tok, state)

    x = dec.embed(tok)
    if conditioning == "every_step":
        # the seed: h_t = tanh(W_hx x_t + W_hh h_{t-1} + W_ih v), with v projected to the input width
        x = torch.cat([x, dec.project_image(v)], dim=1)
        assert torch.equal(h0, torch.zeros_like(h0))
    else:
        # Show and Tell: the state after reading x_{-1} = W_v v from a zero state
        h_img, c_img = hand_step(cell, dec.project_image(v), torch.zeros(3, H), torch.zeros(3, H) if cell == "lstm" else None, dec)
        torch.testing.assert_close(h0, h_img, rtol=1e-5, atol=1e-5)
    h1, c1 = hand_step(cell, x, h0, c0, dec)
    torch.testing.assert_close(new["h"][0], h1, rtol=1e-5, atol=1e-5)
    if cell == "lstm":
        torch.testing.assert_close(new["c"][0], c1, rtol=1e-5, atol=1e-5)
    # y_t = softmax(W_hy h_t + b)
    torch.testing.assert_close(logits, h1 @ dec.out.weight.T + dec.out.bias, rtol=1e-5, atol=1e-5)


def test_rnn_every_step_is_the_seed_formula_with_split_weights():
    dec = tiny_decoder(40, cell="rnn", conditioning="every_step", feature_dim=24, hidden=H)
    v, tok = torch.randn(2, 24), torch.tensor([4, 9])
    w_ih, w_hh, b_ih, b_hh = weights(dec)
    w_hx, w_iv = w_ih[:, :16], w_ih[:, 16:]  # input weight = [W_hx | W_ih]
    h_prev = torch.randn(2, H)
    state = {"h": h_prev[None], "image": dec.project_image(v)}
    _, new = dec.step(tok, state)
    expect = torch.tanh(dec.embed(tok) @ w_hx.T + h_prev @ w_hh.T + dec.project_image(v) @ w_iv.T + b_ih + b_hh)
    torch.testing.assert_close(new["h"][0], expect, rtol=1e-5, atol=1e-5)


def test_lstm_forget_gate_bias_starts_at_one():
    for layers in (1, 2):
        dec = CaptionDecoder(DecoderConfig(vocab_size=10, feature_dim=8, cell="lstm", hidden_dim=H, num_layers=layers))
        for layer in range(layers):
            total = getattr(dec.rnn, f"bias_ih_l{layer}") + getattr(dec.rnn, f"bias_hh_l{layer}")
            assert torch.all(total[H : 2 * H] == 1.0)
            assert not torch.all(total[:H] == 1.0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("conditioning", ["every_step", "first_input"])
def test_teacher_forcing_equals_step_by_step(cell, conditioning):
    dec = tiny_decoder(30, cell=cell, conditioning=conditioning, feature_dim=12, layers=2)
    v = torch.randn(2, 12)
    tokens = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0]])
    forced = dec(v, tokens)
    assert forced.shape == (2, 4, 30)
    state = dec.start(v)
    for t in range(4):
        logits, state = dec.step(tokens[:, t], state)
        torch.testing.assert_close(forced[:, t], logits, rtol=1e-4, atol=1e-5)


def test_outputs_are_causal():
    dec = tiny_decoder(30)
    v = torch.randn(1, 1280)
    a = dec(v, torch.tensor([[1, 5, 6, 7, 2]]))
    b = dec(v, torch.tensor([[1, 5, 6, 9, 9]]))
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3], b[:, 3])


def test_config_validation():
    with pytest.raises(ValueError):
        DecoderConfig(vocab_size=10, feature_dim=8, cell="transformer")
    with pytest.raises(ValueError):
        DecoderConfig(vocab_size=10, feature_dim=8, conditioning="sideways")


def test_image_vectors_are_standardised_with_training_statistics():
    dec = tiny_decoder(20, feature_dim=6)
    train = torch.rand(100, 6) * 5 + 3  # all positive, large shared mean: like pooled CNN features
    dec.set_feature_stats(train)
    # Standardised, the decoder sees the same image whatever per-dimension scale and offset the encoder's
    # vectors have: a twin fitted on rescaled, shifted vectors projects the rescaled vectors identically.
    scale, shift = torch.rand(6) * 4 + 0.5, torch.randn(6) * 10
    twin = tiny_decoder(20, feature_dim=6)  # the same seed: the same weights
    twin.set_feature_stats(train * scale + shift)
    photos = torch.rand(7, 6) * 5 + 3
    torch.testing.assert_close(twin.project_image(photos * scale + shift), dec.project_image(photos), rtol=1e-4, atol=1e-4)
    # and the training set's mean vector is the decoder's "average photo": W_v 0 + b
    torch.testing.assert_close(dec.project_image(train.mean(0, keepdim=True))[0], dec.image_proj.bias, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(dec.project_image(train[:1]), tiny_decoder(20, feature_dim=6).project_image(train[:1]))
    assert "feature_mean" in dec.state_dict()  # travels inside the checkpoint


# AMD: the step's products as (W x^T)^T from 2 rows; Intel: x W^T at the test's 3 rows
VENDORS = ["AuthenticAMD", "GenuineIntel"]


@pytest.mark.parametrize("vendor", VENDORS + [""])
def test_rows_product_is_the_linear_layer_in_either_orientation(vendor, monkeypatch):
    monkeypatch.setattr(decoder_module, "cpu_vendor", lambda: vendor)
    weight, bias = torch.randn(40, 16), torch.randn(40)
    for rows in (1, 3, 24):
        x, per_row = torch.randn(rows, 16), torch.randn(rows, 40)
        for add in (None, bias, per_row):
            got = rows_product(x, weight, add)
            assert got.is_contiguous()  # beam search views it
            torch.testing.assert_close(got, F.linear(x, weight) + (0 if add is None else add))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("conditioning", ["every_step", "first_input"])
@pytest.mark.parametrize("vendor", VENDORS)
def test_inference_fast_path_equals_the_fused_module(cell, conditioning, vendor, monkeypatch):
    """Decoding without gradients precomputes word and image gate contributions; it must compute the
    same thing as the fused cell, step after step, in either orientation of its products, and notice when
    the weights change."""
    monkeypatch.setattr(decoder_module, "cpu_vendor", lambda: vendor)
    dec = tiny_decoder(40, cell=cell, conditioning=conditioning, feature_dim=24, hidden=H)
    v, toks = torch.randn(3, 24), [torch.tensor([1, 1, 1]), torch.tensor([5, 6, 7]), torch.tensor([8, 9, 4])]
    fused = torch.optim.AdamW(dec.parameters(), lr=0.05, fused=True)  # training's: leaves version counters alone

    def fused_step():
        dec.train()
        with torch.enable_grad():
            dec(v, torch.tensor([[1, 5, 6, 2]] * 3)).sum().backward()
        fused.step()
        dec.eval()

    def without_table():
        dec.word_table = False  # SCST's decodes: each step's word gates computed for the words read

    changes = [lambda: dec.embed.weight.mul_(1.5), lambda: dec.rnn.bias_hh_l0.add_(0.3), fused_step, without_table,
               lambda: None]
    for change in changes:  # the cached word table must follow each tensor it is built from
        with torch.no_grad():
            fast_state, slow_state = dec.start(v), dec.start(v)
            slow_state.pop("image_gates", None)
            for tok in toks:
                fast, fast_state = dec.step(tok, fast_state)
                with torch.enable_grad():  # the fused path
                    slow, slow_state = dec.step(tok, slow_state)
                torch.testing.assert_close(fast, slow.detach(), rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            change()


@pytest.mark.parametrize("softmax_head", [0, 8])
def test_step_log_probs_are_the_steps_distribution(softmax_head):
    """Decoding reads `step_log_probs`: the full layer's logits normalised, the adaptive softmax's output as
    it is (already normalised), in a tensor the caller may change in place without touching the state."""
    torch.manual_seed(0)
    dec = CaptionDecoder(DecoderConfig(vocab_size=40, feature_dim=12, embed_dim=16, hidden_dim=32, dropout=0.0,
                                       softmax_head=softmax_head)).eval()
    v, tokens = torch.randn(3, 12), torch.tensor([1, 5, 9])
    with torch.inference_mode():
        logits, _ = dec.step(tokens, dec.start(v))
        log_probs, state = dec.step_log_probs(tokens, dec.start(v))
        torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(log_probs - logits, (log_probs - logits)[:, :1].expand(-1, 40))  # same ranking
        before = {k: t.clone() for k, t in state.items()}
        log_probs.fill_(0.0)
        assert all(torch.equal(state[k], t) for k, t in before.items())
