"""Errors that mean "the input was wrong", not "the program is wrong": entry points report them as one line
(what was wrong and how to fix it) with no traceback, unless HYDRA_FULL_ERROR=1 asks for one."""


class UsageError(Exception):
    """Bad input from the user: a config value, a data folder, a checkpoint file, a generation request."""


class ConfigError(UsageError, ValueError):
    pass


class DataError(UsageError, FileNotFoundError):
    pass


class CheckpointError(UsageError, ValueError):
    pass


class StorageError(UsageError, OSError):
    """A result could not be written: a full disk, a read-only or unwritable folder."""


class RunDirError(UsageError, OSError):
    """The run dir holds another run's results, or another process is writing into it."""


class DivergenceError(UsageError, ArithmeticError):
    """The loss became NaN or infinite: a learning rate too high, usually."""


class RankError(UsageError, RuntimeError):
    """A DDP rank died: said in one line, naming the rank and its exit code, since this rank's own traceback
    would show only how the loss of a peer reached it."""
