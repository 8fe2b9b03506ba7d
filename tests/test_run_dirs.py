"""A run dir is never overwritten, a resume is of the same run, and a full or read-only disk is one line: each
tried for real, through train.py and evaluate.py as users type them (the run dir guard is a Hydra callback)."""

import contextlib
import fcntl
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from cvae.run.cli import run_task
from cvae.run.train import train
from tests.conftest import QUICK_RUN, QUICK_RUN_ANY_CALLBACKS, compose_config
from tests.test_failures import expect_one_line_exit
from tests.test_train import run_script

# one short epoch with a checkpoint and the CSV logger (small and quick)
ONE_EPOCH = [*QUICK_RUN_ANY_CALLBACKS, "trainer.max_epochs=1", "callbacks=model_checkpoint", "logger=csv"]


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The only `error: ` line of a failed command, which is its last line, with no traceback."""
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-2000:]
    return errors[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file's bytes, but the lock's (it names whichever process holds it, or held it last)."""
    files = (path for path in directory.rglob("*") if path.is_file() and path.name != ".lock")
    return {str(path.relative_to(directory)): path.read_bytes() for path in files}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = run_script("train.py", *ONE_EPOCH, f"data.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def test_a_new_run_or_an_evaluation_into_a_run_dir_is_refused_and_nothing_changes(finished_run, data_dir):
    before = snapshot(finished_run)
    again = run_script("train.py", *ONE_EPOCH, f"data.data_dir={data_dir}", f"hydra.run.dir={finished_run}")
    line = one_error_line(again)
    assert f"hydra.run.dir={finished_run} already holds a run" in line
    assert f"resume that run with ckpt_path={finished_run / 'checkpoints' / 'last.ckpt'}" in line
    evaluation = run_script(
        "evaluate.py", f"ckpt_path={finished_run / 'checkpoints' / 'best.ckpt'}", f"hydra.run.dir={finished_run}"
    )
    assert "already holds a run" in one_error_line(evaluation) and "resume" not in one_error_line(evaluation)
    assert snapshot(finished_run) == before, "nothing in the run dir was written"


def test_a_resume_into_its_own_run_dir_keeps_the_names_and_every_launchs_overrides(finished_run, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    subprocess.run(["cp", "-a", str(finished_run), str(run_dir)], check=True)
    first_overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    last = run_dir / "checkpoints" / "last.ckpt"
    resumed = run_script(
        "train.py", *ONE_EPOCH, "trainer.max_epochs=2", f"ckpt_path={last}", f"data.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(last, weights_only=True)["epoch"] == 1, "last.ckpt is the newest, not a -v1 beside it"
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == first_overrides
    assert f"ckpt_path={last}" in (run_dir / ".hydra" / "launch2" / "overrides.yaml").read_text()
    assert json.loads((run_dir / "resumes.json").read_text()) == {"resumes": [{"ckpt_path": str(last), "changed": {}}]}
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2


def test_a_second_writer_into_a_run_dir_is_refused_by_its_lock(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as lock:  # as the first run's process holds it while it runs
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242\n")
        lock.flush()
        line = one_error_line(run_script("train.py", f"hydra.run.dir={run_dir}"))
    assert line == f"error: hydra.run.dir={run_dir} is in use by another run (pid 4242); wait for it to end or " + (
        "choose another dir"
    )
    assert [path.name for path in run_dir.iterdir()] == [".lock"]


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str):
    """A real tmpfs at `path` (root only): a small one fills up, a read-only one refuses every write."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_an_existing_read_only_run_dir_is_one_line_before_any_work(tmp_path):
    with mounted_tmpfs(tmp_path / "readonly", "ro,size=1m") as run_dir:
        line = one_error_line(run_script("train.py", f"hydra.run.dir={run_dir}"))
    assert line == f"error: hydra.run.dir={run_dir} is not writable (Read-only file system); choose a writable folder"


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, data_dir):
    with mounted_tmpfs(tmp_path / "small", "size=2m") as disk:
        run_dir = disk / "run"
        result = run_script("train.py", *ONE_EPOCH, f"data.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
        line = one_error_line(result)
        left = sorted(path.name for path in run_dir.rglob("*"))
    assert "could not be written (No space left on device)" in line and ".ckpt" in line
    assert not [name for name in left if name.endswith(".tmp")], left
    assert "last.ckpt" not in left and "best.ckpt" not in left and "metrics.json" not in left


def resume_config(trained_run, output_dir: Path, data_dir: str, *overrides: str):
    """A resume of the session's trained run (latent_dim 3, QUICK_RUN), into a dir of its own."""
    last = trained_run[0] / "checkpoints" / "last.ckpt"
    return compose_config(
        "train", [*QUICK_RUN, "latent_dim=3", f"data.data_dir={data_dir}", f"ckpt_path={last}", *overrides], output_dir
    )


def test_a_resume_with_other_training_settings_is_refused_naming_them(trained_run, tmp_path, capsys, data_dir):
    cfg = resume_config(trained_run, tmp_path, data_dir, "seed=7", "batch_size=64", "lr=5e-2")
    line = expect_one_line_exit(capsys, train, cfg)
    assert "is of a run with batch_size=128, " in line and "but this launch asks for batch_size=64, " in line
    for changed in ("seed=7", "lr=0.05", "data.shuffle_seed=7", "model.eval_seed=7"):
        assert changed in line
    assert "resume.allow_changes=true" in line
    assert list(tmp_path.iterdir()) == [], "refused before anything was written"


def test_allowed_changes_are_recorded_and_the_new_lr_is_used(trained_run, tmp_path, data_dir):
    cfg = resume_config(trained_run, tmp_path, data_dir, "lr=5e-2", "resume.allow_changes=true", "trainer.max_epochs=3")
    run_task(train, cfg)
    changed = json.loads((tmp_path / "resumes.json").read_text())["resumes"][0]["changed"]
    assert changed["lr"] == {"checkpoint": 0.001, "now": 0.05}
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == 0.05
    assert saved["callbacks"]["RunRecord"]["settings"]["lr"] == 0.05, "the next resume compares with the change"


def test_settings_that_do_not_change_the_training_may_differ_on_a_resume(trained_run, tmp_path, data_dir):
    from cvae.run.resume import check_resumable

    cfg = resume_config(
        trained_run, tmp_path, data_dir, "trainer.max_epochs=9", "logger=csv", "trainer.enable_progress_bar=true",
        f"data.data_dir={data_dir}/.", "callbacks.generation_quality.num_samples=2000",
    )  # fmt: skip
    assert check_resumable(cfg.ckpt_path, cfg) == {}


def test_every_user_writer_goes_through_the_atomic_writer():
    """No result is written in place: the modules that write run outputs use cvae.files.atomic_path."""
    root = Path(__file__).resolve().parents[1] / "cvae"
    in_place = []
    for path in root.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if ("save_image(" in code or "torch.save(" in code) and "import" not in code:
                if "temporary" in code or "buffer" in code:  # into atomic_path's temporary, or into memory
                    continue
                in_place.append(f"{path.relative_to(root)}:{number}")
    # the reference classifier's training script (a developer tool) writes its weights where it is told
    assert [place for place in in_place if not place.startswith("metrics/classifier.py:")] == []


@pytest.mark.parametrize("directory", [True, False])
def test_an_injected_write_failure_is_one_storage_error_and_no_temporary(tmp_path, monkeypatch, directory):
    from cvae.errors import StorageError
    from cvae.files import atomic_path

    def no_space(*args, **kwargs):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(StorageError, match=r"out could not be written \(No space left on device\)"):
        with atomic_path(tmp_path / "out", directory=directory) as temporary:
            (temporary / "x" if directory else temporary).write_bytes(b"data")
    assert list(tmp_path.iterdir()) == []


def test_a_launch_that_left_no_results_does_not_block_the_dir_and_its_record_is_kept(tmp_path):
    run_dir = tmp_path / "run"
    failed = run_script(
        "train.py", f"data.data_dir={tmp_path / 'no_mnist'}", "data.download=false", f"hydra.run.dir={run_dir}"
    )
    assert "MNIST" in one_error_line(failed) and (run_dir / ".hydra" / "overrides.yaml").is_file()
    first = (run_dir / ".hydra" / "overrides.yaml").read_text()
    refused = run_script("train.py", "latent_dim=-1", f"hydra.run.dir={run_dir}")  # refused before any work
    assert one_error_line(refused).startswith("error: latent_dim=-1 is not allowed")
    assert not (run_dir / ".hydra" / "launch2").exists(), "a launch refused by the checks writes nothing"
    again = run_script(  # e.g. a requeue, or a retry
        "train.py",
        f"data.data_dir={tmp_path / 'no_mnist'}",
        "data.download=false",
        "seed=7",
        f"hydra.run.dir={run_dir}",
    )
    assert "MNIST" in one_error_line(again)
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == first
    assert "seed=7" in (run_dir / ".hydra" / "launch2" / "overrides.yaml").read_text()


def test_a_planted_link_in_a_run_dir_is_refused_and_its_target_never_written(tmp_path):
    """A .lock or a hparams.yaml that is a symbolic link (or a .lock hard-linked to another file): the launch is
    refused in one line and the file it points to keeps its bytes."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name, plant in (
        (".lock", lambda path: path.symlink_to(victim)),
        ("hparams.yaml", lambda path: path.symlink_to(victim)),
        (".lock", lambda path: os.link(victim, path)),
    ):
        run_dir = tmp_path / f"run_{len(list(tmp_path.iterdir()))}"
        run_dir.mkdir()
        plant(run_dir / name)
        line = one_error_line(run_script("train.py", f"hydra.run.dir={run_dir}"))
        assert f"hydra.run.dir={run_dir}" in line and ("link" in line), line
        assert victim.read_text() == "precious\n", f"the {name} planted in the run dir changed its target"
        assert sorted(path.name for path in run_dir.iterdir()) == [name], "nothing else was written"


def test_a_sweep_never_writes_into_an_existing_run_or_sweep(finished_run, tmp_path):
    """A member dir outside the sweep dir, a sweep dir holding runs or an earlier sweep: refused in one line,
    nothing in them changed, no summary written into another's dir."""
    before = snapshot(finished_run)
    outside = run_script(
        "train.py", "-m", "latent_dim=2", f"hydra.sweep.dir={tmp_path / 'runs'}", f"hydra.sweep.subdir={finished_run}"
    )
    assert f"hydra.sweep.subdir={finished_run} is not allowed" in one_error_line(outside)
    holding = run_script("train.py", "-m", "latent_dim=2,3", f"hydra.sweep.dir={finished_run.parent}")
    assert f"hydra.sweep.dir={finished_run.parent} already holds a run (run)" in one_error_line(holding)
    assert snapshot(finished_run) == before
    assert not (finished_run.parent / "summary.csv").exists()
    other = tmp_path / "other_sweep"
    (other / "0" / ".hydra").mkdir(parents=True)
    (other / "multirun.yaml").write_text("hydra: {}\n")  # another sweep, its member 0 still running
    again = run_script("train.py", "-m", "latent_dim=2", f"hydra.sweep.dir={other}")
    assert "already holds a sweep" in one_error_line(again)
    assert sorted(path.name for path in other.rglob("*")) == [".hydra", "0", "multirun.yaml"], "nothing written there"


def test_paths_output_dir_cannot_point_a_run_past_the_guard(finished_run):
    before = snapshot(finished_run)
    line = one_error_line(run_script("train.py", f"paths.output_dir={finished_run}"))
    assert f"paths.output_dir={finished_run} is not allowed" in line and "hydra.run.dir=" in line
    assert snapshot(finished_run) == before


def test_an_existing_read_only_sweep_dir_is_one_line(tmp_path):
    with mounted_tmpfs(tmp_path / "readonly", "ro,size=1m") as sweep_dir:
        line = one_error_line(run_script("train.py", "-m", "latent_dim=2,3", f"hydra.sweep.dir={sweep_dir}"))
    assert (
        line == f"error: hydra.sweep.dir={sweep_dir} is not writable (Read-only file system); choose a writable folder"
    )
