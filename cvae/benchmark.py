"""How fast does the project train, next to what the hardware allows? One command, one process:

    python -m cvae.benchmark                          # (a), (b), (c) and FID; writes outputs/benchmark.md
    python -m cvae.benchmark --end-to-end             # ... and times `python train.py trainer.max_epochs=5`
    python -m cvae.benchmark --limit 20 --epochs 1    # a quick look on a slice

on the same model (cvae.model.CVAE) and the same 55k training images:

    (a) a plain PyTorch loop over in-memory float tensors (randperm batches, Adam): the floor;
    (b) the project's training through Lightning, built from conf/train.yaml as train.py builds it, with its
        default data path (data.loader=memory);
    (c) the same with the classic torchvision + DataLoader path (data.loader=dataloader).

Each path runs --warmup epochs first (not counted: start-up, allocator, torch.compile) and then --epochs
timed epochs. A training epoch of (b) and (c) is timed from on_train_epoch_start to the start of validation
(or the epoch's end when there is none); validation, checkpoints and image grids are timed separately as the
rest of the epoch. Peak memory is the process's peak resident set during the phase on CPU (reset between
phases through /proc/self/clear_refs) and torch.cuda.max_memory_allocated on a GPU.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cvae.model import CVAE, negative_elbo

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
TARGETS = {"b_over_a": 1.15, "c_over_b": 2.0, "end_to_end": 1.25, "fid_cpu_s": 5.0}
END_TO_END_EPOCHS = 5


# ---------------------------------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """The autocast a Lightning `precision` setting stands for, for the plain loop."""
    if precision.startswith("bf16") and "mixed" in precision:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16") and "mixed" in precision:
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


class PeakMemory:
    """Peak memory of a phase: GPU bytes allocated by torch, or the process's peak resident set on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.bytes, self.kind = device, None, ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # Linux >= 4.0: "5" resets the peak RSS (VmHWM) to the current RSS
                Path("/proc/self/clear_refs").write_text("5")
                self.resettable = True
            except OSError:
                self.resettable = False
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.bytes, self.kind = torch.cuda.max_memory_allocated(self.device), "GPU allocated"
            return
        hwm = read_vm_hwm()
        if hwm is not None and self.resettable:
            self.bytes, self.kind = hwm, "process peak RSS"
        else:
            import resource

            self.bytes, self.kind = (
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "process peak RSS (lifetime)",
            )


def read_vm_hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class Phase:
    """What one path measured."""

    name: str
    label: str
    images_per_epoch: int
    warmup_s: list[float] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)  # timed training epochs
    rest_s: list[float] = field(default_factory=list)  # validation, checkpoints, images: the rest of each epoch
    cpu_s: list[float] = field(default_factory=list)  # process CPU seconds of the timed training epochs
    peak_memory: int | None = None
    memory_kind: str = ""
    final_nelbo: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.epoch_s)

    @property
    def images_per_s(self) -> float:
        return self.images_per_epoch / self.median_s


