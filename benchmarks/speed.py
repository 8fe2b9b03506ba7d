"""How fast does the project train, next to a plain PyTorch loop? Ratios measured alternately, in one command:

    python -m benchmarks.speed                                   # (a), (b), (c) epoch by epoch, FID; the table
    python -m benchmarks.speed --end-to-end                      # ... and `python train.py trainer.max_epochs=5`
    python -m benchmarks.speed --paths ab --end-to-end-epochs 5 50 --repeats 2   # every target of issue 35
    python -m benchmarks.speed --paths ab --hidden-dims 8        # the near-free model: Lightning's cost alone
    python -m benchmarks.speed --limit 20 --epochs 2             # a quick look on a slice

on the same network (cvae.model.mlp.MLP), the same 55k training images, batch 128 and Adam:

    (a) a plain PyTorch loop over in-memory float tensors: the floor. It trains exactly what (b) trains: the
        same initial weights (seeded like train.py), the same batches (the datamodule's permutation of
        seed + epoch), the same optimizer;
    (b) the project's training through Lightning, built from conf/train.yaml as train.py builds it, with its
        default data path (data.loader=memory);
    (c) the same with the classic torchvision + DataLoader path (data.loader=dataloader).

Paths alternate epoch by epoch in one process, a b a b ...: each Lightning epoch is preceded by one epoch of
(a), so both see the same machine, minute by minute, and each ratio is that of neighbouring epochs. A Lightning
training epoch is timed from on_train_epoch_start to the start of validation, and what Lightning adds per
optimizer step is the difference of neighbouring epochs over their steps; validation, checkpoints and image
grids are the rest of the epoch (to the end of its last hook), timed apart. The end-to-end comparison
alternates whole processes, plain script and `python train.py`, --repeats pairs in A B B A order. Every ratio
comes with its median and spread, and a target is called met only when the whole spread (the interquartile
range from 4 values on, else min to max) is on its side; when the spread straddles it the verdict is
"unclear": run again, quieter or longer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.plain_loop import PlainLoop, batches_per_epoch, clocks, load_mnist, plain_script, resolve_device
from cvae.model.cvae import pixels
from cvae.model.mlp import MLP

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
TRAIN_SIZE = 60_000
# targets of issue 35, printed, not asserted: (b)/(a) per epoch by model (hidden dims: the default, and the near-free
# model that stands for a GPU, where Lightning's cost per step weighs most), Lightning's extra ms per optimizer step,
# FID seconds on CPU, end to end by epochs
TARGETS = {
    "b_over_a": {(512, 256): 1.08, (8,): 1.20},
    "extra_ms_per_step": 1.0,
    "fid_cpu_s": 2.0,
    "end_to_end": {5: 1.15, 50: 1.08},
}


def log(message: str) -> None:
    """Progress on stderr, so a long benchmark shows it is alive; the report goes to stdout."""
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ statistics
@dataclass
class Spread:
    """Median and spread of repeated measurements: the interquartile range from 4 values on, else min to max."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def kind(self) -> str:
        return "IQR" if len(self.values) >= 4 else "range"

    @property
    def low_high(self) -> tuple[float, float]:
        if len(self.values) >= 4:
            q1, _, q3 = statistics.quantiles(self.values, n=4, method="inclusive")
            return q1, q3
        return min(self.values), max(self.values)

    def text(self, digits: int = 2) -> str:
        low, high = self.low_high
        return f"{self.median:.{digits}f} ({self.kind} {low:.{digits}f}–{high:.{digits}f}, n={len(self.values)})"

    def verdict(self, target: float) -> str:
        """Met ("yes") when the whole spread is at or below the target, "**no**" when all of it is above."""
        low, high = self.low_high
        if high <= target:
            return "yes"
        if low > target:
            return "**no**"
        return "unclear: the spread straddles the target"


def images_in(size: int, batch_size: int, limit: int | None) -> int:
    return min(size, batches_per_epoch(size, batch_size, limit) * batch_size)


