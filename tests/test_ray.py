"""Sweeps on a real Ray cluster (hydra/launcher=ray): `ray start --head` on 127.0.0.1, started for this module and
stopped after it however the tests end. Each member runs as a Ray task in a worker of that cluster, with the
launcher's environment and never importing from the folder the command was typed in: its metrics are the basic
launcher's, a failed member is listed failed, and a sweep whose launcher was SIGKILLed finishes when run again."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir

from cvae.run.resolvers import register_resolvers
from tests.conftest import CONF_DIR, ROOT
from tests.test_resume_sweeps import SWEEP_RUN, files_of
from tests.test_sweeps import TINY_RUN, read_summary
from tests.test_train import run_script

pytestmark = pytest.mark.ray
pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra/launcher=ray needs the ray extra (.[ray])")
# Ray gives a member as many threads as it has CPUs (OMP_NUM_THREADS=1 here) unless the launcher's environment sets
# them: set, the same as the basic launcher's, float sums come out the same
SAME_THREADS = {"OMP_NUM_THREADS": "1"}


def ray_resources(*overrides: str) -> tuple:
    register_resolvers()  # as Hydra's callbacks do at start-up
    with initialize_config_dir(str(CONF_DIR)):
        cfg = compose("train", overrides=["hydra/launcher=ray", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher.ray.remote.num_gpus, cfg.hydra.launcher.ray.remote.num_cpus


def test_ray_members_ask_for_what_the_trainer_uses():
    """No GPU unless the trainer trains on GPUs, as many as it uses, and a CPU per device (per DDP process)."""
    assert ray_resources() == (None, 1)
    assert ray_resources("trainer=gpu") == (1, 1)
    assert ray_resources("trainer=ddp", "trainer.devices=4") == (4, 4)
    assert ray_resources("trainer=ddp_cpu") == (None, 2)
    assert ray_resources("hydra.launcher.ray.remote.num_cpus=8") == (None, 8)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_address():
    """A one-node cluster with 2 CPUs, every port its own (other clusters may run on this machine) and a token of its
    own (Ray's token authentication: the cluster and every command of this module get it in RAY_AUTH_TOKEN), started
    without the project's variables: a member has only what the launcher gives it. `ray start --block` stops the
    processes it started when it gets SIGTERM (`ray stop` would stop every Ray cluster of this user)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's sockets lie in it
    port, client, dashboard, agent = (free_port() for _ in range(4))
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1"]
    command += [f"--port={port}", f"--ray-client-server-port={client}", f"--dashboard-port={dashboard}"]
    command += [f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp_dir}", "--num-cpus=2"]
    command += ["--include-dashboard=false", "--disable-usage-stats"]
    log = temp_dir / "ray-start.log"
    with pytest.MonkeyPatch.context() as environment:
        # explicit: Ray turns token authentication on for `ray start` where ~/.ray/auth_token exists, but not for a
        # command naming the cluster's address
        environment.setenv("RAY_AUTH_MODE", "token")
        environment.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        clean = {name: value for name, value in os.environ.items() if not name.startswith(("CVAE_", "PYTHONPATH"))}
        with open(log, "w") as output:
            cluster = subprocess.Popen(command, env=clean, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "Ray runtime started" not in log.read_text():
                assert cluster.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            yield f"127.0.0.1:{port}"
        finally:
            cluster.terminate()
            cluster.wait(timeout=120)
            shutil.rmtree(temp_dir, ignore_errors=True)


def ray_sweep(address: str, *overrides: str) -> list[str]:
    return ["-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={address}", *overrides]


class RecordEnvironment(pl.Callback):
    """Writes the environment variables the member trains with to variables.json in its run dir."""

    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)

    def on_fit_start(self, trainer, pl_module) -> None:
        (self.run_dir / "variables.json").write_text(json.dumps(dict(os.environ)))


def test_a_ray_sweep_gives_the_basic_launchers_metrics_in_the_launchers_environment(tmp_path, data_dir, ray_address):
    """latent_dim=2,3 typed in a folder holding a cvae/ of its own: on Ray, each member's metrics.json is the basic
    launcher's byte for byte, its environment the launcher's (PYTHONPATH the checkout's), the planted cvae/ never
    imported (Ray would put that folder first on the workers' sys.path)."""
    typed, marker = tmp_path / "typed", tmp_path / "planted-cvae-imported"
    (typed / "cvae").mkdir(parents=True)
    (typed / "cvae" / "__init__.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    sweep = ["latent_dim=2,3", *TINY_RUN, f"data.data_dir={data_dir}"]
    sweep += ["+callbacks.environment._target_=tests.test_ray.RecordEnvironment"]
    sweep += ["+callbacks.environment.run_dir=${paths.output_dir}"]
    basic, on_ray = tmp_path / "basic", tmp_path / "ray"
    result = run_script("train.py", "-m", *sweep, f"hydra.sweep.dir={basic}", env_extra=SAME_THREADS)
    assert result.returncode == 0, result.stderr[-3000:]
    command = [str(ROOT / "train.py"), *ray_sweep(ray_address, *sweep, f"hydra.sweep.dir={on_ray}")]
    result = run_script(*command, cwd=typed, env_extra=SAME_THREADS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Ray Launcher is launching 2 jobs" in result.stdout + result.stderr
    assert [row["status"] for row in read_summary(on_ray)] == ["ok", "ok"]
    assert not marker.exists(), "a process imported the planted cvae package"
    for member in ("0", "1"):
        assert (on_ray / member / "metrics.json").read_bytes() == (basic / member / "metrics.json").read_bytes()
        launcher = json.loads((basic / member / "variables.json").read_text())  # the basic launcher's own
        worker = json.loads((on_ray / member / "variables.json").read_text())
        assert worker["CVAE_TRUSTED_TARGETS"] == "tests.*", "the cluster was started without it"
        changed = {name for name, value in launcher.items() if worker.get(name) != value and name[:4] != "RAY_"}
        # PWD, OLDPWD, _, PS1 and SHLVL: set by the shell that starts the worker in its (empty) working dir
        assert changed <= {"PYTHONPATH", "PWD", "OLDPWD", "_", "PS1", "SHLVL"}, changed
        assert str(ROOT) in worker["PYTHONPATH"].split(os.pathsep) and str(typed) not in worker["PYTHONPATH"]


def test_a_failed_ray_member_is_listed_failed_and_the_sweep_exits_1(tmp_path, data_dir, ray_address):
    """lr=-1 fails the member's config check in its Ray worker: the others finish, the summary lists it failed, and
    the command says so in one line. The member's own line comes through Ray's log, tagged with its worker
    (`(_run_job pid=...) error: member 1: ...`) and whenever Ray forwards it: its log holds it."""
    sweep_dir = tmp_path / "sweep"
    sweep = ray_sweep(ray_address, "lr=1e-3,-1", *TINY_RUN, f"data.data_dir={data_dir}", f"hydra.sweep.dir={sweep_dir}")
    result = run_script("train.py", *sweep)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: 1 of 2 sweep members failed (1); see {sweep_dir / 'summary.md'}"], result.stderr[-3000:]
    assert [(row["member"], row["status"]) for row in read_summary(sweep_dir)] == [("0", "ok"), ("1", "failed")]
    assert "lr=-1 is not allowed: it must be a finite number > 0" in (sweep_dir / "1" / "train.log").read_text()


class HoldAt(pl.Callback):
    """Where CVAE_TEST_KILL=<run dir name>:<step> asks (as tests.test_resume_sweeps.KillAt), writes this Ray worker's
    pid to held.pid in the sweep dir and waits there: the test SIGKILLs the launcher meanwhile."""

    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        name, _, step = os.environ.get("CVAE_TEST_KILL", "").partition(":")
        if name == self.run_dir.name and trainer.global_step == int(step):
            (self.run_dir.parent / "held.pid").write_text(str(os.getpid()))
            time.sleep(600)


def wait_for(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.2)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_ray_sweep_whose_launcher_was_killed_finishes_when_run_again(tmp_path, data_dir, ray_address):
    """latent_dim=2,3 with resume.auto=true: the launcher (Ray's driver) SIGKILLed once member 0 has finished and
    member 1 is in its second epoch. Ray ends the dead driver's task (no worker goes on writing into member 1's dir);
    the same command again keeps member 0 as it was and resumes member 1 from its last.ckpt to a metrics.json
    byte-identical to a sweep never stopped."""
    sweep_dir, never_stopped = tmp_path / "sweep", tmp_path / "never_stopped"
    sweep = [*SWEEP_RUN, "callbacks.kill._target_=tests.test_ray.HoldAt", f"data.data_dir={data_dir}"]
    sweep.append("resume.auto=true")  # in both launches: the same command finishes the sweep
    command = [sys.executable, "train.py", *ray_sweep(ray_address, "latent_dim=2,3", *sweep)]
    environment = {**os.environ, "CVAE_TEST_KILL": "1:4"}  # the members get it from the launcher's environment
    launcher = subprocess.Popen([*command, f"hydra.sweep.dir={sweep_dir}"], cwd=ROOT, env=environment)
    try:
        wait_for(lambda: (sweep_dir / "held.pid").is_file() and (sweep_dir / "0" / "metrics.json").is_file(), "hold")
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    held = int((sweep_dir / "held.pid").read_text())
    wait_for(lambda: not alive(held), "end of the held member's worker", seconds=60)
    assert not (sweep_dir / "1" / "metrics.json").exists() and (sweep_dir / "1" / "checkpoints" / "last.ckpt").is_file()
    finished = files_of(sweep_dir / "0")
    again = run_script(*command[1:], f"hydra.sweep.dir={sweep_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert files_of(sweep_dir / "0") == finished, "the finished member is kept as it was"
    resumes = json.loads((sweep_dir / "1" / "resumes.json").read_text())["resumes"]
    assert [Path(resume["ckpt_path"]).name for resume in resumes] == ["last.ckpt"]
    reference = run_script(*command[1:], f"hydra.sweep.dir={never_stopped}")
    assert reference.returncode == 0, reference.stderr[-3000:]
    for metrics in ("0/metrics.json", "1/metrics.json"):
        assert (sweep_dir / metrics).read_bytes() == (never_stopped / metrics).read_bytes()
    assert [row["status"] for row in read_summary(sweep_dir)] == ["ok", "ok"]


def test_a_member_whose_ray_worker_died_is_not_started_again_into_its_dir(tmp_path, data_dir, ray_address):
    """KillAt SIGKILLs member 1's Ray worker in its second epoch. Ray would start the task again into the member's
    dir (with resume.auto=true each time resuming, and dying, anew): max_retries=0 ends the sweep instead, and the
    same command resumes member 1 once, from its last.ckpt."""
    sweep_dir = tmp_path / "sweep"
    sweep = [*SWEEP_RUN, f"data.data_dir={data_dir}", "resume.auto=true", f"hydra.sweep.dir={sweep_dir}"]
    command = ["train.py", *ray_sweep(ray_address, "latent_dim=2,3", *sweep)]
    crashed = run_script(*command, env_extra={"CVAE_TEST_KILL": "1:4"})
    assert crashed.returncode == 1 and "WorkerCrashedError" in crashed.stderr, crashed.stderr[-3000:]
    assert not (sweep_dir / "1" / "metrics.json").exists() and not (sweep_dir / "1" / "resumes.json").exists()
    again = run_script(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    resumes = json.loads((sweep_dir / "1" / "resumes.json").read_text())["resumes"]
    assert [Path(resume["ckpt_path"]).name for resume in resumes] == ["last.ckpt"]
    assert [row["status"] for row in read_summary(sweep_dir)] == ["ok", "ok"]
