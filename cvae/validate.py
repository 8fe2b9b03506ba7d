"""Checks of single values, each a one-line ConfigError naming the key, the value and what is allowed. Torch-free:
the entry points run them before anything heavy is imported."""

import math
from pathlib import Path

from cvae.errors import ConfigError


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_choice(value, choices: tuple[str, ...], key: str) -> str:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is unknown; choose one of {', '.join(map(str, choices))}")
    return value


def parse_digits(digits: int | str, key: str = "digits") -> list[int]:
    """The digits of a string such as "20261120", or of an int's decimal digits (Hydra passes digits=20261120)."""
    allowed = f"a non-empty string of the characters 0-9 (quote it on the command line: {key}=\"'007'\")"
    if isinstance(digits, bool) or not isinstance(digits, int | str):
        raise ConfigError(f"{key}={digits!r} is not a digit string; expected {allowed}")
    text = str(digits)
    others = sorted(set(text) - set("0123456789"))
    if not text or others:
        found = f" has {', '.join(map(repr, others))}" if others else " is empty"
        raise ConfigError(f"{key}={digits!r}{found}; expected {allowed}")
    return [int(character) for character in text]


def parse_digit(digit: int | str, key: str = "digit") -> int:
    parsed = parse_digits(digit, key)
    if len(parsed) != 1:
        raise ConfigError(f"{key}={digit!r} is not a single digit; expected one of 0-9")
    return parsed[0]


def check_count(value: int, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r} is not allowed: it must be a whole number >= {minimum}")
    return value


def check_finite(value, key: str, minimum: float = 0.0, above: bool = False) -> float:
    """A finite number >= minimum (> with `above`): inf and nan pass no comparison a run relies on."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < minimum or (above and value == minimum):
        relation = ">" if above else ">="
        raise ConfigError(f"{key}={value!r} is not allowed: it must be a finite number {relation} {minimum:g}")
    return value


def check_flag(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not allowed: it must be true or false")
    return value


def check_folder(value, key: str) -> str:
    """A path that is a folder or can become one (nothing there yet): not a file."""
    if not isinstance(value, str) or not value or Path(value).expanduser().is_file():
        raise ConfigError(f"{key}={value!r} is not allowed: it must be a folder (or null)")
    return value


def check_seed(value, key: str) -> int:
    """numpy's and Lightning's range of seeds."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ConfigError(f"{key}={value!r} is not allowed: it must be an integer in 0..4294967295, e.g. {key}=42")
    return value


# counts allocated at once (samples of an FID, images of a figure or an export): far above the defaults, far below a
# memory error after minutes
MAX_SAMPLES = 1_000_000
MAX_IMAGES = 100_000


def check_at_most(value, key: str, maximum: int, multiple_of: int = 1, minimum: int = 1) -> int:
    check_count(value, key, minimum)
    if value > maximum or value % multiple_of:
        every = f"a multiple of {multiple_of} " if multiple_of > 1 else ""
        raise ConfigError(f"{key}={value!r} is not allowed: it must be {every}from {minimum} up to {maximum:,}")
    return value