# -------------------------------------------------------------------------------------------------------- data
def compose_train_config(overrides: list[str], output_dir: str):
    """conf/train.yaml as train.py would get it, with its outputs sent to output_dir."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
        del cfg.hydra
    return cfg


def base_overrides(args) -> list[str]:
    overrides = [f"latent_dim={args.latent_dim}", f"batch_size={args.batch_size}", f"lr={args.lr}", f"seed={args.seed}"]
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    return overrides


def load_splits(args) -> tuple[torch.Tensor, ...]:
    """uint8 images and labels of the training, validation and test splits, as the datamodule splits them."""
    from hydra.utils import instantiate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train_config(base_overrides(args), tmp)
        datamodule = instantiate(cfg.data, loader="memory")
        datamodule.setup()
    return tuple(tensor for split in ("train", "val", "test") for tensor in datamodule.splits[split])


def batches_per_epoch(size: int, batch_size: int, limit: int | None) -> int:
    batches = math.ceil(size / batch_size)
    return min(batches, limit) if limit else batches


def images_in(size: int, batch_size: int, limit: int | None) -> int:
    return min(size, batches_per_epoch(size, batch_size, limit) * batch_size)


# ----------------------------------------------------------------------------------------------- (a) the floor
def plain_loop(images: torch.Tensor, labels: torch.Tensor, args, device: torch.device) -> tuple[Phase, CVAE]:
    """(a): the reference architecture trained by hand on float [0, 1] (N, 784) tensors already on the device."""
    size = len(labels)
    phase = Phase("a", "(a) plain PyTorch loop, in-memory tensors", images_in(size, args.batch_size, args.limit))
    with PeakMemory(device) as memory:
        torch.manual_seed(args.seed)
        x_all = images.to(device).view(size, -1).float().div_(255)
        y_all = labels.to(device)
        model = CVAE(args.latent_dim, args.hidden_dims).to(device)
        if args.compile:
            model.compile()
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        num_batches = batches_per_epoch(size, args.batch_size, args.limit)
        for epoch in range(args.warmup + args.epochs):
            synchronize(device)
            started, cpu_started = time.perf_counter(), time.process_time()
            order = torch.randperm(size, device=device)
            total = torch.zeros((), device=device)
            for batch in order.split(args.batch_size)[:num_batches]:
                with autocast(device, args.precision):
                    loss = negative_elbo(model, x_all[batch], y_all[batch])["nelbo"].mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach()
            synchronize(device)
            if epoch < args.warmup:
                phase.warmup_s.append(time.perf_counter() - started)
            else:
                phase.epoch_s.append(time.perf_counter() - started)
                phase.cpu_s.append(time.process_time() - cpu_started)
            phase.final_nelbo = total.item() / num_batches
        del x_all
    phase.peak_memory, phase.memory_kind = memory.bytes, memory.kind
    return phase, model


@torch.no_grad()
def plain_test_pass(model: CVAE, images: torch.Tensor, labels: torch.Tensor, args, device: torch.device) -> float:
    """Seconds for one pass of the plain model over the test split (as much of it as --limit allows)."""
    model.eval()
    synchronize(device)
    started = time.perf_counter()
    x_all, y_all = images.to(device), labels.to(device)
    num_batches = batches_per_epoch(len(labels), args.eval_batch_size, args.limit)
    total = torch.zeros((), device=device)
    for x, y in list(zip(x_all.split(args.eval_batch_size), y_all.split(args.eval_batch_size)))[:num_batches]:
        with autocast(device, args.precision):
            total += negative_elbo(model, x.view(len(x), -1).float().div_(255), y)["nelbo"].sum()
    total.item()
    synchronize(device)
    model.train()
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------- (b), (c) Lightning
def epoch_timer(device: torch.device):
    import pytorch_lightning as pl

    class EpochTimer(pl.Callback):
        """Per epoch: the training part (epoch start to the start of validation) and the rest of the epoch, in
        wall seconds and in CPU seconds of the process."""

        def __init__(self):
            self.starts, self.train_ends, self.end = [], [], None

        def now(self) -> tuple[float, float]:
            synchronize(device)
            return time.perf_counter(), time.process_time()

        def on_train_epoch_start(self, trainer, pl_module):
            self.starts.append(self.now())
            self.train_ends.append(None)

        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking and self.starts and self.train_ends[-1] is None:
                self.train_ends[-1] = self.now()

        def on_train_epoch_end(self, trainer, pl_module):
            if self.train_ends[-1] is None:
                self.train_ends[-1] = self.now()

        def on_train_end(self, trainer, pl_module):
            self.end = self.now()

        def split(self, clock: int = 0) -> tuple[list[float], list[float]]:
            """(training seconds, rest seconds) per epoch; an epoch ends where the next one starts.
            clock 0: wall time, 1: CPU time of the process."""
            ends = [*self.starts[1:], self.end]
            train = [stop[clock] - start[clock] for start, stop in zip(self.starts, self.train_ends)]
            rest = [end[clock] - stop[clock] for stop, end in zip(self.train_ends, ends)]
            return train, rest

    return EpochTimer()


EPOCH_END_HOOKS = ("on_validation_epoch_end", "on_validation_end", "on_train_epoch_end")


def time_epoch_end_hooks(callbacks: list, device: torch.device) -> dict[str, list[float]]:
    """Wraps each callback's epoch-end hooks to add their wall seconds, per callback class, to the returned dict:
    where the rest of an epoch (beyond validation itself) goes."""
    seconds: dict[str, list[float]] = {}

    def timed(name: str, hook):
        def wrapper(*args, **kwargs):
            synchronize(device)
            started = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                synchronize(device)
                seconds.setdefault(name, []).append(time.perf_counter() - started)

        return wrapper

    for callback in callbacks:
        for hook_name in EPOCH_END_HOOKS:
            if hook_name in type(callback).__dict__:  # a hook the class itself implements
                setattr(callback, hook_name, timed(type(callback).__name__, getattr(callback, hook_name)))
    return seconds


def lightning_run(loader: str, args, device: torch.device) -> Phase:
    """(b) or (c): train.py's objects built from the composed config, fitted for warmup + epochs epochs."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from cvae.utils import instantiate_group

    name = "b" if loader == "memory" else "c"
    label = f"({name}) Lightning, data.loader={loader}" + (" (default)" if loader == "memory" else "")
    overrides = [
        *base_overrides(args),
        f"data.loader={loader}",
        f"trainer.max_epochs={args.warmup + args.epochs}",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"trainer.precision={args.precision}",
    ]
    if args.limit:
        overrides += [f"trainer.limit_{split}_batches={args.limit}" for split in ("train", "val", "test")]
    overrides += args.override
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train_config(overrides, tmp)
        train_size = 60_000 - cfg.data.val_size
        phase = Phase(name, label, images_in(train_size, cfg.data.batch_size, args.limit))
        with PeakMemory(device) as memory:
            pl.seed_everything(cfg.seed, workers=True, verbose=False)
            datamodule = instantiate(cfg.data)
            module = instantiate(cfg.model)
            if args.compile:
                module.model.compile()
            loggers = instantiate_group(cfg.get("logger"))
            trainer = training_trainer(cfg, loggers)
            hook_seconds = time_epoch_end_hooks(trainer.callbacks, device)
            timer = epoch_timer(device)
            trainer.callbacks.append(timer)
            trainer.fit(module, datamodule=datamodule)
        train, rest = timer.split()
        phase.warmup_s, phase.epoch_s = train[: args.warmup], train[args.warmup :]
        phase.rest_s = rest[args.warmup :]
        phase.cpu_s = timer.split(clock=1)[0][args.warmup :]
        phase.peak_memory, phase.memory_kind = memory.bytes, memory.kind
        nelbo = trainer.callback_metrics.get("train/nelbo")
        phase.final_nelbo = None if nelbo is None else float(nelbo)
        running = [type(c).__name__ for c in trainer.callbacks if c is not timer]
        phase.notes.append(
            f"callbacks: {', '.join(running) or 'none'}; loggers: "
            f"{', '.join(type(lg).__name__ for lg in trainer.loggers) or 'none'}"
        )
        if hook_seconds:
            phase.notes.append(
                "epoch-end hooks of callbacks, s over all {} epochs: {}".format(
                    args.warmup + args.epochs, ", ".join(f"{name} {sum(s):.2f}" for name, s in hook_seconds.items())
                )
            )
    return phase


