"""Bad input, faults and untrusted files, each triggered for real: the message, the exit status, and that nothing
was lost or left half-written."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from cvae.callbacks.safety import StopOnDivergence
from cvae.errors import CheckpointError, DivergenceError
from cvae.files import write_json_atomic
from cvae.model.checkpoint import AtomicCheckpointIO, load_module
from cvae.run.cli import run_task
from cvae.run.evaluate import evaluate
from cvae.run.train import train
from tests.conftest import QUICK_EVALUATION, QUICK_RUN, QUICK_RUN_ANY_CALLBACKS, ROOT, compose_config
from tests.test_train import run_script


def expect_one_line_exit(capsys, task, cfg) -> str:
    """Runs an entry point's task as train.py / evaluate.py do; returns its one-line error."""
    with pytest.raises(SystemExit) as exit_:
        run_task(task, cfg)
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("latent_dim=0", "latent_dim=0"),
        ("batch_size=-8", "batch_size=-8"),
        ("lr=0", "lr=0"),
        ("lr=-0.001", "lr=-0.001"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0"),
        # checked by the network's own constructor (cvae/model/network.py), before any work
        ("model.net.hidden_dims=[512,0]", "model.net.hidden_dims=[512, 0]"),
        ("model.net.hidden_dims=[]", "model.net.hidden_dims=[]"),
        ("trainer.gradient_clip_val=-1.0", "trainer.gradient_clip_val=-1.0"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0"),
    ],
)
def test_bad_training_values_fail_before_any_work(override, named, tmp_path, capsys, data_dir):
    cfg = compose_config("train", [override, f"data.data_dir={data_dir}"], tmp_path)
    line = expect_one_line_exit(capsys, train, cfg)
    assert named in line and "must be" in line
    assert list(tmp_path.iterdir()) == [], "nothing was written"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("digits=12a", "digits='12a'"),
        ("digit=12", "digit=12"),
        ("samples_per_digit=0", "samples_per_digit=0"),
        ("variants=0", "variants=0"),
        ("export.per_digit=-5", "export.per_digit=-5"),
        ("quality.num_samples=15", "quality.num_samples=15"),
        ("quality.iw_samples=0", "quality.iw_samples=0"),
        # checked by the sampler's own constructor: built before the test pass, fitted after it
        ("sampler.temperature=0", "sampler.temperature=0"),
    ],
)
def test_bad_evaluation_requests_fail_before_any_work(override, named, tmp_path, capsys, trained_run, monkeypatch):
    monkeypatch.setattr(pl.Trainer, "test", lambda *args, **kwargs: pytest.fail("the test pass ran before the check"))
    ckpt = trained_run[0] / "checkpoints" / "best.ckpt"
    cfg = compose_config("evaluate", [f"ckpt_path={ckpt}", override], tmp_path)
    assert named in expect_one_line_exit(capsys, evaluate, cfg)
    assert list(tmp_path.iterdir()) == []


def test_a_launch_a_component_refuses_leaves_no_new_run_dir(tmp_path, data_dir):
    """Hydra writes its record (.hydra/, the log) before the task builds anything: a launch refused then removes the
    new dir it made; a dir holding an earlier launch's record keeps it."""
    new, earlier = tmp_path / "new", tmp_path / "earlier"
    (earlier / ".hydra").mkdir(parents=True)
    (earlier / ".hydra" / "config.yaml").write_text("seed: 1\n")
    for run_dir in (new, earlier):
        result = run_script("train.py", "model.beta=inf", f"data.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: model.beta=inf is not allowed")
    assert not new.exists()
    assert (earlier / ".hydra" / "config.yaml").read_text() == "seed: 1\n"


