"""The run-dir boundary: a run writes only inside its own run dir, new or holding the run it resumes, locked for one
process; it never replaces what it did not write. Torch-free: Hydra's RunDirCheck calls these at start-up."""

import fcntl
import os
import shutil
import stat
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cvae.errors import ConfigError, RunDirError
from cvae.files import inside
from cvae.trust import leaves

# where Hydra puts a run (conf/paths/default.yaml): another paths.output_dir would bypass the run dir's guard
OUTPUT_DIR = "${hydra:runtime.output_dir}"
# What a run leaves in its dir: a dir holding any of these is an earlier run's, which only a resume may use
RUN_RESULTS = ("metrics.json", "checkpoints")
LOCK_NAME = ".lock"  # held (flock) by the process writing the run dir; the OS releases it when that process ends
# where a run writes, never through a symbolic link: a planted link would send the write to its target
WRITTEN_FOLDERS = (".", ".hydra", "checkpoints")
RESUMABLE_TASKS = ("train",)  # evaluate.py has no resume: its runs never share a dir
# the keys of a config that name where its object writes (ModelCheckpoint, loggers, Trainer): inside the run dir
WRITE_KEYS = ("dirpath", "save_dir", "default_root_dir", "log_dir", "run_dir", "output_dir")


def check_task_writes(cfg: DictConfig, output_dir: str | Path) -> None:
    """Every write destination of the task's resolved config (WRITE_KEYS, at any depth) inside the run dir."""
    for key, value in leaves(OmegaConf.to_container(cfg, resolve=True)):
        if key.rpartition(".")[2] in WRITE_KEYS and isinstance(value, str) and not inside(value, output_dir):
            raise RunDirError(
                f"{key}={value} lies outside this run's dir {output_dir}: a run writes only inside its own dir; "
                f"choose the run's dir with hydra.run.dir=... and leave {key} at its default"
            )


def check_hydra_writes(config: DictConfig, member_dir: Path, sweep: bool = False) -> None:
    """Where Hydra puts the run (paths.output_dir; a sweep's members) and its own files (output_subdir, log files):
    inside the run's dir (a sweep member's: `member_dir` in the sweep dir), resolved as Hydra will resolve them."""
    output_dir = OmegaConf.to_container(config.paths, resolve=False).get("output_dir") if "paths" in config else None
    if output_dir not in (None, OUTPUT_DIR):  # set elsewhere, the run would write past the guard
        raise ConfigError(
            f"paths.output_dir={output_dir} is not allowed: it is where Hydra puts the run; choose the run's dir with "
            f"hydra.run.dir={output_dir} (a sweep's with hydra.sweep.dir=...)"
        )
    member = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")) if sweep else ""
    if Path(member).is_absolute() or ".." in Path(member).parts:  # a member's dir would land on any other dir
        raise ConfigError(
            f"hydra.sweep.subdir={member} is not allowed: a member's dir must lie inside hydra.sweep.dir, e.g. "
            f"hydra.sweep.subdir=${{hydra.job.num}}"
        )
    probe = OmegaConf.create(OmegaConf.to_container(config, resolve=False))  # a copy free of Hydra's read-only flags
    probe.hydra.runtime.output_dir = os.path.abspath(member_dir)
    subdir = probe.hydra.output_subdir
    written = {"hydra.output_subdir": str(member_dir / subdir)} if subdir is not None else {}
    handlers = OmegaConf.select(probe, "hydra.job_logging.handlers", default=None) or {}
    for name in handlers:
        filename = OmegaConf.select(probe, f"hydra.job_logging.handlers.{name}.filename", default=None)
        if filename is not None and str(filename) != os.devnull:  # other ranks log nowhere
            written[f"hydra.job_logging.handlers.{name}.filename"] = str(filename)
    for key, path in written.items():
        if not inside(path, member_dir):
            raise RunDirError(
                f"{key}={path} lies outside the run's dir {member_dir}: Hydra's files of a run stay in its dir; "
                f"leave {key} at its default"
            )


def may_write(config: DictConfig, directory: Path) -> str:
    """May this launch write into `directory`, and how: "new" or "resume"; else RunDirError saying why not."""
    links = planted_links(directory)
    if links:
        raise RunDirError(
            f"hydra.run.dir={directory} holds a symbolic link ({links[0]}) where a run writes; a run never writes "
            f"through one: remove it or choose a new dir"
        )
    if not holds_results(directory):
        # what no launch of ours wrote: a dir with .hydra/ is a failed earlier launch's (a retry or a requeue may use
        # it); any other must be empty
        ours = not directory.is_dir() or (directory / ".hydra").is_dir()
        others = [] if ours else sorted(child.name for child in directory.iterdir() if child.name != LOCK_NAME)
        if not others:
            return "new"
        raise RunDirError(
            f"hydra.run.dir={directory} holds files this launch did not write ({', '.join(others[:3])}); a run "
            f"never writes over them: choose a new dir"
        )
    reason = refusal(config, directory)
    if reason is None:
        return "resume"
    last = directory / "checkpoints" / "last.ckpt"
    resumable = config.get("task_name") in RESUMABLE_TASKS and last.is_file()
    hint = f", or resume that run with ckpt_path={last}" if resumable else ""
    raise RunDirError(
        f"hydra.run.dir={directory} already holds a run ({reason or ', '.join(holds_results(directory))}); "
        f"choose a new dir{hint}"
    )


