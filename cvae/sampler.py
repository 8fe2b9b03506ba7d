"""Where z comes from when the model generates (conf/sampler/): the prior p(z | y), or the ex-post density
estimate of Ghosh et al. (2020), a Gaussian mixture per digit fitted to the posterior means of the training
images, which keeps samples where the decoder was trained instead of in the prior's holes:

prior: z ~ p(z | y)                                  N(0, I), or the model's learned N(mu_y, sigma_y^2)
gmm:   z ~ sum_k pi_yk N(m_yk, S_yk)                 fitted by EM to {E_q[z | x_i, y_i] : y_i = y}
"""

import hashlib
import os
from pathlib import Path

import torch
from torch.distributions import MultivariateNormal

from cvae.errors import ConfigError
from cvae.model import CVAE, NUM_CLASSES

COVARIANCES = ("full", "diag")
FIT_FORMAT = 1  # bump when a saved fit's contents change meaning


def prior_latents(count: int, latent_dim: int, seed: int) -> torch.Tensor:
    """count draws of N(0, I), on the CPU, from a generator of their own: the same noise for a seed whatever
    the batch size or device used to decode them."""
    return torch.randn(count, latent_dim, generator=torch.Generator().manual_seed(seed))


def grid_labels(samples_per_digit: int) -> torch.Tensor:
    """Labels of a grid with one row per digit 0-9."""
    return torch.arange(NUM_CLASSES).repeat_interleave(samples_per_digit)


class PriorSampler:
    """z ~ p(z | y), the model's own prior."""

    name = "prior"

    def fit(self, model: CVAE, images: torch.Tensor, labels: torch.Tensor) -> "PriorSampler":
        return self  # nothing to fit

    def fit_for_checkpoint(self, model: CVAE, images, labels, ckpt_path) -> "PriorSampler":
        return self

    def latents(self, model: CVAE, labels: torch.Tensor, seed: int) -> torch.Tensor:
        """One z per label, on the CPU."""
        return from_prior(model, labels, prior_latents(len(labels), model.latent_dim, seed))

    def grid_latents(self, model: CVAE, samples_per_digit: int, seed: int = 0) -> torch.Tensor:
        """z for a grid with a row per digit: the same noise in every row, so a column is one style."""
        eps = prior_latents(samples_per_digit, model.latent_dim, seed).repeat(NUM_CLASSES, 1)
        return from_prior(model, grid_labels(samples_per_digit), eps)