def test_entry_point_exits_non_zero_with_one_line_and_traceback_only_when_asked(tmp_path):
    quiet = run_script("train.py", "latent_dim=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert quiet.returncode == 1
    assert quiet.stderr.strip().splitlines()[-1].startswith("error: latent_dim=-1 is not allowed")
    assert "Traceback" not in quiet.stderr
    loud = run_script(
        "train.py", "latent_dim=-1", f"hydra.run.dir={tmp_path / 'run'}", env_extra={"HYDRA_FULL_ERROR": "1"}
    )
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "ConfigError" in loud.stderr


def test_evaluate_without_a_checkpoint_says_to_pass_one(tmp_path, capsys):
    cfg = compose_config("evaluate", [], tmp_path)
    line = expect_one_line_exit(capsys, evaluate, cfg)
    assert line == "error: ckpt_path is required: pass ckpt_path=outputs/<date>/<time>/checkpoints/best.ckpt"


def test_a_run_dir_that_cannot_be_created_is_one_line():
    result = run_script("train.py", "hydra.run.dir=/proc/no_such_run")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: hydra.run.dir=/proc/no_such_run cannot be created (No such file or directory); choose a writable folder"
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("no_such_key=1", "Could not override 'no_such_key'"),
        ("trainer=no_such_trainer", "Could not find 'trainer/no_such_trainer'"),
    ],
)
def test_unknown_keys_and_groups_are_named(override, message, tmp_path):
    result = run_script("train.py", override, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_data_names_where_it_looked_and_how_to_fix_it(tmp_path, capsys):
    cfg = compose_config("train", [f"data.data_dir={tmp_path / 'nothing_here'}", "data.download=false"], tmp_path)
    line = expect_one_line_exit(capsys, train, cfg)
    assert str(tmp_path / "nothing_here" / "MNIST" / "raw") in line
    assert "data.data_dir" in line and "CVAE_DATA_DIR" in line


@pytest.fixture
def mnist_copy(tmp_path, data_dir) -> Path:
    """A writable copy of the extracted MNIST files."""
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for source in (Path(data_dir) / "MNIST" / "raw").glob("*-ubyte"):
        (raw / source.name).write_bytes(source.read_bytes())
    return tmp_path / "mnist"


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte"])
def test_damaged_mnist_files_are_named_and_never_trained_on(damage, mnist_copy, tmp_path, capsys):
    images = mnist_copy / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = bytearray(images.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    images.write_bytes(bytes(data))
    output_dir = tmp_path / "run"
    cfg = compose_config("train", [*QUICK_RUN, f"data.data_dir={mnist_copy}", "data.download=false"], output_dir)
    line = expect_one_line_exit(capsys, train, cfg)
    assert "train-images-idx3-ubyte" in line and "checksum" in line
    assert not (output_dir / "checkpoints").exists()


def crafted_pickle(path: Path, proof: Path) -> Path:
    """A file torch.load(weights_only=False) would execute: it creates `proof` when unpickled."""

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {proof}",))

    torch.save({"state_dict": {}, "hyper_parameters": {"latent_dim": 2, "hidden_dims": Exploit()}}, path)
    return path


def bad_checkpoints(tmp_path: Path, good: Path) -> dict[str, Path]:
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:5000])
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("these are not weights\n")
    return {
        "truncated": truncated,
        "not_a_checkpoint": not_a_checkpoint,
        "crafted": crafted_pickle(tmp_path / "crafted.ckpt", tmp_path / "code_ran"),
    }