SAFETY_CALLBACKS = ("RandomStateCheckpoint", "StopOnDivergence", "CheckpointOnInterrupt")


def training_trainer(cfg, loggers: list):
    """The trainer train.py fits with: cvae.training.build_trainer(cfg, loggers) where it exists; else, as
    train.py builds it inline, the configured callbacks, train.py's own callbacks and checkpoint plugin."""
    from hydra.utils import instantiate

    from cvae import callbacks, training
    from cvae.utils import instantiate_group

    if hasattr(training, "build_trainer"):
        return training.build_trainer(cfg, loggers)
    found = {name: getattr(training, name, None) or getattr(callbacks, name, None) for name in SAFETY_CALLBACKS}
    extra = [callback_class() for callback_class in found.values() if callback_class is not None]
    plugins = [training.AtomicCheckpointIO()] if hasattr(training, "AtomicCheckpointIO") else None
    return instantiate(
        cfg.trainer,
        callbacks=[*instantiate_group(cfg.get("callbacks")), *extra],
        logger=loggers or False,
        plugins=plugins,
    )


# ------------------------------------------------------------------------------------------------------- FID
def time_fid(
    model: CVAE, real_x: torch.Tensor, real_y: torch.Tensor, args, device: torch.device
) -> tuple[float | None, str]:
    """Seconds for the FID of --fid-samples (10k) class-balanced prior samples with the default (MNIST classifier)
    features, as the per-epoch callback computes it: generate, extract features, compute (the real images' features are
    extracted once per run and are not counted). None and the reason when the project has no FID to time."""
    try:
        from cvae import quality
        from cvae.quality import balanced_labels, conditional_generation_metrics, prior_latents

        decode = getattr(quality, "decode_at", None) or quality.generate
    except (ImportError, AttributeError) as error:
        return None, f"skipped: no FID in this checkout ({error})"
    try:
        metrics = conditional_generation_metrics("mnist", None).to(device)
    except Exception as error:  # e.g. the reference classifier's weights are missing
        return None, f"skipped: FID features unavailable ({type(error).__name__}: {error})"
    model = model.to(device).eval()
    with torch.no_grad():
        for x, y in zip(real_x.to(device).split(2000), real_y.to(device).split(2000)):
            metrics.update(x.view(len(x), -1).float().div_(255), y, real=True)
        synchronize(device)
        started = time.perf_counter()
        labels = balanced_labels(args.fid_samples, device)
        metrics.update(
            decode(model, labels, prior_latents(args.fid_samples, model.latent_dim, args.seed)), labels, real=False
        )
        fid = metrics.compute()["fid"]
        synchronize(device)
    return time.perf_counter() - started, f"FID {fid:.2f} against {len(real_y):,} validation images"


