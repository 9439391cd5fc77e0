"""The encoder: low-pass Fourier coefficients of a shift-corrected image -> mean and log-variance of z."""

import torch
from torch import nn


class ResidualMLPEncoder(nn.Module):
    """Linear -> ReLU, then `n_blocks` residual blocks h + ReLU(Linear(h)), then Linear to (mu, logvar)."""

    def __init__(self, in_features: int, zdim: int, hidden: int = 256, n_blocks: int = 5):
        super().__init__()
        self.input = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_blocks))
        self.output = nn.Linear(hidden, 2 * zdim)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.input(features))
        for block in self.blocks:
            hidden = hidden + torch.relu(block(hidden))
        mu, logvar = self.output(hidden).chunk(2, dim=-1)
        return mu, logvar