@torch.no_grad()
def from_prior(model: CVAE, labels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z ~ p(z | y) from standard normal noise, on the CPU; the noise itself under the reference N(0, I)."""
    if not model.learned_prior:
        return eps
    device = next(model.parameters()).device
    return model.prior_latents(labels.to(device), eps.to(device)).cpu()


class GaussianMixtureSampler:
    """z ~ the Gaussian mixture of its digit, `components` components with full or diagonal covariances."""

    name = "gmm"

    def __init__(self, components: int = 10, covariance: str = "full", fit_seed: int = 0, max_iterations: int = 200):
        if not isinstance(components, int) or components < 1:
            raise ConfigError(f"sampler.components={components!r} must be a positive integer, e.g. 10")
        if covariance not in COVARIANCES:
            raise ConfigError(f"sampler.covariance={covariance!r} is unknown; choose one of {', '.join(COVARIANCES)}")
        self.components, self.covariance = components, covariance
        self.fit_seed, self.max_iterations = fit_seed, max_iterations
        # weights (10, K), means (10, K, D), scale_tril (10, K, D, D)
        self.mixture: dict[str, torch.Tensor] | None = None

    def settings(self) -> dict:
        return {
            "format": FIT_FORMAT,
            "components": self.components,
            "covariance": self.covariance,
            "fit_seed": self.fit_seed,
            "max_iterations": self.max_iterations,
        }

    def fit(self, model: CVAE, images: torch.Tensor, labels: torch.Tensor) -> "GaussianMixtureSampler":
        """Fit each digit's mixture to the posterior means of its images (uint8 (N, 28, 28) or floats in [0, 1])."""
        means = posterior_means(model, images, labels)
        labels = labels.cpu()
        fits = []
        for digit in range(NUM_CLASSES):
            points = means[labels == digit]
            if len(points) < self.components:
                raise ConfigError(
                    f"digit {digit} has {len(points)} training images, fewer than sampler.components="
                    f"{self.components}; lower sampler.components"
                )
            seed = self.fit_seed + digit
            fits.append(fit_gaussian_mixture(points, self.components, self.covariance, seed, self.max_iterations))
        self.mixture = {key: torch.stack([fit[key] for fit in fits]) for key in fits[0]}
        return self

    def fit_for_checkpoint(self, model: CVAE, images, labels, ckpt_path) -> "GaussianMixtureSampler":
        """Reuse the fit saved beside the checkpoint if it was made with these settings from this very file;
        otherwise fit, say so, and save it there (written to a temporary name, then renamed)."""
        ckpt_path = Path(ckpt_path)
        path = self.fit_path(ckpt_path)
        wanted = {**self.settings(), "checkpoint_sha256": file_sha256(ckpt_path)}
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("settings") == wanted:
                print(f"ex-post mixture: reusing {path}")
                self.mixture = saved["mixture"]
                return self
            print(f"ex-post mixture: {path} was fitted with other settings or another checkpoint; refitting")
        self.fit(model, images, labels)
        partial = path.with_name(f".{path.name}.partial")
        torch.save({"settings": wanted, "mixture": self.mixture}, partial)
        os.replace(partial, path)
        print(f"ex-post mixture: fitted to {len(labels)} training images, saved {path}")
        return self

    def fit_path(self, ckpt_path: Path) -> Path:
        return ckpt_path.with_name(f"{ckpt_path.name}.gmm{self.components}_{self.covariance}_seed{self.fit_seed}.pt")

    @torch.no_grad()
    def latents(self, model: CVAE, labels: torch.Tensor, seed: int) -> torch.Tensor:
        """One z per label from its digit's mixture, on the CPU: a component drawn by weight, then its Gaussian."""
        if self.mixture is None:
            raise RuntimeError("the ex-post mixture is used before it was fitted")
        labels = labels.cpu()
        generator = torch.Generator().manual_seed(seed)
        component = torch.multinomial(self.mixture["weights"][labels], 1, generator=generator).squeeze(1)
        eps = torch.randn(len(labels), model.latent_dim, 1, generator=generator, dtype=torch.float64)
        z = self.mixture["means"][labels, component] + (self.mixture["scale_tril"][labels, component] @ eps).squeeze(2)
        return z.float()

    def grid_latents(self, model: CVAE, samples_per_digit: int, seed: int = 0) -> torch.Tensor:
        """z for a grid with a row per digit, each from its digit's mixture."""
        return self.latents(model, grid_labels(samples_per_digit), seed)


Sampler = PriorSampler | GaussianMixtureSampler


@torch.no_grad()
def posterior_means(model: CVAE, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """E_q[z | x, y] for each image, float64 on the CPU."""
    device = next(model.parameters()).device
    means = []
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        x = x.to(device).flatten(1)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        means.append(model.encode(x, y.to(device))[0].double().cpu())
    return torch.cat(means)


def fit_gaussian_mixture(
    points: torch.Tensor, components: int, covariance: str, seed: int, max_iterations: int = 200, tol: float = 1e-6
) -> dict[str, torch.Tensor]:
    """Maximum-likelihood Gaussian mixture by EM, in float64; starts from `components` distinct points drawn
    with the seed, so the same points and seed give the same fit. (By hand: scikit-learn's GaussianMixture does
    this but is not a dependency, and torch has no mixture fit.)"""
    count, dim = points.shape
    reg = 1e-6 * torch.eye(dim, dtype=points.dtype)  # keeps every covariance positive definite (as scikit-learn)
    start = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:components]
    means = points[start].clone()
    covariances = torch.cov(points.T).expand(components, dim, dim).clone() + reg
    if covariance == "diag":
        covariances = torch.diag_embed(covariances.diagonal(dim1=1, dim2=2))
    weights = torch.full((components,), 1 / components, dtype=points.dtype)
    previous = -float("inf")
    for _ in range(max_iterations):
        # E step: responsibilities r_nk = pi_k N(x_n; m_k, S_k) / sum_j pi_j N(x_n; m_j, S_j)
        log_joint = MultivariateNormal(means, covariances).log_prob(points[:, None]) + weights.log()
        log_likelihood = torch.logsumexp(log_joint, dim=1)
        responsibilities = (log_joint - log_likelihood[:, None]).exp()
        # M step: weighted counts, means and covariances
        counts = responsibilities.sum(0) + 10 * torch.finfo(points.dtype).eps
        weights = counts / count
        means = responsibilities.T @ points / counts[:, None]
        centred = points[:, None] - means  # (N, K, D)
        if covariance == "full":
            covariances = torch.einsum("nk,nkd,nke->kde", responsibilities, centred, centred) / counts[:, None, None]
        else:
            covariances = torch.diag_embed((responsibilities[..., None] * centred.pow(2)).sum(0) / counts[:, None])
        covariances = covariances + reg
        mean_log_likelihood = log_likelihood.mean().item()
        if mean_log_likelihood - previous < tol:
            break
        previous = mean_log_likelihood
    return {"weights": weights, "means": means, "scale_tril": torch.linalg.cholesky(covariances)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
