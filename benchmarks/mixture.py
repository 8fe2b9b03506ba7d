"""How long the ex-post mixture's EM fit of one digit takes with the BLAS library's own thread count and with one
BLAS thread (what cvae/sampling/gmm.py sets), alternated:

    python -m benchmarks.mixture                         # about 1 min on a quiet 2-core CPU
    python -m benchmarks.mixture --latent-dim 32 --components 40 --repeats 5

One digit's share of the training split (5,500 points, correlated Gaussian, float64), sampler=gmm's settings (full
covariances, 200 EM iterations, tol 1e-6). Reported: the median seconds per fit of each path over the repeats, its
min-max, their ratio, and the largest difference between the two fits (float rounding only).
"""

import argparse
import contextlib
import statistics
import time
from unittest import mock

import torch

from cvae.sampling import gmm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if min(args.latent_dim, args.components, args.repeats) < 1:
        parser.error("--latent-dim, --components and --repeats must be positive")
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(args.latent_dim, args.latent_dim, dtype=torch.float64, generator=generator)
    points = torch.randn(5500, args.latent_dim, dtype=torch.float64, generator=generator) @ mixing

    def fit() -> dict[str, torch.Tensor]:
        return gmm.fit_gaussian_mixture(points, args.components, "full", seed=0)

    # the fit before: the BLAS library's own thread count; the fit as it is: one BLAS thread
    paths = {"library threads": lambda **_: contextlib.nullcontext(), "one BLAS thread": gmm.threadpool_limits}
    fit()  # imports and warms up
    seconds, fits = {name: [] for name in paths}, {}
    for _ in range(args.repeats):
        for name, limits in paths.items():
            with mock.patch.object(gmm, "threadpool_limits", limits):
                start = time.perf_counter()
                fits[name] = fit()
                seconds[name].append(time.perf_counter() - start)
    print(f"one digit: 5,500 x {args.latent_dim} points, {args.components} full components, {args.repeats} repeats")
    for name, values in seconds.items():
        print(f"{name:<16} median {statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f})")
    ratio = statistics.median(seconds["library threads"]) / statistics.median(seconds["one BLAS thread"])
    before, after = fits.values()
    difference = max((before[key] - after[key]).abs().max().item() for key in after)
    print(f"one BLAS thread is {ratio:.1f}x faster; largest difference between the fits {difference:.1e}")


if __name__ == "__main__":
    main()