@dataclass
class Phase:
    """What one path measured; for a Lightning path also the (a) epochs it alternated with."""

    name: str
    label: str
    images_per_epoch: int
    warmup_s: list[float] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)  # timed training epochs, wall seconds
    cpu_s: list[float] = field(default_factory=list)  # the same epochs, process CPU seconds
    rest_s: list[float] = field(default_factory=list)  # validation, checkpoints, images: the rest of each epoch
    floor_s: list[float] = field(default_factory=list)  # the (a) epoch run just before each timed epoch
    floor_cpu_s: list[float] = field(default_factory=list)
    steps_per_epoch: int = 0  # optimizer steps of a training epoch
    final_nelbo: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratios(self) -> Spread:
        return Spread([s / floor for s, floor in zip(self.epoch_s, self.floor_s)])

    @property
    def cpu_ratios(self) -> Spread:
        return Spread([s / floor for s, floor in zip(self.cpu_s, self.floor_cpu_s)])

    @property
    def extra_ms_per_step(self) -> Spread:
        """What Lightning adds to each optimizer step, in ms: (b) - (a) of neighbouring epochs over their steps."""
        return Spread([1000 * (s - floor) / self.steps_per_epoch for s, floor in zip(self.epoch_s, self.floor_s)])


# ----------------------------------------------------------------------------------------------------- data
def compose_train_config(overrides: list[str], output_dir: str):
    """conf/train.yaml as train.py would get it, with its outputs sent to output_dir."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR)):
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


# --------------------------------------------------------------------------------------- (b), (c) Lightning
def epoch_timer(device: torch.device, name: str, floor: PlainLoop | None, timeline: list[str]):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Checkpoint

    class EpochEnd(Checkpoint):
        """Takes the time at the end of an epoch's last hook: a Checkpoint, so Lightning calls its
        on_train_epoch_end with the checkpoint callbacks, after every other one, and after ModelCheckpoint's
        save (it is put after that in the list)."""

        def __init__(self):
            self.ends: list[tuple[float, float]] = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.ends.append(clocks(device))

    class AlternatingEpochTimer(pl.Callback):
        """Per epoch: first one epoch of the plain loop (when given), then the Lightning epoch's training part
        (epoch start to the start of validation) and the rest of the epoch (validation start to the end of the
        epoch's last hook), in wall and CPU seconds."""

        def __init__(self):
            self.floor: list[tuple[float, float]] = []
            self.starts, self.train_ends = [], []
            self.epoch_end = EpochEnd()

        def on_train_epoch_start(self, trainer, pl_module):
            if floor is not None:
                self.floor.append(floor.epoch())
                timeline.append("a")
            self.starts.append(clocks(device))
            self.train_ends.append(None)

        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking and self.starts and self.train_ends[-1] is None:
                self.train_ends[-1] = clocks(device)

        def on_train_epoch_end(self, trainer, pl_module):
            if self.train_ends[-1] is None:  # no validation this epoch
                self.train_ends[-1] = clocks(device)
            timeline.append(name)

        def split(self, clock: int = 0) -> tuple[list[float], list[float]]:
            """(training seconds, rest seconds) per epoch. clock 0: wall time, 1: CPU time of the process."""
            train = [stop[clock] - start[clock] for start, stop in zip(self.starts, self.train_ends)]
            rest = [end[clock] - stop[clock] for stop, end in zip(self.train_ends, self.epoch_end.ends)]
            return train, rest

    return AlternatingEpochTimer()


EPOCH_END_HOOKS = ("on_validation_epoch_end", "on_validation_end", "on_train_epoch_end")


def time_epoch_end_hooks(callbacks: list, device: torch.device) -> dict[str, list[float]]:
    """Wraps each callback's epoch-end hooks to add their wall seconds, per callback class, to the returned dict:
    where the rest of an epoch (beyond validation itself) goes. (By hand: Lightning's SimpleProfiler would time
    these too, but it wraps every hook of every training step as well, adding its own cost to the step being timed.)"""
    seconds: dict[str, list[float]] = {}

    def timed(name: str, hook):
        def wrapper(*args, **kwargs):
            started = clocks(device)[0]
            try:
                return hook(*args, **kwargs)
            finally:
                seconds.setdefault(name, []).append(clocks(device)[0] - started)

        return wrapper

    for callback in callbacks:
        for hook_name in EPOCH_END_HOOKS:
            if hook_name in type(callback).__dict__:  # a hook the class itself implements
                setattr(callback, hook_name, timed(type(callback).__name__, getattr(callback, hook_name)))
    return seconds


def lightning_overrides(loader: str, args, device: torch.device) -> list[str]:
    overrides = [
        *base_overrides(args),
        f"data.loader={loader}",
        f"trainer.max_epochs={args.warmup + args.epochs}",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"trainer.precision={args.precision}",
    ]
    if args.limit:
        overrides += [f"trainer.limit_{split}_batches={args.limit}" for split in ("train", "val", "test")]
        overrides.append(f"trainer.log_every_n_steps={min(args.limit, 50)}")  # Lightning warns of fewer steps
    return overrides + args.override


def lightning_run(loader: str, args, device: torch.device, floor: PlainLoop | None, timeline: list[str]):
    """(b) or (c): train.py's objects built from the composed config, fitted for warmup + epochs epochs, each
    epoch preceded by one epoch of the plain loop `floor`. Returns the phase and the fitted module."""
    import pytorch_lightning as pl

    from cvae.model.checkpoint import build_module
    from cvae.run.train import build_trainer
    from cvae.trust import instantiate, instantiate_group

    name = "b" if loader == "memory" else "c"
    label = f"({name}) Lightning, data.loader={loader}" + (" (default)" if loader == "memory" else "")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train_config(lightning_overrides(loader, args, device), tmp)
        phase = Phase(name, label, images_in(TRAIN_SIZE - cfg.data.val_size, cfg.data.batch_size, args.limit))
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)
        module = build_module(cfg.model)
        if args.compile:
            module.net.compile()
        loggers = instantiate_group(cfg.get("logger"))
        trainer = build_trainer(cfg, loggers)
        hook_seconds = time_epoch_end_hooks(trainer.callbacks, device)
        timer = epoch_timer(device, name, floor, timeline)
        trainer.callbacks += [timer, timer.epoch_end]
        trainer.fit(module, datamodule=datamodule)
    train, rest = timer.split()
    phase.warmup_s, phase.epoch_s, phase.rest_s = train[: args.warmup], train[args.warmup :], rest[args.warmup :]
    phase.cpu_s = timer.split(clock=1)[0][args.warmup :]
    phase.floor_s = [wall for wall, _ in timer.floor[args.warmup :]]
    phase.floor_cpu_s = [cpu for _, cpu in timer.floor[args.warmup :]]
    nelbo = trainer.callback_metrics.get("train/nelbo")
    phase.final_nelbo = None if nelbo is None else float(nelbo)
    phase.steps_per_epoch = trainer.num_training_batches
    running = [type(c).__name__ for c in trainer.callbacks if c not in (timer, timer.epoch_end)]
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
    return phase, module