@pytest.mark.parametrize("kind", ["truncated", "not_a_checkpoint", "crafted"])
def test_bad_checkpoints_are_refused_by_evaluate_and_resume_without_running_code(
    kind, trained_run, tmp_path, capsys, data_dir
):
    ckpt = bad_checkpoints(tmp_path, trained_run[0] / "checkpoints" / "best.ckpt")[kind]
    expected = {
        "truncated": "truncated or corrupted",
        "not_a_checkpoint": "is not a cvae checkpoint",
        "crafted": "never unpickled",
    }[kind]
    evaluation = compose_config("evaluate", [f"ckpt_path={ckpt}", *QUICK_EVALUATION], tmp_path / "evaluate")
    assert expected in expect_one_line_exit(capsys, evaluate, evaluation)
    resume = compose_config("train", [*QUICK_RUN, f"ckpt_path={ckpt}", f"data.data_dir={data_dir}"], tmp_path / "run")
    assert expected in expect_one_line_exit(capsys, train, resume)
    assert not (tmp_path / "code_ran").exists(), "loading a checkpoint ran code from it"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_checkpoint_of_another_model_is_refused(trained_run, tmp_path, capsys, data_dir):
    ckpt = trained_run[0] / "checkpoints" / "last.ckpt"  # latent_dim 3, hidden [512, 256]
    cfg = compose_config(
        "train",
        [*QUICK_RUN, f"ckpt_path={ckpt}", "latent_dim=5", "model.net.hidden_dims=[64]", f"data.data_dir={data_dir}"],
        tmp_path,
    )
    line = expect_one_line_exit(capsys, train, cfg)
    assert "latent_dim=3, hidden_dims=[512, 256]" in line and "latent_dim=5, hidden_dims=[64]" in line
    with pytest.raises(CheckpointError, match="does not match"):
        checkpoint = torch.load(ckpt, weights_only=True)
        other = {**checkpoint["hyper_parameters"], "net": {**checkpoint["hyper_parameters"]["net"], "latent_dim": 5}}
        torch.save({**checkpoint, "hyper_parameters": other}, tmp_path / "x.ckpt")
        load_module(tmp_path / "x.ckpt")


