"""The recurrent core: the theory's three cells (tanh RNN, LSTM, GRU) as torch's fused modules, and what
interpretability traces of their state. Tests check one step of each against the textbook equations."""

from __future__ import annotations

import torch
from torch import nn

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def make_rnn(cell: str, input_dim: int, hidden_dim: int, num_layers: int = 1, dropout: float = 0.0) -> nn.RNNBase:
    """torch's fused tanh RNN, LSTM or GRU (batch first), with the LSTM's forget-gate bias initialised to 1."""
    kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    rnn = CELLS[cell](input_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                      dropout=dropout if num_layers > 1 else 0.0, **kwargs)
    if cell == "lstm":
        # torch orders LSTM gates (i, f, g, o); b_ih + b_hh is the effective bias, so set the sum to 1.
        for layer in range(num_layers):
            with torch.no_grad():
                getattr(rnn, f"bias_ih_l{layer}")[hidden_dim : 2 * hidden_dim].fill_(1.0)
                getattr(rnn, f"bias_hh_l{layer}")[hidden_dim : 2 * hidden_dim].zero_()
    return rnn


def traced_cell(h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """What interpretability traces of a recurrent state [layers, N, H]: the top layer's tanh(c_t) for an
    LSTM (as in Karpathy et al. 2015), h_t for a GRU or tanh RNN."""
    return torch.tanh(c[-1]) if c is not None else h[-1]