def floor_phase(floor: PlainLoop, paired: list[Phase], args, timeline: list[str]) -> Phase:
    """(a): the epochs that alternated with (b) and (c), or, when neither ran, epochs of its own."""
    phase = Phase(
        "a", "(a) plain PyTorch loop, in-memory tensors", images_in(len(floor.y), args.batch_size, args.limit)
    )
    if paired:
        phase.epoch_s = [s for lightning in paired for s in lightning.floor_s]
        phase.cpu_s = [s for lightning in paired for s in lightning.floor_cpu_s]
    for epoch in range(0 if paired else args.warmup + args.epochs):
        wall, cpu = floor.epoch()
        timeline.append("a")
        if epoch >= args.warmup:
            phase.epoch_s.append(wall)
            phase.cpu_s.append(cpu)
        else:
            phase.warmup_s.append(wall)
    phase.final_nelbo = floor.nelbo
    return phase


# ------------------------------------------------------------------------------------------------------- FID
def time_fid(
    model: MLP, real_x: torch.Tensor, real_y: torch.Tensor, args, device: torch.device
) -> tuple[Spread | None, str]:
    """Seconds for the FID of --fid-samples (10k) class-balanced prior samples with the default (MNIST classifier)
    features, as the GenerationQuality callback computes it: generate, extract features, compute (the real
    images' features are extracted once per run and are not counted), --fid-repeats times, the first included (a
    run's first FID pays it too). None and the reason when it cannot run."""
    from cvae.metrics.generation import balanced_labels, conditional_generation_metrics
    from cvae.sampling.prior import decode, prior_latents

    try:
        metrics = conditional_generation_metrics("mnist", None).to(device)
    except Exception as error:  # e.g. the reference classifier's weights are missing
        return None, f"skipped: FID features unavailable ({type(error).__name__}: {error})"
    model = model.to(device).eval()
    seconds = []
    with torch.no_grad():
        for x, y in zip(real_x.to(device).split(2000), real_y.to(device).split(2000)):
            metrics.update(pixels(x), y, real=True)
        for _ in range(args.fid_repeats):
            metrics.reset_generated()
            started = clocks(device)[0]
            labels = balanced_labels(args.fid_samples, device)
            z = prior_latents(args.fid_samples, model.latent_dim, args.seed)
            metrics.update(decode(model, labels, z, batch_size=2000), labels, real=False)
            fid = metrics.compute()["fid"]
            seconds.append(clocks(device)[0] - started)
    return Spread(seconds), f"FID {fid:.2f} against {len(real_y):,} validation images"


