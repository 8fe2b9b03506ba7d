"""The run-dir boundary (cvae/run/rundir.py, cvae/files.py): a run writes only inside its own run dir and never
replaces what it did not write. Each route points one write destination at another run's dir (or a user's file);
every one is refused in one line and the other run's files stay byte for byte as they were."""

import os

import pytest

from cvae.errors import RunDirError, StorageError
from cvae.files import confined_to, write_json_atomic
from cvae.run.evaluate import evaluate
from cvae.run.train import train
from tests.conftest import QUICK_EVALUATION, QUICK_RUN, compose_config
from tests.test_run_dirs import one_error_line, snapshot
from tests.test_train import run_script


@pytest.fixture
def other_run(tmp_path):
    """Another run's dir, with what a run leaves."""
    run = tmp_path / "other"
    (run / "checkpoints").mkdir(parents=True)
    for name, text in {
        "metrics.json": "{}\n",
        "metrics.csv": "step\n",
        "hparams.yaml": "a: 1\n",
        "train.log": "kept\n",
        "checkpoints/best.ckpt": "weights",
    }.items():
        (run / name).write_text(text)
    return run


# the write destinations of the task's config: listed routes (the checkpoint dir, CSV's save_dir) and others
TASK_ROUTES = {
    "checkpoint_dirpath": lambda other: [f"callbacks.model_checkpoint.dirpath={other}/checkpoints"],
    "csv_save_dir": lambda other: ["logger=[tensorboard,csv]", f"logger.csv.save_dir={other}"],
    "tensorboard_save_dir": lambda other: [f"logger.tensorboard.save_dir={other}"],
    "trainer_root": lambda other: [f"trainer.default_root_dir={other}"],
    "relative_escape": lambda other: [f"callbacks.model_checkpoint.dirpath={os.path.relpath(other)}"],
}


@pytest.mark.parametrize("route", TASK_ROUTES)
def test_no_write_destination_of_the_task_leaves_the_run_dir(route, other_run, tmp_path, data_dir):
    before = snapshot(other_run)
    overrides = [*QUICK_RUN, f"data.data_dir={data_dir}", *TASK_ROUTES[route](other_run)]
    with pytest.raises(RunDirError, match="lies outside this run's dir"):
        train(compose_config("train", overrides, tmp_path / "run"))
    assert snapshot(other_run) == before
    assert not (tmp_path / "run").exists(), "the refused run wrote"


def test_a_link_inside_the_run_dir_does_not_lead_out(other_run, tmp_path, data_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "elsewhere").symlink_to(other_run)
    overrides = [*QUICK_RUN, f"data.data_dir={data_dir}", f"callbacks.model_checkpoint.dirpath={run}/elsewhere"]
    before = snapshot(other_run)
    with pytest.raises(RunDirError, match="lies outside this run's dir"):
        train(compose_config("train", overrides, run))
    assert snapshot(other_run) == before


def test_the_writers_refuse_a_path_outside_the_run_dir_or_through_a_link(other_run, tmp_path):
    """The writers' half, for a destination no config check knows: every result goes through atomic_path."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "link.json").symlink_to(other_run / "metrics.json")
    before = snapshot(other_run)
    with confined_to(run):
        for path in (other_run / "metrics.json", run / ".." / "other" / "new.json", run / "link.json"):
            with pytest.raises(StorageError, match="outside this run's dir"):
                write_json_atomic(path, {"replaced": True})
        write_json_atomic(run / "mine.json", {"mine": True})
    assert snapshot(other_run) == before and (run / "mine.json").is_file()
    write_json_atomic(tmp_path / "outside.json", {})  # not inside a run: a script writes where it likes


# Hydra's own files: refused when the launch starts, before Hydra writes them
HYDRA_ROUTES = {
    "log_file": lambda other: [
        f"hydra.job_logging.handlers.file.filename={other}/train.log",
        "+hydra.job_logging.handlers.file.mode=w",
    ],
    "output_subdir": lambda other: [f"hydra.output_subdir={os.path.relpath(other / '.hydra', other.parent / 'run')}"],
}


@pytest.mark.parametrize("route", HYDRA_ROUTES)
def test_hydra_writes_only_inside_the_run_dir(route, other_run, tmp_path):
    before = snapshot(other_run)
    result = run_script("train.py", *HYDRA_ROUTES[route](other_run), f"hydra.run.dir={tmp_path / 'run'}")
    assert "lies outside the run's dir" in one_error_line(result)
    assert snapshot(other_run) == before and not (tmp_path / "run").exists()


def test_a_sweep_dir_that_is_a_link_is_refused(other_run, tmp_path):
    (tmp_path / "sweep").symlink_to(other_run.parent / "target", target_is_directory=True)
    (other_run.parent / "target").mkdir()
    result = run_script("train.py", "-m", "latent_dim=2,3", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert "is a symbolic link" in one_error_line(result)
    assert not any((other_run.parent / "target").iterdir())


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_a_dir_holding_a_users_files_is_refused_and_left_as_it_was(script, tmp_path, trained_run):
    """evaluate.py into a folder holding the user's samples.png and synthetic/, train.py into one holding their
    metrics.csv: refused before anything is written there."""
    folder = tmp_path / "mine"
    (folder / "synthetic").mkdir(parents=True)
    for name in ("samples.png", "metrics.csv", "synthetic/0.png"):
        (folder / name).write_text("the user's")
    before = snapshot(folder)
    ckpt = trained_run[0] / "checkpoints" / "best.ckpt"
    args = [f"ckpt_path={ckpt}", "export.image_folder=true", "export.per_digit=1"] if script == "evaluate.py" else []
    result = run_script(script, *args, f"hydra.run.dir={folder}")
    assert "holds files this launch did not write" in one_error_line(result)
    assert snapshot(folder) == before


def test_a_hydra_record_that_is_a_file_is_refused(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".hydra").write_text("a file")
    assert "holds files this launch did not write (.hydra)" in one_error_line(
        run_script("train.py", f"hydra.run.dir={folder}")
    )
    assert (folder / ".hydra").read_text() == "a file"


def test_evaluate_writes_nothing_into_another_dir_it_is_pointed_at(trained_run, other_run, tmp_path):
    ckpt = trained_run[0] / "checkpoints" / "best.ckpt"
    before = snapshot(other_run)
    cfg = compose_config("evaluate", [f"ckpt_path={ckpt}", *QUICK_EVALUATION], tmp_path / "evaluation")
    cfg.trainer.default_root_dir = str(other_run)
    with pytest.raises(RunDirError, match="lies outside this run's dir"):
        evaluate(cfg)
    assert snapshot(other_run) == before


def test_a_destination_no_config_check_knows_is_refused_by_the_writer(other_run, tmp_path, data_dir):
    """ModelCheckpoint's `filename` with `../` in it: no write key, so no check before the run names it; the
    checkpoint writer (atomic_path) refuses it when the first checkpoint is saved, and the other run is untouched."""
    before = snapshot(other_run)
    escape = os.path.relpath(other_run / "checkpoints" / "best", tmp_path / "run" / "checkpoints")
    overrides = [*QUICK_RUN, f"data.data_dir={data_dir}", f"callbacks.model_checkpoint.filename={escape}"]
    with pytest.raises(StorageError, match="lies outside this run's dir"):
        train(compose_config("train", overrides, tmp_path / "run"))
    assert snapshot(other_run) == before
