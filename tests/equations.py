"""The textbook recurrences (tanh RNN, LSTM, GRU) written out by hand, for the tests that check the fused
cells of the caption decoder and of the character model against them."""

import torch


def weights(model):
    """The first layer's weights and biases of `model.rnn` (a caption decoder's or a character model's)."""
    r = model.rnn
    return r.weight_ih_l0, r.weight_hh_l0, r.bias_ih_l0 + 0, r.bias_hh_l0 + 0


def hand_step(cell: str, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, model):
    """One step of the seed's equations, written out with the fused module's own weights."""
    w_x, w_h, b_x, b_h = weights(model)
    sig, tanh = torch.sigmoid, torch.tanh
    if cell == "rnn":  # h_t = tanh(W_xh x_t + W_hh h_{t-1} + b)
        return tanh(x @ w_x.T + b_x + h @ w_h.T + b_h), None
    if cell == "lstm":  # (i,f,o,g) = (sig,sig,sig,tanh)(W [h; x]); C = f*C + i*g; h = o*tanh(C)
        z = x @ w_x.T + b_x + h @ w_h.T + b_h
        i, f, g, o = z.chunk(4, dim=-1)  # torch's gate order
        c_new = sig(f) * c + sig(i) * tanh(g)
        return sig(o) * tanh(c_new), c_new
    # GRU: r, z gates; h~ = tanh(W x + r * (U h)); h = (1 - z) * h_prev + z * h~
    # (torch applies r after the hidden matmul, the cuDNN form; with z as the update gate as in the seed.)
    gx, gh = x @ w_x.T + b_x, h @ w_h.T + b_h
    rx, zx, nx = gx.chunk(3, dim=-1)
    rh, zh, nh = gh.chunk(3, dim=-1)
    r, zgate = sig(rx + rh), sig(zx + zh)
    candidate = tanh(nx + r * nh)
    # torch's nn.GRU computes h = (1 - z') * n + z' * h_prev; its z' is the seed's 1 - z.
    return zgate * h + (1 - zgate) * candidate, None
