"""The ex-post density estimate of Ghosh et al. (2020): z ~ sum_k pi_yk N(m_yk, S_yk), a Gaussian mixture per digit
fitted by EM to the posterior means of its training images, which keeps samples where the decoder was trained instead
of in the prior's holes. The fit is saved beside its checkpoint and reused only for the same settings and file."""

import warnings
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from cvae.errors import ConfigError, StorageError
from cvae.files import file_sha256, may_write, save_torch_atomic
from cvae.model.cvae import Net, posterior_means
from cvae.model.network import NUM_CLASSES
from cvae.sampling import COVARIANCES
from cvae.sampling.prior import check_temperature, grid_labels
from cvae.trust import first_line
from cvae.validate import MAX_IMAGES, check_at_most, check_choice, check_count

FIT_FORMAT = 2  # bump when a saved fit's contents change meaning (2: fitted by scikit-learn)


class GaussianMixtureSampler:
    """z ~ the Gaussian mixture of its digit, `components` components with full or diagonal covariances; with
    temperature t < 1, z = m_k + t * L_k eps, each draw pulled toward its component's mean."""

    name = "gmm"

    def __init__(
        self,
        components: int = 10,
        covariance: str = "full",
        fit_seed: int = 0,
        max_iterations: int = 200,
        temperature: float = 1.0,
    ):
        check_at_most(components, "sampler.components", MAX_IMAGES)
        check_choice(covariance, COVARIANCES, "sampler.covariance")
        check_count(max_iterations, "sampler.max_iterations")
        self.components, self.covariance = components, covariance
        self.fit_seed, self.max_iterations = fit_seed, max_iterations
        self.temperature = check_temperature(temperature)  # the fit does not depend on it: a saved fit serves every t
        # weights (10, K), means (10, K, D), scale_tril (10, K, D, D)
        self.mixture: dict[str, torch.Tensor] | None = None

    def fit(self, model: Net, images: torch.Tensor, labels: torch.Tensor) -> "GaussianMixtureSampler":
        """Fit each digit's mixture to the posterior means of its images (uint8 (N, 28, 28) or floats in [0, 1])."""
        means = posterior_means(model, images, labels).double()
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

    def fit_for_checkpoint(self, model: Net, images, labels, ckpt_path) -> "GaussianMixtureSampler":
        """Reuse the fit saved beside the checkpoint if it was made with these settings from this very file;
        otherwise fit, say so, and save it there (written to a temporary name, then renamed)."""
        ckpt_path = Path(ckpt_path)
        path = ckpt_path.with_name(f"{ckpt_path.name}.gmm{self.components}_{self.covariance}_seed{self.fit_seed}.pt")
        settings = {key: getattr(self, key) for key in ("components", "covariance", "fit_seed", "max_iterations")}
        wanted = {"format": FIT_FORMAT, **settings, "checkpoint_sha256": file_sha256(ckpt_path)}
        if path.is_file():
            saved, problem = read_fit(path, model.latent_dim, self.components)
            if problem is None and saved["settings"] == wanted:
                print(f"ex-post mixture: reusing {path}")
                self.mixture = saved["mixture"]
                return self
            problem = problem or "was fitted with other settings or another checkpoint"
            print(f"ex-post mixture: {path} {problem}; refitting")
        self.fit(model, images, labels)
        if not may_write(path):  # a run writes only inside its own dir: the checkpoint is another run's
            print(f"ex-post mixture: fitted to {len(labels)} training images (kept for this run: not its folder)")
            return self
        try:
            save_torch_atomic(path, {"settings": wanted, "mixture": self.mixture})
        except StorageError as error:  # a read-only checkpoint folder: the evaluation goes on, refitting next time
            print(f"ex-post mixture: fitted to {len(labels)} training images, not saved: {error}")
            return self
        print(f"ex-post mixture: fitted to {len(labels)} training images, saved {path}")
        return self

    @torch.no_grad()
    def latents(self, model: Net, labels: torch.Tensor, seed: int) -> torch.Tensor:
        """One z per label from its digit's mixture, on the CPU: a component drawn by weight, then its Gaussian."""
        if self.mixture is None:
            raise RuntimeError("the ex-post mixture is used before it was fitted")
        labels = labels.cpu()
        generator = torch.Generator().manual_seed(seed)
        component = torch.multinomial(self.mixture["weights"][labels], 1, generator=generator).squeeze(1)
        eps = torch.randn(len(labels), model.latent_dim, 1, generator=generator, dtype=torch.float64)
        deviation = (self.mixture["scale_tril"][labels, component] @ eps).squeeze(2)
        z = self.mixture["means"][labels, component] + self.temperature * deviation
        return z.float()

    def grid_latents(self, model: Net, samples_per_digit: int, seed: int = 0) -> torch.Tensor:
        """z for a grid with a row per digit, each from its digit's mixture."""
        return self.latents(model, grid_labels(samples_per_digit), seed)


def read_fit(path: Path, latent_dim: int, components: int) -> tuple[dict | None, str | None]:
    """A saved fit, as data only (weights_only: nothing in the file runs), and what is wrong with it if anything:
    unreadable, not a fit, or a mixture of other shapes than this model and these settings give."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, damaged, or holding objects beyond tensors (refused unread)
        return None, f"cannot be read ({first_line(error)[:200]})"
    if not isinstance(saved, dict) or not isinstance(saved.get("mixture"), dict) or "settings" not in saved:
        return None, "is not a saved mixture fit (it lacks 'settings' and 'mixture')"
    shape = (NUM_CLASSES, components)
    shapes = {"weights": shape, "means": (*shape, latent_dim), "scale_tril": (*shape, latent_dim, latent_dim)}
    for key, shape in shapes.items():
        value = saved["mixture"].get(key)
        if not isinstance(value, torch.Tensor) or value.dtype != torch.float64 or tuple(value.shape) != shape:
            found = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            return None, f"holds a mixture whose {key} is {found}, not float64 of shape {shape}"
        if not value.isfinite().all():
            return None, f"holds a mixture whose {key} is not finite"
    if (saved["mixture"]["weights"] < 0).any() or not (saved["mixture"]["weights"].sum(1) > 0).all():
        return None, "holds a mixture with negative or all-zero weights"
    return saved, None


def fit_gaussian_mixture(
    points: torch.Tensor, components: int, covariance: str, seed: int, max_iterations: int = 200
) -> dict[str, torch.Tensor]:
    """scikit-learn's EM fit, started from `components` distinct points drawn with the seed (the same points and seed
    give the same fit): float64 weights (K,), means (K, D) and Cholesky factors of the covariances (K, D, D)."""
    from sklearn.exceptions import ConvergenceWarning  # here: scikit-learn takes a second to import
    from sklearn.mixture import GaussianMixture

    mixture = GaussianMixture(
        components,
        covariance_type=covariance,
        tol=1e-6,
        reg_covar=1e-6,
        max_iter=max_iterations,
        init_params="random_from_data",
        random_state=seed,
    )
    # EM's matrices are a few thousand by latent_dim: BLAS threads cost more than they share out, about 5x on 2 CPU
    # cores (python -m benchmarks.mixture); the fit is the same to float rounding
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        # tol 1e-6 is set so that EM runs max_iterations: its "did not converge" would print for every digit
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        mixture.fit(points.double().numpy())
    covariances = torch.from_numpy(mixture.covariances_)
    scale_tril = torch.linalg.cholesky(covariances) if covariance == "full" else torch.diag_embed(covariances.sqrt())
    return {
        "weights": torch.from_numpy(mixture.weights_),
        "means": torch.from_numpy(mixture.means_),
        "scale_tril": scale_tril,
    }