class PoisonWeightsAtEpoch(pl.Callback):
    """Stands in for a divergence: makes the weights NaN at the start of the given epoch."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                pl_module.net.decoder[-1].bias.fill_(float("nan"))


def test_divergence_stops_the_run_keeps_the_last_good_checkpoint_and_says_where(tmp_path, capsys, data_dir):
    cfg = compose_config(
        "train",
        [
            *QUICK_RUN,
            "trainer.max_epochs=3",
            f"data.data_dir={data_dir}",
            "+callbacks.poison._target_=tests.test_failures.PoisonWeightsAtEpoch",
            "+callbacks.poison.epoch=1",
        ],
        tmp_path,
    )
    line = expect_one_line_exit(capsys, train, cfg)
    assert "the loss became nan at epoch 1, step 5" in line and "last good checkpoint" in line
    last = load_module(tmp_path / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in last.parameters()), "last.ckpt holds the good weights"
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("first_bad", [2, 300], ids=["early", "after-a-stacked-block"])
def test_the_divergence_check_reads_nothing_back_from_the_device_per_step(monkeypatch, first_bad):
    """Per step the check only keeps the loss (on a GPU: no host-device sync, not even a kernel); the losses are
    read at epoch end, the first non-finite one named, also past the steps stacked into one tensor."""
    callback = StopOnDivergence()
    trainer = SimpleNamespace(
        global_step=7, current_epoch=2, accumulate_grad_batches=1, checkpoint_callback=None, default_root_dir="x"
    )
    module = SimpleNamespace(device=torch.device("cpu"), parameters=lambda: [torch.zeros(3)])
    callback.on_train_epoch_start(trainer, module)
    for reads_back in ("item", "__bool__", "__int__", "__float__", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, reads_back, lambda *args, **kwargs: pytest.fail("a read back per step"))
    for loss in [1.0] * first_bad + [float("inf"), float("nan"), 3.0]:
        callback.on_train_batch_end(trainer, module, {"loss": torch.tensor(loss)}, None, 0)
    monkeypatch.undo()
    with pytest.raises(DivergenceError, match=f"the loss became inf at epoch 2, step {7 + first_bad};"):
        callback.on_train_epoch_end(trainer, module)


def test_a_real_divergence_exits_non_zero_and_other_sweep_members_complete(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "lr=1e-3,50",
        *QUICK_RUN,
        "trainer.max_epochs=1",
        f"data.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode != 0
    assert "the loss became" in (sweep / "1" / "train.log").read_text()
    assert (sweep / "0" / "metrics.json").is_file() and not (sweep / "1" / "metrics.json").exists()
    summary = (sweep / "summary.csv").read_text().splitlines()
    assert any("lr=50" in row and "failed" in row for row in summary)


class SignalSelfAt(pl.Callback):
    """Sends this process a real signal in the middle of an epoch, as Ctrl-C or a scheduler would: just before
    the optimizer step on batch `batch` of epoch `epoch`, in the middle of that step."""

    def __init__(self, signal_number: int, epoch: int = 1, batch: int = 2):
        self.signal_number, self.epoch, self.batch = signal_number, epoch, batch

    def on_train_start(self, trainer, pl_module):
        if self.signal_number == signal.SIGINT:  # as in a terminal: a background job starts with SIGINT ignored
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start = trainer.global_step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if (trainer.current_epoch, trainer.global_step - self.epoch_start) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signal_number)


def interruptible_run(run_dir: Path, data_dir: str) -> list[str]:
    return [
        "train.py",
        *QUICK_RUN_ANY_CALLBACKS,
        "trainer.max_epochs=3",
        "callbacks=model_checkpoint",
        "logger=csv",
        f"data.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def never_interrupted(tmp_path_factory, data_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("never_interrupted")
    assert run_script(*interruptible_run(run_dir, data_dir)).returncode == 0
    return run_dir


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_leaves_a_checkpoint_that_resumes_to_the_end(stop, tmp_path, data_dir, never_interrupted):
    run_dir = tmp_path / "run"
    args = interruptible_run(run_dir, data_dir)
    interrupted = run_script(
        *args, "+callbacks.stop._target_=tests.test_failures.SignalSelfAt", f"+callbacks.stop.signal_number={int(stop)}"
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    assert interrupted.returncode == 128 + stop, interrupted.stderr[-2000:]  # 130 for Ctrl-C, 143 for SIGTERM
    errors = [line for line in interrupted.stderr.splitlines() if line.startswith("error: ")]
    name = "Ctrl-C (SIGINT)" if stop == signal.SIGINT else "SIGTERM"
    assert errors == [f"error: stopped by {name}; resume with ckpt_path={last}"], interrupted.stderr[-2000:]
    assert interrupted.stderr.strip().splitlines()[-1] == errors[0] and "Traceback" not in interrupted.stderr
    assert "interrupted at epoch 1" in interrupted.stdout + interrupted.stderr
    assert torch.load(last, weights_only=True)["epoch"] == 1, "saved mid-epoch 1, not the end of epoch 0"
    assert not (run_dir / "metrics.json").exists(), "an interrupted run has no final metrics"
    assert not list(run_dir.rglob("*.partial")) and not list(run_dir.rglob(".metrics.json.*"))

    resumed = run_script(*args, f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run_dir / "metrics.json").read_bytes() == (never_interrupted / "metrics.json").read_bytes()


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.json"
    write_json_atomic(metrics, {"test/nelbo": 100.0})
    with pytest.raises(TypeError):
        write_json_atomic(metrics, {"test/nelbo": object()})  # json.dump fails half-way
    assert json.loads(metrics.read_text()) == {"test/nelbo": 100.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

    checkpoint = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, checkpoint)

    def interrupted_save(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2}, checkpoint)
    monkeypatch.undo()
    assert torch.load(checkpoint, weights_only=True) == {"epoch": 1}


def test_evaluating_a_checkpoint_twice_writes_two_dirs(trained_run, tmp_path, data_dir):
    ckpt = trained_run[0] / "checkpoints" / "best.ckpt"
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path)}
    args = [sys.executable, "evaluate.py", f"ckpt_path={ckpt}", f"data.data_dir={data_dir}", *QUICK_EVALUATION]
    launches = [
        subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for launch in launches:
        assert launch.wait(timeout=600) == 0, launch.stderr.read()[-2000:]
    runs = sorted((tmp_path / "outputs" / "evaluate").glob("*/*"))
    assert len(runs) == 2 and all((run / "metrics.json").is_file() for run in runs)


def no_work(cfg):
    pytest.fail("the task started: the check came after the work began")


@pytest.mark.parametrize(
    ("config_name", "overrides", "named"),
    [
        ("train", ["seed=-1"], "error: seed=-1 is not allowed: it must be an integer in 0..4294967295"),
        ("train", ["matmul_precision=foo"], "error: matmul_precision='foo' is unknown; choose one of highest, high"),
        ("train", ["trainer.accelerator=gpux"], "error: trainer.accelerator='gpux' is unknown"),
        ("train", ["trainer.devices=abc"], "error: trainer.devices='abc' is not allowed"),
        ("train", ["trainer.devices=[]"], "error: trainer.devices=[] is not allowed"),
        ("train", [f"ckpt_path={ROOT}"], f"error: ckpt_path={ROOT} is a directory; pass the checkpoint file in it"),
        ("train", ["ckpt_path=no/such.ckpt"], "error: ckpt_path=no/such.ckpt does not exist"),
        ("train", ["resume.allow_changes=maybe"], "error: resume.allow_changes='maybe' is not allowed"),
        ("evaluate", ["quality.features=foo"], "error: quality.features='foo' is unknown"),
        ("evaluate", ["quality.resize=cubic"], "error: quality.resize='cubic' is unknown"),
        ("evaluate", ["quality.labels=random"], "error: quality.labels='random' is unknown"),
        ("evaluate", ["quality.stretch=yes"], "error: quality.stretch='yes' is not allowed"),
        ("evaluate", ["quality.reconstructions=1x"], "error: quality.reconstructions='1x' is not allowed"),
        ("evaluate", ["quality.reference_cache=maybe"], "error: quality.reference_cache='maybe' is not allowed"),
        ("evaluate", [f"quality.cache_dir={ROOT / 'train.py'}"], "error: quality.cache_dir="),
        ("evaluate", ["anomaly.scores_for=missing.pt"], "error: anomaly.scores_for='missing.pt' is neither test"),
        ("evaluate", [f"ckpt_path={ROOT}"], f"error: ckpt_path={ROOT} is a directory"),
    ],
)
def test_every_config_value_is_checked_before_any_work(config_name, overrides, named, tmp_path, capsys):
    if config_name == "evaluate" and not any(override.startswith("ckpt_path=") for override in overrides):
        overrides = [*overrides, f"ckpt_path={ROOT / 'train.py'}"]  # a file: the other value is what fails
    cfg = compose_config(config_name, overrides, tmp_path)
    assert expect_one_line_exit(capsys, no_work, cfg).startswith(named)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_asked_for_without_one_is_one_line(tmp_path, capsys):
    cfg = compose_config("train", ["trainer.accelerator=gpu"], tmp_path)
    line = expect_one_line_exit(capsys, no_work, cfg)
    assert line.startswith(
        "error: trainer.accelerator=gpu but torch sees no CUDA GPU here; use trainer.accelerator=cpu"
    )


def test_a_rejected_value_imports_neither_torch_nor_lightning(tmp_path):
    """What makes a rejection take about a second, not 15: the checks run before those imports."""
    result = run_script("-X", "importtime", "train.py", "seed=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: seed=-1 is not allowed")
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "omegaconf" in imported and not imported & {"torch", "pytorch_lightning", "lightning", "numpy"}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model.eval_seed=-1"], "error: model.eval_seed=-1 is not allowed"),
        (["trainer.precision=17"], "error: pytorch_lightning.Trainer refused its arguments: Precision 17 is invalid"),
        (["sampler=gmm", "sampler.components=0"], "error: sampler.components=0 is not allowed"),
        (["sampler.temperature=0"], "error: sampler.temperature=0 is not allowed"),
        (
            ["callbacks.generation_quality.features=foo"],
            "error: callbacks.generation_quality.features='foo' is unknown",
        ),
        (["model.optimizer.lr=nan"], "error: model.optimizer is not allowed: Invalid learning rate: nan"),
        (["model.net.hidden_dims=[0]"], "error: model.net.hidden_dims=[0] is not allowed"),
        (["model.net.hidden_dims=[2000000000]"], "error: model.net describes a model of about 3.2e+12 parameters"),
        (["trainer.num_nodes=0"], "error: trainer.num_nodes=0 is not allowed"),
        (["callbacks.model_checkpoint.save_top_k=-5"], "ModelCheckpoint refused its arguments: Invalid value for save"),
        (["data.loader=foo"], "error: data.loader='foo' is unknown"),
        (["trainer.devices=-1"], "`devices` selected with `CPUAccelerator` should be an int > 0"),
        (["trainer.devices=[0]"], "`devices` selected with `CPUAccelerator` should be an int > 0"),
        (["net=conv", "model.net.channels=[0,16]"], "error: model.net.channels=[0, 16] is not allowed"),
        (["model.net.hidden_dims=[60000,60000]"], "parameters (29.2 GB), beyond"),
        (["model.beta=inf"], "error: model.beta=inf is not allowed"),
        (["model.free_bits=nan"], "error: model.free_bits=nan is not allowed"),
        (["model.net.learned_prior=maybe"], "must be true or false"),
        (["model.compile=yes"], "error: model.compile='yes' is not allowed"),
        (["callbacks.sample_grids.every_n_epochs=0"], "sample_grids.every_n_epochs=0"),
        (["callbacks.generation_quality.num_samples=15"], "num_samples=15 is not allowed"),
        (["callbacks.generation_quality.reference_cache=maybe"], "generation_quality.reference_cache='maybe' is not"),
        ([f"callbacks.generation_quality.cache_dir={ROOT / 'train.py'}"], "generation_quality.cache_dir="),
    ],
)
def test_each_component_checks_its_own_arguments_before_any_training(overrides, named, tmp_path, capsys, data_dir):
    """What no schema restates: the network, the module, the data, the callbacks, the sampler and Lightning's own
    classes refuse a bad argument when they are built, before training starts: one line, no run dir written."""
    cfg = compose_config("train", [*QUICK_RUN, f"data.data_dir={data_dir}", *overrides], tmp_path / "run")
    assert named in expect_one_line_exit(capsys, train, cfg)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.json"))


def test_ctrl_c_exits_130_and_gives_back_the_signal_handlers(tmp_path, capsys, data_dir):
    """In one process, as a notebook or a caller of run_task would see it: Lightning leaves SIGINT ignored after a
    Ctrl-C; afterwards the handlers are the ones from before."""

    def on_interrupt(signum, frame):
        raise KeyboardInterrupt

    def on_terminate(signum, frame):
        pass

    before = {signal.SIGINT: signal.signal(signal.SIGINT, on_interrupt)}
    before[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_terminate)
    try:
        overrides = [*interruptible_run(tmp_path, data_dir)[1:], "+callbacks.stop.signal_number=2"]
        cfg = compose_config(
            "train", [*overrides, "+callbacks.stop._target_=tests.test_failures.SignalSelfAt"], tmp_path
        )
        with pytest.raises(SystemExit) as exit_:
            run_task(train, cfg)
        assert exit_.value.code == 130
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: stopped by Ctrl-C (SIGINT); resume")
        assert signal.getsignal(signal.SIGINT) is on_interrupt and signal.getsignal(signal.SIGTERM) is on_terminate
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_a_checkpoint_written_before_training_starts_holds_the_restored_streams(trained_run):
    """RankState between a restore and on_train_start (e.g. a checkpoint saved by a callback then): it saves what
    it restored, not a freshly seeded stream."""
    from cvae.callbacks.rank_state import RankState

    saved = torch.load(trained_run[0] / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["RankState"]
    state = RankState(seed=123)
    state.load_state_dict(saved)
    again = state.state_dict()["ranks"]
    assert len(again) == len(saved["ranks"])
    for mine, theirs in zip(again, saved["ranks"]):
        assert torch.equal(mine["random"]["cpu"], theirs["random"]["cpu"])
        assert mine["metrics"].keys() == theirs["metrics"].keys()
