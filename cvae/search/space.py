"""The search space in Hydra's override grammar (`hydra.sweeper.params` and the command line), as Optuna
distributions: choice and range sweeps are choices (a range of ints an int distribution), an interval a float one,
log-scaled when tagged `log`; anything else is an override every trial gets as it is."""

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer

from cvae.errors import ConfigError


def search_space(params: dict, arguments: list[str]) -> tuple[dict, list[str]]:
    """(name -> Optuna distribution, fixed overrides); a key on the command line replaces its `params` entry."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    parsed = {}
    for override in OverridesParser.create().parse_overrides(lines):
        parsed[override.get_key_element()] = override
    space = {name: distribution(override) for name, override in parsed.items() if override.is_sweep_override()}
    fixed = [override.input_line for override in parsed.values() if not override.is_sweep_override()]
    return space, fixed


def distribution(override: Override):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if override.is_interval_sweep():
        interval = override.value()
        return FloatDistribution(interval.start, interval.end, log="log" in interval.tags)
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if not values:
        raise ConfigError(f"hydra.sweeper.params {override.input_line} holds no value to try")
    steps = {later - earlier for earlier, later in zip(values, values[1:])} if len(values) > 1 else {1}
    if override.is_range_sweep() and all(type(value) is int for value in values) and len(steps) == 1:
        return IntDistribution(min(values), max(values), step=abs(steps.pop()))
    return CategoricalDistribution(values)
