"""A small CNN for encoder and decoder, the digit joined after the convolutions (encoder) and before them (decoder).

encoder  x: conv 1 -> c0 -> c1 channels (4x4, stride 2: 28 -> 14 -> 7); [c1*7*7 ; onehot(y)] -> hidden
         -> (mu, log sigma^2)
decoder  [z ; onehot(y)] -> hidden -> c1*7*7 -> transposed convs c1 -> c0 -> 1 channel of logits (7 -> 14 -> 28)
"""

import torch
from torch import nn

from cvae.model.network import IMAGE_SHAPE, NUM_CLASSES, NUM_PIXELS, Network, mlp, widths


class ConvEncoder(nn.Module):
    def __init__(self, latent_dim: int, channels: list[int], hidden_dims: list[int]):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, channels[0], 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = mlp([channels[1] * 7 * 7 + NUM_CLASSES, *hidden_dims, 2 * latent_dim])

    def forward(self, x_and_y: torch.Tensor) -> torch.Tensor:
        x, y = x_and_y.split([NUM_PIXELS, NUM_CLASSES], dim=1)
        return self.head(torch.cat([self.convs(x.view(-1, *IMAGE_SHAPE)), y], dim=1))


class ConvDecoder(nn.Module):
    def __init__(self, latent_dim: int, channels: list[int], hidden_dims: list[int]):
        super().__init__()
        self.stem = nn.Sequential(
            mlp([latent_dim + NUM_CLASSES, *reversed(hidden_dims), channels[1] * 7 * 7]),
            nn.ReLU(),
            nn.Unflatten(1, (channels[1], 7, 7)),
        )
        self.deconvs = nn.Sequential(
            nn.ConvTranspose2d(channels[1], channels[0], 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels[0], 1, 4, stride=2, padding=1),
            nn.Flatten(),
        )

    def forward(self, z_and_y: torch.Tensor) -> torch.Tensor:
        return self.deconvs(self.stem(z_and_y))


class Conv(Network):
    def __init__(
        self,
        latent_dim: int = 2,
        channels: list[int] = (16, 32),
        hidden_dims: list[int] = (256,),
        learned_prior: bool = False,
    ):
        super().__init__(latent_dim, learned_prior)
        channels = widths(channels, "model.net.channels", count=2)
        hidden_dims = widths(hidden_dims, "model.net.hidden_dims")
        self.encoder = ConvEncoder(latent_dim, channels, hidden_dims)
        self.decoder = ConvDecoder(latent_dim, channels, hidden_dims)