# ---------------------------------------------------------------------------------------------- end to end
@dataclass
class EndToEnd:
    """Alternated whole processes: the plain script and `python train.py`, `repeats` times each."""

    epochs: int
    command: str
    train_wall_s: list[float] = field(default_factory=list)
    train_fit_s: list[float] = field(default_factory=list)
    plain_wall_s: list[float] = field(default_factory=list)
    plain_inside: list[dict] = field(default_factory=list)

    @property
    def ratios(self) -> Spread:
        return Spread([train / plain for train, plain in zip(self.train_wall_s, self.plain_wall_s)])


def end_to_end_order(repeats: int) -> list[str]:
    """A B B A A B ...: each repeat a pair, its order swapped every other repeat, so a machine that speeds up or
    slows down over the runs favours neither side (with A B A B, a machine getting quieter favours B)."""
    return [side for repeat in range(repeats) for side in (("plain", "train"), ("train", "plain"))[repeat % 2]]


def child_environment(args) -> dict[str, str]:
    env = {**os.environ, "PROJECT_ROOT": str(ROOT)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def run_child(command: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return wall, result


def train_command(epochs: int, args, run_dir: str) -> list[str]:
    """`python train.py trainer.max_epochs=N` as README runs it; --device, --precision, --limit and --override
    reach it; --compile and --matmul-precision do not (train.py has its own settings for them)."""
    command = [sys.executable, "train.py", f"trainer.max_epochs={epochs}", f"hydra.run.dir={run_dir}"]
    if args.data_dir:
        command.append(f"data.data_dir={args.data_dir}")
    if resolve_device(args.device).type == "cpu" and torch.cuda.is_available():
        command.append("trainer.accelerator=cpu")
    if args.precision != "32-true":
        command.append(f"trainer.precision={args.precision}")
    if args.limit:
        command += [f"trainer.limit_{split}_batches={args.limit}" for split in ("train", "val", "test")]
    return command + args.override


def plain_command(epochs: int, args) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.speed", "--plain-script", str(epochs), "--seed", str(args.seed)]
    command += ["--latent-dim", str(args.latent_dim), "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    command += ["--device", args.device, "--precision", args.precision, "--data-dir", args.data_dir]
    command += ["--hidden-dims", *map(str, args.hidden_dims)]
    return command + (["--limit", str(args.limit)] if args.limit else [])


def end_to_end(epochs: int, args) -> EndToEnd:
    env = child_environment(args)
    with tempfile.TemporaryDirectory() as tmp:
        shown = [arg for arg in train_command(epochs, args, tmp)[1:] if not arg.startswith(("hydra.", "data.data_"))]
        result = EndToEnd(epochs, " ".join(["python", *shown]))
        for index, which in enumerate(end_to_end_order(args.repeats)):
            if which == "plain":
                wall, done = run_child(plain_command(epochs, args), env)
                result.plain_wall_s.append(wall)
                result.plain_inside.append(json.loads(done.stdout.strip().splitlines()[-1]))
            else:
                run_dir = Path(tmp) / f"run{index}"
                wall, _ = run_child(train_command(epochs, args, str(run_dir)), env)
                result.train_wall_s.append(wall)
                result.train_fit_s.append(json.loads((run_dir / "timing.json").read_text())["fit_seconds"])
            log(f"end to end, {epochs} epochs: {which} {wall:.1f} s")
    return result


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
        info["load average (1, 5, 15 min) at the start"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        pass
    return info


def seconds_text(values: list[float]) -> str:
    return ", ".join(f"{s:.2f}" for s in values)


def phase_row(phase: Phase) -> str:
    epochs = Spread(phase.epoch_s)
    ratio = phase.ratios.text() if phase.floor_s else "–"
    rest = f"{statistics.median(phase.rest_s):.2f}" if phase.rest_s else "–"
    extra_ms = phase.extra_ms_per_step.text() if phase.floor_s else "–"
    nelbo = "n/a" if phase.final_nelbo is None else f"{phase.final_nelbo:.1f}"
    warmup = f" (warm-up {seconds_text(phase.warmup_s)})" if phase.warmup_s else ""
    return (
        f"| {phase.label} | {epochs.median:.2f} | {seconds_text(phase.epoch_s)}{warmup} "
        f"| {phase.images_per_epoch / epochs.median:,.0f} | {ratio} | {extra_ms} | {rest} | {nelbo} |"
    )


def check_rows(phases: dict[str, Phase], extra: dict, args) -> list[str]:
    rows = ["| check | median (spread) | target | met |", "| --- | --- | ---: | --- |"]
    for name in "bc":
        if name in phases and phases[name].floor_s:
            phase = phases[name]
            target = TARGETS["b_over_a"].get(tuple(args.hidden_dims)) if name == "b" else None
            rows.append(
                f"| ({name}) / (a), time per training epoch | {phase.ratios.text()}; process CPU time "
                f"{phase.cpu_ratios.text()} | {f'≤ {target}' if target else '–'} "
                f"| {phase.ratios.verdict(target) if target else '–'} |"
            )
    if "b" in phases and phases["b"].floor_s:
        extra_ms, target = phases["b"].extra_ms_per_step, TARGETS["extra_ms_per_step"]
        rows.append(
            f"| Lightning's extra ms per optimizer step, (b) - (a) | {extra_ms.text()} | ≤ {target} "
            f"| {extra_ms.verdict(target)} |"
        )
    fid_s, fid_note = extra["fid"]
    applies = args.fid_samples == 10_000 and resolve_device(args.device).type == "cpu" and fid_s is not None
    rows.append(
        f"| FID on {args.fid_samples:,} samples, s | {'–' if fid_s is None else fid_s.text()} ({fid_note}) "
        f"| < {TARGETS['fid_cpu_s']} s for 10,000 on CPU | {fid_s.verdict(TARGETS['fid_cpu_s']) if applies else '–'} |"
    )
    for e2e in extra.get("end_to_end", []):
        target = None if args.limit else TARGETS["end_to_end"].get(e2e.epochs)
        rows.append(
            f"| `{e2e.command}` / plain script ({e2e.epochs} epochs, a test pass after each), end to end "
            f"| {e2e.ratios.text()} | {f'≤ {target}' if target else '–'} "
            f"| {e2e.ratios.verdict(target) if target else '–'} |"
        )
    return rows


def end_to_end_notes(e2e: EndToEnd) -> list[str]:
    inside = e2e.plain_inside
    plain_train = statistics.median(run["train_s"] for run in inside)
    plain_test = statistics.median(run["test_s"] for run in inside)
    plain_wall, train_wall = statistics.median(e2e.plain_wall_s), statistics.median(e2e.train_wall_s)
    fit = statistics.median(e2e.train_fit_s)
    return [
        f"end to end, {e2e.epochs} epochs, medians: plain script {plain_wall:.1f} s wall "
        f"({seconds_text(e2e.plain_wall_s)}): {plain_train:.1f} s training, {plain_test:.1f} s test passes, "
        f"{plain_wall - plain_train - plain_test:.1f} s start-up (interpreter, imports, MNIST); "
        f"`{e2e.command}` {train_wall:.1f} s wall ({seconds_text(e2e.train_wall_s)}): fit {fit:.1f} s, "
        f"{train_wall - fit:.1f} s start-up, final validation and test of the best checkpoint, files",
    ]


def report(phases: dict[str, Phase], extra: dict, info: dict, args) -> str:
    lines = ["# Training speed", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines.append(
        f"- settings: latent_dim {args.latent_dim}, hidden {list(args.hidden_dims)}, batch {args.batch_size}, "
        f"{args.warmup} warm-up + {args.epochs} timed epochs per path, precision {args.precision}, "
        f"float32 matmul {args.matmul_precision}, compile {args.compile}"
        + (f", {args.threads} torch threads" if args.threads else "")
        + (f", --limit {args.limit} batches" if args.limit else "")
        + (f", overrides {' '.join(args.override)}" if args.override else "")
        + (f", end to end {args.repeats}× alternated" if extra.get("end_to_end") else "")
    )
    if phases:
        lines += [
            "",
            "| path | s / training epoch (median) | epochs (s) | images/s | × (a), epoch by epoch | "
            "Lightning's extra ms / optimizer step | val + callbacks s / epoch | train nelbo |",
            "| --- | ---: | --- | ---: | --- | --- | ---: | ---: |",
        ]
        lines += [phase_row(phase) for phase in phases.values()]
    lines += ["", *check_rows(phases, extra, args), ""]
    notes = [f"({phase.name}) {note}" for phase in phases.values() for note in phase.notes]
    for e2e in extra.get("end_to_end", []):
        notes += end_to_end_notes(e2e)
    notes += [
        "× (a): each timed Lightning epoch over the (a) epoch run just before it, in the same process; "
        "spread: IQR from 4 values on, else min–max; 'unclear' when the spread straddles the target",
        "Lightning's extra ms / optimizer step: the same neighbouring epochs, (b) - (a) over the epoch's optimizer "
        "steps; val + callbacks: from the start of validation to the end of the epoch's last hook "
        "(checkpoints, images, FID)",
        "process CPU time counts every thread of the process; far from the wall time (with one torch thread), "
        "it says the machine was busy with other work",
    ]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per path (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs before them (default 1)")
    parser.add_argument(
        "--limit", type=int, default=None, help="batches per epoch (and per val/test pass): a quick look"
    )
    parser.add_argument("--out", default=str(ROOT / "outputs" / "benchmark.md"), help="markdown file to write")
    parser.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--paths", default="abc", help="which of (a), (b), (c) to run, e.g. ab; '' for none (default abc)"
    )
    parser.add_argument(
        "--end-to-end", action="store_true", help="also compare `python train.py trainer.max_epochs=5` end to end"
    )
    parser.add_argument(
        "--end-to-end-epochs",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="compare `python train.py trainer.max_epochs=N` with the plain script for each N, e.g. 5 50",
    )
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs of each end-to-end side (default 2)")
    parser.add_argument("--fid-samples", type=int, default=10_000, help="generated images of the FID timing")
    parser.add_argument("--fid-repeats", type=int, default=5, help="FID timings, each of --fid-samples (default 5)")
    parser.add_argument("--latent-dim", type=int, default=2)
    parser.add_argument("--hidden-dims", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch-size", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", default=os.environ.get("CVAE_DATA_DIR"), help="default: $CVAE_DATA_DIR")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (in-process paths)")
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
        help="torch intra-op threads (default: torch's choice); also OMP_NUM_THREADS of the end-to-end processes",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="a Hydra override for (b), (c) and the end-to-end train.py, e.g. --override callbacks=none",
    )
    parser.add_argument("--plain-script", type=int, default=None, metavar="EPOCHS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.end_to_end and 5 not in args.end_to_end_epochs:
        args.end_to_end_epochs.insert(0, 5)
    if args.hidden_dims != [512, 256]:
        args.override = [f"model.net.hidden_dims=[{','.join(map(str, args.hidden_dims))}]", *args.override]
    if args.data_dir is None:
        parser.error("no MNIST folder: pass --data-dir PATH or set CVAE_DATA_DIR (a folder holding MNIST/raw/)")
    return args


def run(args: argparse.Namespace) -> tuple[dict[str, Phase], dict, str]:
    """Every measurement the arguments ask for: the phases by name, the extras (FID, end to end, the order the
    epochs ran in, the trained models by path) and the report."""
    from cvae.run.console import silence_library_noise

    silence_library_noise()  # as train.py: no tip or deprecation; and Lightning's INFO lines (device counts, the
    for library in ("pytorch_lightning", "lightning_fabric"):  # model summary), which train.py keeps in its log
        logging.getLogger(library).setLevel(logging.WARNING)
    device = resolve_device(args.device)
    torch.set_float32_matmul_precision(args.matmul_precision)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine(device)
    splits = load_mnist(args.data_dir)
    phases: dict[str, Phase] = {}
    extra: dict = {"timeline": []}
    floor = PlainLoop(*splits["train"], args, device) if "a" in args.paths else None
    fitted = {}
    for name, loader in (("b", "memory"), ("c", "dataloader")):
        if name in args.paths:
            log(f"({name}) alternating with (a), {args.warmup} + {args.epochs} epochs")
            phases[name], fitted[name] = lightning_run(loader, args, device, floor, extra["timeline"])
    if floor is not None:
        phases = {"a": floor_phase(floor, list(phases.values()), args, extra["timeline"]), **phases}
    extra["models"] = {name: module.net for name, module in fitted.items()}
    if floor is not None:
        extra["models"]["a"] = floor.model
    model = extra["models"].get("a") or extra["models"].get("b") or MLP(args.latent_dim, args.hidden_dims)
    log("FID timing")
    extra["fid"] = time_fid(model, *splits["val"], args, device)
    extra["end_to_end"] = [end_to_end(epochs, args) for epochs in args.end_to_end_epochs]
    return phases, extra, report(phases, extra, info, args)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.plain_script is not None:
        if args.threads:
            torch.set_num_threads(args.threads)
        text = json.dumps(plain_script(args))
        print(text)
        return text
    text = run(args)[2]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return text


if __name__ == "__main__":
    main()
