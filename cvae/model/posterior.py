"""Posterior-collapse diagnostics of the ELBO's own KL term, logged for every validation and test pass."""

import torch
from torchmetrics import Metric

from cvae.model.cvae import kl_per_dim

ACTIVE_UNIT_THRESHOLD = 0.01  # variance over inputs of a unit's posterior mean (Burda et al., 2016)


class PosteriorStats(Metric):
    """Per latent dimension, over a split: the variance over inputs of the posterior mean (a unit is active above
    ACTIVE_UNIT_THRESHOLD) and the mean KL. Sums, so exact under DDP."""

    full_state_update = False

    def __init__(self, latent_dim: int):
        super().__init__()
        for name in ("mu_sum", "mu_sq_sum", "kl_sum"):
            self.add_state(name, torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: torch.Tensor, logvar: torch.Tensor, *prior: torch.Tensor | None) -> None:
        """prior: (mu_y, log sigma_y^2) of a learned p(z | y), or nothing / (None, None) for N(0, I)."""
        mu = mu.double()
        self.mu_sum += mu.sum(0)
        self.mu_sq_sum += mu.pow(2).sum(0)
        prior = [None if param is None else param.double() for param in prior]
        self.kl_sum += kl_per_dim(mu, logvar.double(), *prior).sum(0)
        self.count += len(mu)

    def compute(self) -> dict[str, torch.Tensor]:
        mean = self.mu_sum / self.count
        variance = (self.mu_sq_sum - self.count * mean.pow(2)) / (self.count - 1)
        return {
            "active_units": (variance > ACTIVE_UNIT_THRESHOLD).sum().float(),
            "kl_per_dim": self.kl_sum / self.count,
        }