def may_sweep(config: DictConfig, directory: Path) -> None:
    """A sweep dir holding an earlier sweep, or runs of its own, is not written over; with resume.auto=true the
    same sweep run again may go on there (each member then passes `may_write`)."""
    if directory.is_symlink():
        raise RunDirError(f"hydra.sweep.dir={directory} is a symbolic link; a sweep never writes through one")
    if not directory.is_dir():
        return
    if resume_auto(config) and (directory / "multirun.yaml").is_file():
        # it finishes that sweep, so it must be that sweep: the same task overrides (resume.auto aside) and search
        # space as its multirun.yaml, read as data
        saved, asked = (
            sweep_definition(OmegaConf.to_container(node, resolve=False))
            for node in (OmegaConf.load(directory / "multirun.yaml"), config)
        )
        if saved != asked:
            differ = sorted(set(map(str, saved[0])) ^ set(map(str, asked[0]))) or ["hydra.sweeper.params"]
            raise RunDirError(
                f"hydra.sweep.dir={directory} holds a sweep launched otherwise ({', '.join(differ)} differ); run it "
                f"again with its own overrides (its multirun.yaml) to finish it, or choose a new dir"
            )
    if resume_auto(config):
        return
    if (directory / "multirun.yaml").exists():
        raise RunDirError(f"hydra.sweep.dir={directory} already holds a sweep; choose a new dir")
    runs = sorted(str(child.name) for child in directory.iterdir() if child.is_dir() and holds_results(child))
    if holds_results(directory) or runs:
        held = runs[0] if runs else directory.name
        raise RunDirError(f"hydra.sweep.dir={directory} already holds a run ({held}); choose a new dir")


def sweep_definition(config: dict) -> tuple[list, object]:
    """A sweep's task overrides but resume.auto's, and its sweeper's search space."""
    hydra = config.get("hydra") or {}
    overrides = (hydra.get("overrides") or {}).get("task") or []
    kept = sorted(str(override) for override in overrides if not str(override).lstrip("+~").startswith("resume.auto="))
    return kept, (hydra.get("sweeper") or {}).get("params")


def planted_links(directory: Path) -> list[str]:
    """Symbolic links where a run writes: the run dir, its .hydra/ and checkpoints/."""
    links = []
    for folder in WRITTEN_FOLDERS:
        path = directory / folder
        if path.is_symlink():
            links.append(folder)
        elif path.is_dir():
            links += [str(child.relative_to(directory)) for child in sorted(path.iterdir()) if child.is_symlink()]
    return links


def claim(directory: Path, key: str = "hydra.run.dir") -> int:
    """A lock (flock: SIGKILL leaves none stale) on the run dir until this process ends; a second writer is refused,
    naming the first. Only a plain file of its own is written: never a planted link's or a hard link's target."""
    lock = directory / LOCK_NAME
    try:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        reason = "its .lock is a symbolic link" if lock.is_symlink() else error.strerror
        raise RunDirError(f"{key}={directory} is not writable ({reason}); choose a writable folder") from None
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        os.close(descriptor)
        raise RunDirError(f"{key}={directory} holds a .lock linked to another file; remove it or choose another dir")
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise RunDirError(
            f"{key}={directory} is in use by another run (pid {holder}); wait for it to end or choose another dir"
        ) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    return descriptor


def remove_refused_launch(directory: Path, existed: bool) -> None:
    """A new run dir whose launch was refused before its work (a component's check): removed (emptied, if it existed)
    while it holds only what Hydra wrote (.hydra/, the log) and the lock; a dir holding anything else is left alone."""
    children = list(directory.iterdir()) if directory.is_dir() else []
    if any(child.name not in (".hydra", LOCK_NAME) and child.suffix != ".log" for child in children):
        return
    for child in children:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    if not existed:
        directory.rmdir()


def holds_results(directory: Path) -> list[str]:
    """The results in the dir: metrics.json, a checkpoints folder with a file in it."""
    return [name for name in RUN_RESULTS if (directory / name).is_file() or any((directory / name).glob("*"))]


def refusal(config: DictConfig, directory: Path) -> str | None:
    """None when this launch resumes the run of `directory`; else why not ("" when the results alone say it)."""
    if config.get("task_name") not in RESUMABLE_TASKS or not (config.get("ckpt_path") or resume_auto(config)):
        return ""
    from cvae.run.resume import REFUSE, launch_decision  # torch: only for a launch that asks to resume

    decision = launch_decision(directory, config)
    return decision.reason if decision.action == REFUSE else None


def resume_auto(config: DictConfig) -> bool:  # or a requeued SLURM job, which launch_decision resumes alike
    return bool(OmegaConf.select(config, "resume.auto", default=False) or int(os.getenv("SLURM_RESTART_COUNT") or 0))
