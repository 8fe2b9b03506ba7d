"""Digits on request, each from its own z: one digit in several styles, or a string of digits. Images are Bernoulli
means in [0, 1] on the CPU, a function of the model and the seed alone."""

import torch

from cvae.model.cvae import Net
from cvae.model.network import IMAGE_SHAPE
from cvae.sampling.prior import Sampler, generate
from cvae.validate import check_count, parse_digit, parse_digits


def digit_variants(
    model: Net, digit: int | str, variants: int = 8, seed: int = 0, sampler: Sampler | None = None
) -> torch.Tensor:
    """`variants` styles of one digit, each from a different z: (variants, 1, 28, 28)."""
    labels = torch.full((check_count(variants, "variants"),), parse_digit(digit))
    return generate(model, labels, seed, sampler).cpu()


def digit_strings(
    model: Net, digits: int | str, variants: int = 4, seed: int = 0, sampler: Sampler | None = None
) -> torch.Tensor:
    """`variants` renderings (rows) of a digit string, every digit with its own z:
    (variants, len(digits), 1, 28, 28)."""
    parsed = torch.tensor(parse_digits(digits))
    labels = parsed.repeat(check_count(variants, "variants"))
    return generate(model, labels, seed, sampler).cpu().view(variants, len(parsed), *IMAGE_SHAPE)
