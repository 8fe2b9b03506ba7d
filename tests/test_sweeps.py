"""Sweeps beyond one process at a time: members in parallel (joblib), on SLURM (submitit; here a stand-in sbatch
runs the jobs it is sent), an Optuna search, and the summary table of a sweep, failed members included."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from hydra import compose, initialize_config_dir

from cvae.run.resolvers import register_resolvers
from tests.conftest import CONF_DIR, QUICK_RUN_ANY_CALLBACKS, ROOT
from tests.test_train import run_script

# one short epoch, nothing a sweep test does not look at
TINY_RUN = [
    *QUICK_RUN_ANY_CALLBACKS,
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "callbacks=model_checkpoint",
    "logger=csv",
]

# sbatch for a machine without SLURM: answers as SLURM does, then, in the background, runs each task of the job
# array as SLURM would (its SLURM_* variables, the submitit command of the script) once submitit has moved the
# task's pickled job into place, which it does only after sbatch has answered.
FAKE_SBATCH = """#!{python}
import os, re, subprocess, sys, time
from pathlib import Path

script = Path(sys.argv[-1]).read_text()
first, last = map(int, re.search(r"--array=(\\d+)-(\\d+)", script).groups())
folder = re.search(r"-m submitit.core._submit (\\S+)", script).group(1)
if os.fork():
    print("Submitted batch job 4242")
    sys.exit(0)
log = os.open(Path(sys.argv[-1]).parent / "fake_sbatch.log", os.O_WRONLY | os.O_CREAT)
os.dup2(log, 1)  # sbatch's caller reads until stdout closes: keep none of it open
os.dup2(log, 2)
give_up = time.monotonic() + 600  # the launcher died before moving the jobs: no process left behind
for task in range(first, last + 1):
    job_id = f"4242_{{task}}"
    while not (Path(folder.replace("%j", job_id)) / f"{{job_id}}_submitted.pkl").exists():
        if time.monotonic() > give_up:
            sys.exit(1)
        time.sleep(0.2)
    env = dict(os.environ, SLURM_JOB_ID=str(4243 + task), SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID=str(task),
               SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0", SLURM_PROCID="0", SLURM_LOCALID="0",
               SLURM_JOB_NODELIST="localhost", SUBMITIT_EXECUTOR="slurm")
    subprocess.run([sys.executable, "-u", "-m", "submitit.core._submit", folder], env=env)
