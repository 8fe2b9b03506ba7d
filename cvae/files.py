"""Files the project writes and reads by content: one atomic writer for every result (a reader, or a run killed
halfway, never sees a half-written file under the real name), confined to the run's dir while a run writes (the
writer's half of the run-dir boundary: cvae/run/rundir.py checks the config's half, with one exception: the
machine's cache), and SHA-256 digests."""

import contextlib
import contextvars
import hashlib
import io
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from cvae.errors import StorageError

# the run dir this context's writes are confined to; None: not inside a run (a script, the notebook)
WRITE_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("cvae_write_root", default=None)
# The run-dir rule's one exception: the machine's cache of what is derived from inputs no run owns (the Inception
# features of the MNIST test set), shared by every run. A run reaches it only through save_cache, which writes one
# file named <kind>-<SHA-256 of all it was computed from>.pt holding tensors: it can neither pass for a run's result
# nor replace anything but an older copy of the same thing, and its readers check it (torch.load(weights_only=True)).
CACHE_ENV = "CVAE_CACHE_DIR"
CACHE_NAME = re.compile(r"[a-z0-9_]+-[0-9a-f]{64}\.pt")


@contextlib.contextmanager
def confined_to(root: str | Path) -> Iterator[None]:
    """Writes through atomic_path stay inside `root` for the duration of the block."""
    token = WRITE_ROOT.set(Path(os.path.realpath(root)))
    try:
        yield
    finally:
        WRITE_ROOT.reset(token)


def inside(path: str | Path, directory: str | Path) -> bool:
    """Whether `path` lies in `directory` once every symbolic link and `..` is followed (relative: to the cwd)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(directory))


def may_write(path: Path) -> bool:
    """Anywhere outside a run; inside a run, only inside its dir once every link is followed, never through a link."""
    root = WRITE_ROOT.get()
    return root is None or (not path.is_symlink() and inside(path, root))


@contextlib.contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` (a directory with `directory`), renamed to `path` once the block succeeded.
    Unique per writer (pid, random token); not from tempfile, whose 0600 permissions would follow the data."""
    path = Path(path)
    if not may_write(path):
        raise StorageError(
            f"{path} lies outside this run's dir {WRITE_ROOT.get()} (or is reached through a symbolic link): a run "
            f"writes only inside its own dir; choose it with hydra.run.dir"
        )
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            temporary.mkdir()
        yield temporary
        if directory and path.exists():  # never deleted to make room: it may hold what the run did not write
            raise StorageError(f"{path} already exists; a folder is never written over: move it or choose a new dir")
        os.replace(temporary, path)
    except StorageError:
        raise
    except OSError as error:  # a full disk or an unwritable folder is the user's to fix: one line, nothing left
        raise StorageError(
            f"{path} could not be written ({error.strerror or error}); free space there or choose a writable folder"
        ) from error
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, content: bytes) -> None:
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())


def save_torch_atomic(path: str | Path, data) -> None:
    """torch.save of tensors and plain values, serialised in memory first: torch.save onto a full or read-only disk
    fails with an obscure RuntimeError, a plain write with an OSError that names the cause."""
    import torch  # here: cvae.run.sweep uses this module and stays free of torch

    buffer = io.BytesIO()
    torch.save(data, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def cache_dir(folder: str | Path | None = None) -> Path:
    """The cache folder: `folder` if given, else $CVAE_CACHE_DIR, else ~/.cache/cvae (~ expanded in each)."""
    chosen = folder if folder is not None else os.environ.get(CACHE_ENV) or Path("~", ".cache", "cvae")
    return Path(chosen).expanduser()


def save_cache(folder: str | Path, name: str, tensors: dict) -> Path:
    """torch.save of `tensors` as folder/name, atomically, inside a run too: the cache's exception to the run-dir
    rule (CACHE_ENV above), confined to `folder` as a run is to its dir, never through a symbolic link."""
    if not CACHE_NAME.fullmatch(name):
        raise StorageError(f"{name} is not a cache file's name (<kind>-<sha256>.pt); nothing was written")
    path = Path(folder, name)
    with confined_to(folder):
        save_torch_atomic(path, tensors)
    return path


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Sorted, indented JSON with a final newline: equal data give byte-identical files."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# config keys that hold paths a user types, relative to where the command ran (not to a run dir Hydra may change into)
TYPED_PATH_KEYS = ("ckpt_path", "data.data_dir")


def shown(path: str | Path) -> str:
    """A path as the user would type it: relative to the current dir inside it, absolute outside."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith(os.pardir) else relative