# -------------------------------------------------------------------------------------------- end to end
def end_to_end(args) -> tuple[float, float | None, str]:
    """Wall seconds of `python train.py trainer.max_epochs=5` in a subprocess (its outputs in a temp dir),
    and the fit_seconds it wrote. --device, --precision, --limit, --threads and --override reach it;
    --compile and --matmul-precision do not (train.py has no such settings)."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "train.py", f"trainer.max_epochs={END_TO_END_EPOCHS}", f"hydra.run.dir={tmp}/run"]
        if args.data_dir:
            command.append(f"data.data_dir={args.data_dir}")
        if resolve_device(args.device).type == "cpu" and torch.cuda.is_available():
            command.append("trainer.accelerator=cpu")
        if args.precision != "32-true":
            command.append(f"trainer.precision={args.precision}")
        if args.limit:
            command += [f"trainer.limit_{split}_batches={args.limit}" for split in ("train", "val", "test")]
        command += args.override
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        fit = None
        for name in ("timing.json", "metrics.json"):  # fit_seconds moved from metrics.json to timing.json
            written = Path(tmp) / "run" / name
            if fit is None and written.is_file():
                fit = json.loads(written.read_text()).get("fit_seconds")
    shown = [arg for arg in command[1:] if not arg.startswith(("hydra.run.dir=", "data.data_dir="))]
    return wall, fit, " ".join(["python", *shown])


# ------------------------------------------------------------------------------------------------- report
def machine(device: torch.device) -> dict[str, str]:
    import pytorch_lightning as pl

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "CPU": f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "device": str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})",
        "software": f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"pytorch_lightning {pl.__version__}",
    }
    try:
        info["load average"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        pass
    return info


def fmt_bytes(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def check(value: float, target: float, below: bool) -> str:
    return "yes" if (value <= target if below else value >= target) else "**no**"


def report(phases: dict[str, Phase], extra: dict, info: dict, args) -> str:
    lines = ["# Training speed", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines.append(
        f"- settings: latent_dim {args.latent_dim}, hidden {list(args.hidden_dims)}, batch {args.batch_size}, "
        f"{args.warmup} warm-up + {args.epochs} timed epochs, precision {args.precision}, "
        f"float32 matmul {args.matmul_precision}, compile {args.compile}"
        + (f", {args.threads} torch threads" if args.threads else "")
        + (f", --limit {args.limit} batches" if args.limit else "")
        + (f", overrides {' '.join(args.override)}" if args.override else "")
    )
    lines += [
        "",
        "| path | s / training epoch | epochs (s) | images/s | × (a) | val + callbacks s / epoch | peak memory "
        "| train nelbo |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    floor = phases.get("a")
    for phase in phases.values():
        ratio = f"{phase.median_s / floor.median_s:.2f}" if floor else "n/a"
        rest = f"{statistics.median(phase.rest_s):.2f}" if phase.rest_s else "–"
        nelbo = "n/a" if phase.final_nelbo is None else f"{phase.final_nelbo:.1f}"
        epochs = (
            ", ".join(f"{s:.2f}" for s in phase.epoch_s)
            + " (warm-up "
            + ", ".join(f"{s:.2f}" for s in phase.warmup_s)
            + ")"
        )
        lines.append(
            f"| {phase.label} | {phase.median_s:.2f} | {epochs} | {phase.images_per_s:,.0f} | {ratio} "
            f"| {rest} | {fmt_bytes(phase.peak_memory)} | {nelbo} |"
        )
    lines += ["", "| check | value | target | met |", "| --- | ---: | ---: | :---: |"]
    if "a" in phases and "b" in phases:
        value = phases["b"].median_s / phases["a"].median_s
        cpu = statistics.median(phases["b"].cpu_s) / statistics.median(phases["a"].cpu_s)
        lines.append(
            f"| (b) / (a), time per training epoch | {value:.2f} (process CPU time: {cpu:.2f}) "
            f"| ≤ {TARGETS['b_over_a']} | {check(value, TARGETS['b_over_a'], True)} |"
        )
    if "b" in phases and "c" in phases:
        value = phases["c"].median_s / phases["b"].median_s
        lines.append(
            f"| (b) speed-up over (c) | {value:.2f}× | ≥ {TARGETS['c_over_b']}× "
            f"| {check(value, TARGETS['c_over_b'], False)} |"
        )
    fid_s, fid_note = extra["fid"]
    if fid_s is None:
        lines.append(
            f"| FID on {args.fid_samples:,} samples | {fid_note} | < {TARGETS['fid_cpu_s']} s for 10,000 on CPU | – |"
        )
    else:
        applies = args.fid_samples == 10_000 and resolve_device(args.device).type == "cpu"
        met = check(fid_s, TARGETS["fid_cpu_s"], True) if applies else "–"
        lines.append(
            f"| FID on {args.fid_samples:,} samples | {fid_s:.2f} s ({fid_note}) "
            f"| < {TARGETS['fid_cpu_s']} s for 10,000 on CPU | {met} |"
        )
    if "end_to_end" in extra:
        e2e = extra["end_to_end"]
        value = e2e["wall"] / e2e["reference"]
        lines.append(
            f"| `{e2e['command']}` end to end / ({END_TO_END_EPOCHS} epochs of (a) + a test pass) "
            f"| {e2e['wall']:.1f} s / {e2e['reference']:.1f} s = {value:.2f} | ≤ {TARGETS['end_to_end']} "
            f"| {check(value, TARGETS['end_to_end'], True)} |"
        )
    lines.append("")
    notes = [f"({phase.name}) {note}" for phase in phases.values() for note in phase.notes]
    if "end_to_end" in extra:
        e2e = extra["end_to_end"]
        fit = "n/a" if e2e["fit"] is None else f"{e2e['fit']:.1f} s"
        notes.append(
            f"end to end: fit {fit} of {e2e['wall']:.1f} s wall (the rest: start-up, final validation and "
            f"test of the best checkpoint, files); plain test pass {e2e['test_pass']:.2f} s"
        )
    memory_kinds = sorted({phase.memory_kind for phase in phases.values() if phase.memory_kind})
    notes.append(f"peak memory: {', '.join(memory_kinds)}, per phase")
    notes.append(
        "process CPU time counts every thread of the process; far from the wall time (with one torch "
        "thread), it says the machine was busy with other work"
    )
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cvae.benchmark",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per path (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs before them (default 1)")
    parser.add_argument(
        "--limit", type=int, default=None, help="batches per epoch (and per val/test pass): a quick look"
    )
    parser.add_argument("--out", default=str(ROOT / "outputs" / "benchmark.md"), help="markdown file to write")
    parser.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu, cuda, cuda:1, ...")
    parser.add_argument("--paths", default="abc", help="which of (a), (b), (c) to run, e.g. ab (default abc)")
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help=f"also time `python train.py trainer.max_epochs={END_TO_END_EPOCHS}` in a subprocess",
    )
    parser.add_argument("--fid-samples", type=int, default=10_000, help="generated images of the FID timing")
    parser.add_argument("--latent-dim", type=int, default=2)
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch-size", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", default=os.environ.get("CVAE_DATA_DIR"), help="default: $CVAE_DATA_DIR")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (all paths)")
    parser.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed (all paths)")
    parser.add_argument(
        "--matmul-precision",
        default="highest",
        choices=["highest", "high", "medium"],
        help="torch.set_float32_matmul_precision (high: TF32 on Ampere+ GPUs)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice); also OMP_NUM_THREADS of --end-to-end",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="a Hydra override for (b), (c) and the end-to-end run, e.g. --override callbacks=none",
    )
    args = parser.parse_args(argv)
    if args.hidden_dims != [512, 256]:
        args.override = [f"model.hidden_dims=[{','.join(map(str, args.hidden_dims))}]", *args.override]
    return args


def run(args: argparse.Namespace) -> tuple[dict[str, Phase], dict, str]:
    """Every measurement the arguments ask for: the phases by name, the extras (FID, end to end) and the report."""
    device = resolve_device(args.device)
    torch.set_float32_matmul_precision(args.matmul_precision)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine(device)
    phases: dict[str, Phase] = {}
    extra: dict = {}
    train_x, train_y, val_x, val_y, test_x, test_y = load_splits(args)
    model = CVAE(args.latent_dim, args.hidden_dims)
    if "a" in args.paths or args.end_to_end:
        phases["a"], model = plain_loop(train_x, train_y, args, device)
    if "b" in args.paths:
        phases["b"] = lightning_run("memory", args, device)
    if "c" in args.paths:
        phases["c"] = lightning_run("dataloader", args, device)
    extra["fid"] = time_fid(model, val_x, val_y, args, device)
    if args.end_to_end:
        test_pass = plain_test_pass(model, test_x, test_y, args, device)
        wall, fit, command = end_to_end(args)
        extra["end_to_end"] = {
            "wall": wall,
            "fit": fit,
            "command": command,
            "test_pass": test_pass,
            "reference": END_TO_END_EPOCHS * phases["a"].median_s + test_pass,
        }
    if "a" not in args.paths:
        phases.pop("a", None)
    return phases, extra, report(phases, extra, info, args)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    text = run(args)[2]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return text


if __name__ == "__main__":
    main()