"""


def read_summary(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv", newline="") as summary:
        return list(csv.DictReader(summary))


def test_joblib_runs_members_in_parallel_and_the_summary_lists_the_failed_one(tmp_path, data_dir):
    """lr=-1 fails the config check: Hydra then skips its end-of-multirun callbacks, the summary comes anyway."""
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "lr=1e-3,3e-3,-1",
        *TINY_RUN,
        f"data.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: member 2: lr=-1 is not allowed: it must be a finite number > 0",
        f"error: 1 of 3 sweep members failed (2); see {sweep_dir / 'summary.md'}",
    ], result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    rows = read_summary(sweep_dir)
    assert [(row["member"], row["status"]) for row in rows] == [("0", "ok"), ("1", "ok"), ("2", "failed")]
    for row, member in zip(rows[:2], ("0", "1")):
        metrics = json.loads((sweep_dir / member / "metrics.json").read_text())
        assert float(row["test/nelbo"]) == metrics["test/nelbo"], "the exact value"
        assert row["epochs"] == "1" and float(row["wall_seconds"]) > 0
    assert rows[2]["overrides"].startswith("lr=-1 ") and rows[2]["val/nelbo"] == ""
    assert "| 2 | failed | lr=-1 " in result.stdout, "the markdown table is printed"


def test_joblib_workers_never_import_from_the_folder_the_command_was_typed_in(tmp_path, data_dir):
    """A cvae/ planted where the command is typed is imported neither by the launcher nor by its workers, which
    change into their member's dir (hydra.job.chdir=true): they inherit the launcher's sys.path, which has no cwd."""
    typed, marker = tmp_path / "typed", tmp_path / "planted-cvae-imported"
    (typed / "cvae").mkdir(parents=True)
    (typed / "cvae" / "__init__.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    result = run_script(
        str(ROOT / "train.py"),
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.job.chdir=true",
        "latent_dim=2,3",
        *TINY_RUN,
        f"data.data_dir={data_dir}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=typed,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["status"] for row in read_summary(tmp_path / "sweep")] == ["ok", "ok"]
    assert not marker.exists(), "a process imported the planted cvae package"


def two_trial_search(sweep_dir, data_dir: str, search: str, monitor: str, *run: str) -> tuple[dict, list[float]]:
    """A real `hparams_search=<search>` of 2 trials: its optimization_results.yaml and each member's `monitor`."""
    result = run_script(
        "train.py",
        "-m",
        f"hparams_search={search}",
        "hydra.sweeper.n_trials=2",
        *run,
        f"data.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    return found, [json.loads((sweep_dir / trial / "metrics.json").read_text())[monitor] for trial in ("0", "1")]


def test_optuna_search_minimises_val_nelbo(tmp_path, data_dir):
    found, val_nelbos = two_trial_search(tmp_path / "search", data_dir, "optuna", "val/nelbo", *TINY_RUN)
    assert found["best_params"].keys() == {"latent_dim", "batch_size", "lr"}
    assert found["best_value"] == min(val_nelbos), "train.py returns val/nelbo, Optuna keeps the lowest"
    assert [row["status"] for row in read_summary(tmp_path / "search")] == ["ok", "ok"]


def test_quality_search_trains_conv_models_on_a_cosine_schedule_and_minimises_the_mixtures_fid(tmp_path, data_dir):
    """hparams_search=quality (issue 36): each trial a conv model on a cosine schedule, sampled from the mixture,
    its value the member's val/fid; Optuna keeps the lowest. The mixture is cut short here to stay fast."""
    with_quality = [override for override in TINY_RUN if not override.startswith("callbacks=")]
    mixture = ["callbacks.generation_quality.num_samples=1000", "sampler.components=2", "sampler.max_iterations=5"]
    found, fids = two_trial_search(tmp_path / "search", data_dir, "quality", "val/fid", *with_quality, *mixture)
    assert found["best_params"].keys() == {"latent_dim", "model.beta", "model.net.learned_prior", "lr"}
    assert found["best_value"] == min(fids), "train.py returns val/fid, Optuna keeps the lowest"
    for trial in ("0", "1"):
        cfg = yaml.safe_load((tmp_path / "search" / trial / ".hydra" / "config.yaml").read_text())
        assert cfg["model"]["net"]["_target_"] == "cvae.model.conv.Conv"
        assert cfg["model"]["scheduler"]["scheduler"]["_target_"].endswith("CosineAnnealingLR")
        assert cfg["sampler"]["_target_"].endswith("GaussianMixtureSampler")


def slurm_launcher(*overrides: str):
    register_resolvers()  # as Hydra's callbacks do at start-up
    with initialize_config_dir(str(CONF_DIR)):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    return launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes, launcher.cpus_per_task, launcher.mem_gb


def test_slurm_launcher_asks_for_what_the_trainer_uses_and_what_a_small_node_has():
    """No GPU gres unless the trainer trains on GPUs, a task per DDP process, a node per trainer.num_nodes."""
    assert slurm_launcher() == (None, 1, 1, 2, 4)
    assert slurm_launcher("trainer=ddp_cpu", "trainer.num_nodes=2") == (None, 2, 2, 2, 4)
    assert slurm_launcher("trainer=gpu")[:2] == (1, 1)
    assert slurm_launcher("trainer=ddp", "trainer.devices=4")[:2] == (4, 4)
    assert slurm_launcher("trainer=ddp", "trainer.num_nodes=2", "hydra.launcher.gpus_per_node=4")[:3] == (4, 4, 2)
    assert slurm_launcher("hydra.launcher.cpus_per_task=8", "hydra.launcher.mem_gb=32")[3:] == (8, 32)


def test_slurm_launcher_builds_jobs_that_run(tmp_path, data_dir):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable))
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that it exists
    for tool in fake_bin.iterdir():
        tool.chmod(0o755)
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "latent_dim=2,3",
        *TINY_RUN,
        f"data.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
        env_extra={"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sbatch_script = next((sweep_dir / ".submitit").rglob("*_submission.sh")).read_text()
    for line in ("--array=0-1", "--partition=gpu", "--ntasks-per-node=1", "--cpus-per-task=2", "--mem=4GB"):
        assert f"#SBATCH {line}" in sbatch_script
    assert "--gpus-per-node" not in sbatch_script and "--gres" not in sbatch_script
    assert [row["status"] for row in read_summary(sweep_dir)] == ["ok", "ok"]


def devices_of_member(job: int, *overrides: str):
    """trainer.devices that train.py gives the trainer of sweep member `job` (as its Hydra job sees it)."""
    from hydra.core.hydra_config import HydraConfig

    from cvae.run.launch import member_devices

    with initialize_config_dir(str(CONF_DIR)):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    cfg.hydra.job.num = job
    HydraConfig().set_config(cfg)
    return member_devices(cfg.trainer)


def test_parallel_joblib_members_each_train_on_their_own_gpus(monkeypatch):
    """On a machine with 3 GPUs (counted as CUDA would), member k of a joblib sweep is told GPU k mod 3 (a
    2-device member the next two), not cuda:0 as every member was; other launchers, and CPUs, as configured."""
    joblib = "hydra/launcher=joblib"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [devices_of_member(job, joblib) for job in range(4)] == [[0], [1], [2], [0]]
    assert [devices_of_member(job, joblib, "trainer=gpu") for job in range(2)] == [[0], [1]]
    assert devices_of_member(1, joblib, "trainer=ddp", "trainer.devices=2") == [2, 0]
    assert devices_of_member(1, joblib, "trainer=ddp") == -1, "every GPU, as asked"
    assert devices_of_member(1, joblib, "trainer=cpu") == 1
    assert devices_of_member(1) == 1 and devices_of_member(1, "hydra/launcher=slurm") == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert devices_of_member(1, joblib) == 1


def test_summary_command_reads_any_sweep_dir(tmp_path):
    """Columns for the metrics some member has (here FID and label accuracy), failed members (no metrics.json) as
    failed; the CSV holds the exact values, the printed table the figures as every command prints them."""
    finished, failed = tmp_path / "0", tmp_path / "1"
    for member, overrides in ((finished, ["latent_dim=2"]), (failed, ["latent_dim=10"])):
        (member / ".hydra").mkdir(parents=True)
        (member / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (finished / "metrics.json").write_text(
        json.dumps({"val/nelbo": 101.5, "test/nelbo": 100.25, "test/fid": 3.5, "test/label_acc": 0.99391, "epochs": 7})
    )
    (finished / "timing.json").write_text(json.dumps({"fit_seconds": 10.0, "wall_seconds": 12.5}))
    result = subprocess.run(
        [sys.executable, "-m", "cvae.run.sweep", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
    assert read_summary(tmp_path) == [
        {
            "member": "0",
            "status": "ok",
            "overrides": "latent_dim=2",
            "val/nelbo": "101.5",
            "test/nelbo": "100.25",
            "test/fid": "3.5",
            "test/label_acc": "0.99391",
            "epochs": "7",
            "wall_seconds": "12.5",
        },
        {
            "member": "1",
            "status": "failed",
            "overrides": "latent_dim=10",
            "val/nelbo": "",
            "test/nelbo": "",
            "test/fid": "",
            "test/label_acc": "",
            "epochs": "",
            "wall_seconds": "",
        },
    ]
    header = (
        "| member | status | overrides | val/nelbo | test/nelbo | test/fid | test/label_acc | epochs | wall_seconds |"
    )
    assert header in result.stdout
    # printed as docs/results.md writes them (the CSV above keeps every digit, accuracies as fractions)
    assert "| 0 | ok | latent_dim=2 | 101.50 | 100.25 | 3.5 | 99.39 % | 7 | 12.50 |" in result.stdout


def test_summary_lists_every_member_the_sweep_launched_also_one_that_left_no_folder(tmp_path):
    """The jobs come from Hydra's own expansion of the sweep saved in multirun.yaml (its values as Hydra writes them
    into a member's overrides.yaml): a member cancelled before it started (no folder) is listed failed."""
    from cvae.run.sweep import summary_table

    multirun = {
        "hydra": {
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None},
            "overrides": {"task": ["latent_dim=2,4", "lr=1e-3,3e-3", "trainer.max_epochs=1"]},
        }
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    (tmp_path / "1" / ".hydra").mkdir(parents=True)
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["latent_dim=2", "lr=3e-3"]))
    (tmp_path / "1" / "metrics.json").write_text(json.dumps({"val/nelbo": 100.0, "epochs": 1}))
    rows = summary_table(tmp_path)[1]
    assert [(row["member"], row["status"], row["overrides"]) for row in rows] == [
        ("0", "failed", "latent_dim=2 lr=0.001 trainer.max_epochs=1"),
        ("1", "ok", "latent_dim=2 lr=3e-3"),
        ("2", "failed", "latent_dim=4 lr=0.001 trainer.max_epochs=1"),
        ("3", "failed", "latent_dim=4 lr=0.003 trainer.max_epochs=1"),
    ]


def test_summary_plot_draws_each_metric_against_each_swept_knob_a_line_per_other_setting(tmp_path):
    """A 3 x 2 grid (latent_dim x lr) and a failed member: the figure's lines hold exactly the members' metrics."""
    from cvae.run.sweep import summary_figure, summary_table, write_summary

    grid = [(latent_dim, lr) for latent_dim in (20, 2, 10) for lr in ("3e-3", "1e-3")]

    def nelbo(latent_dim: int, lr: str, metric: str) -> float:
        return 100 + latent_dim + 1000 * float(lr) + (metric == "test/nelbo")

    for number, (latent_dim, lr) in enumerate([*grid, (5, "1e-3")]):
        member = tmp_path / str(number)
        (member / ".hydra").mkdir(parents=True)
        overrides = [f"latent_dim={latent_dim}", f"lr={lr}", "trainer.max_epochs=3"]
        (member / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        if number < len(grid):  # the last one failed: not drawn
            metrics = {name: nelbo(latent_dim, lr, name) for name in ("val/nelbo", "test/nelbo")}
            (member / "metrics.json").write_text(json.dumps(metrics))
    figure = summary_figure(summary_table(tmp_path)[1])
    axes = {(ax.get_ylabel(), ax.get_xlabel()): ax for ax in figure.axes}
    assert set(axes) == {(metric, knob) for metric in ("val/nelbo", "test/nelbo") for knob in ("latent_dim", "lr")}
    for metric in ("val/nelbo", "test/nelbo"):
        drawn = {
            line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in axes[metric, "latent_dim"].lines
        }
        assert drawn == {f"lr={lr}": [(d, nelbo(d, lr, metric)) for d in (2, 10, 20)] for lr in ("3e-3", "1e-3")}
        drawn = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in axes[metric, "lr"].lines}
        assert drawn == {
            f"latent_dim={d}": [(float(lr), nelbo(d, lr, metric)) for lr in ("1e-3", "3e-3")] for d in (20, 2, 10)
        }
    write_summary(tmp_path)
    assert (tmp_path / "summary.png").read_bytes().startswith(b"\x89PNG")
    markdown = (tmp_path / "summary.md").read_text()
    assert "](summary.png)" in markdown and "| 6 | failed |" in markdown


def test_a_storage_that_is_no_database_is_one_line(tmp_path):
    sweep_dir = tmp_path / "search"
    sweep_dir.mkdir()
    (sweep_dir / "optuna.db").write_text("not a database")
    result = run_script("train.py", "-m", "hparams_search=optuna", "resume.auto=true", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: hydra.sweeper.storage=sqlite:///"), result.stderr
    assert (sweep_dir / "optuna.db").read_text() == "not a database"


def test_a_crafted_multirun_yaml_is_read_as_data_at_once(tmp_path):
    """Nested interpolations that would expand to 10^9 characters if resolved: the summary reads the file as it is."""
    bombs = {"bomb0": "x" * 10, **{f"bomb{level}": f"${{hydra.bomb{level - 1}}}" * 10 for level in range(1, 10)}}
    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None}
    config = {"hydra": {**bombs, "sweeper": sweeper, "overrides": {"task": ["latent_dim=2,3"]}}}
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "cvae.run.sweep", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert [row["overrides"] for row in read_summary(tmp_path)] == ["latent_dim=2", "latent_dim=3"]
