"""Two models, two optimizers: a small GAN learning a 2-D ring of Gaussians.

Nothing here knows about gradhealth; ``gradhealth run examples/train_gan.py`` watches the
generator and the discriminator, each with its own store.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn


def real_batch(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=g).float() * (2 * math.pi / 8)
    centres = torch.stack([torch.cos(k), torch.sin(k)], dim=1) * 2.0
    return centres + 0.05 * torch.randn(n, 2, generator=g)


class Generator(nn.Module):
    def __init__(self, z: int = 8, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z, width), nn.ReLU(), nn.Linear(width, width),
                                 nn.ReLU(), nn.Linear(width, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.LeakyReLU(0.2),
                                 nn.Linear(width, width), nn.LeakyReLU(0.2), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    gen, disc = Generator(), Discriminator()
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(args.batch, 1), torch.zeros(args.batch, 1)
    for step in range(args.steps):
        fake = gen(torch.randn(args.batch, 8, generator=g))
        opt_d.zero_grad()
        loss_d = bce(disc(real_batch(args.batch, g)), ones) + bce(disc(fake.detach()), zeros)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        loss_g = bce(disc(fake), ones)
        loss_g.backward()
        opt_g.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: D loss {loss_d.item():.3f}, G loss {loss_g.item():.3f}")
    print("done")


if __name__ == "__main__":
    main()
