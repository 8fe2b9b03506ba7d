"""How many MNIST test digits a second the standard Inception (299 x 299) turns into FID features, path by path:

    python -m benchmarks.inception --images 48                       # every path, this machine's thread count
    python -m benchmarks.inception --images 48 --threads 1 2 --batch-sizes 16 50

    plain            the path before issue 36: NCHW weights, torch.no_grad, every image in one batch
    inference_mode   the same under torch.inference_mode
    channels_last    the same with channels-last weights (the activations follow them)
    batch <b>        cvae.metrics.generation.InceptionFeatures as evaluate runs it: both of the above, b images a pass

Each path first runs a few images unmeasured (a warm-up), then --images digits once; the features of every path are
compared with the plain path's (the largest difference is printed). Paths run one after another, so on a shared
machine the figures move with its load: run it twice.
"""

import argparse
import os
import time
from collections.abc import Callable

import torch

from cvae.metrics.generation import InceptionFeatures
from cvae.metrics.inception import standard_inception


def mnist_test_digits(count: int) -> torch.Tensor:
    from torchvision.datasets import MNIST

    data_dir = os.environ.get("CVAE_DATA_DIR", "data")
    return MNIST(data_dir, train=False, download=False).data[:count].reshape(count, -1).float() / 255


def plain_path(network: torch.nn.Module, mode) -> Callable:
    def features(images: torch.Tensor) -> torch.Tensor:
        grey = (images.reshape(-1, 1, 28, 28) * 255).round().to(torch.uint8)
        with mode():
            return network(grey.expand(-1, 3, -1, -1)).clone()

    return features


def paths(resize: str, batch_sizes: list[int]) -> dict[str, Callable]:
    antialias = resize == "antialias"
    plain = standard_inception(antialias=antialias)
    channels_last = standard_inception(antialias=antialias).to(memory_format=torch.channels_last)
    found = {
        "plain": plain_path(plain, torch.no_grad),
        "inference_mode": plain_path(plain, torch.inference_mode),
        "channels_last": plain_path(channels_last, torch.no_grad),
    }
    for size in batch_sizes:
        found[f"batch {size}"] = InceptionFeatures(None, resize, batch_size=size)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48, help="MNIST test digits per path (default 48)")
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 50])
    parser.add_argument("--resize", choices=("tf1", "antialias"), default="tf1")
    args = parser.parse_args()
    if args.images < 1 or min(args.threads) < 1 or min(args.batch_sizes) < 1:
        parser.error("--images, --threads and --batch-sizes must be positive")
    images, warm_up = mnist_test_digits(args.images), mnist_test_digits(4)
    found = paths(args.resize, args.batch_sizes)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, resize {args.resize}, {args.images} images")
    print(f"{'threads':>7}  {'path':<15} {'images/s':>9}  {'max |diff| vs plain':>20}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        reference = None
        for name, features in found.items():
            features(warm_up)
            start = time.perf_counter()
            result = features(images)
            rate = len(images) / (time.perf_counter() - start)
            reference = result if reference is None else reference
            difference = (result - reference).abs().max().item()
            print(f"{threads:>7}  {name:<15} {rate:>9.2f}  {difference:>20.2e}")


if __name__ == "__main__":
    main()
