"""DDP across machines with torchrun as the launcher: two agents on 127.0.0.1 (2 nodes x 1 process, gloo) train
exactly what `trainer=ddp_cpu` trains on one machine, and only rank 0 writes in the run dir."""

import os
import socket
import subprocess
import sys

import torch

from cvae.run.train import train
from tests.conftest import ROOT, compose_config
from tests.test_sweeps import TINY_RUN
from tests.test_train import run_script

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def finish(agents: list[subprocess.Popen], timeout: float) -> list[str]:
    """Each agent's output once all ended; past the timeout every agent is killed and the test fails with what each
    printed (a node whose rank failed is the cause: the other node's agent waits for it at its exit barrier)."""
    try:
        return [agent.communicate(timeout=timeout)[0] for agent in agents]
    except subprocess.TimeoutExpired:
        for agent in agents:
            agent.kill()
        outputs = [agent.communicate()[0] for agent in agents]
        tails = "\n".join(output[-3000:] for output in outputs)
        raise AssertionError(f"torchrun did not end in {timeout} s:\n{tails}") from None


def run_files(run_dir) -> dict[str, int]:
    """Every file of a run dir, by path, with the number of lines of its logs (what a second writer would add)."""
    return {
        str(path.relative_to(run_dir)): len(path.read_text().splitlines()) if path.suffix == ".log" else 0
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
    }


def test_torchrun_on_two_nodes_trains_what_ddp_cpu_trains_and_only_rank_zero_writes(tmp_path, data_dir):
    settings = [*TINY_RUN, "trainer=ddp_cpu", f"data.data_dir={data_dir}"]
    one_machine = run_script("train.py", *settings, f"hydra.run.dir={tmp_path / 'ddp_cpu'}")
    assert one_machine.returncode == 0, one_machine.stderr[-3000:]

    port = free_port()
    agents = [
        subprocess.Popen(
            [
                *TORCHRUN,
                *("--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port)),
                "train.py",
                *settings,
                "trainer.devices=1",
                "trainer.num_nodes=2",
                f"hydra.run.dir={tmp_path / 'torchrun'}",
            ],
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = finish(agents, timeout=240)
    assert [agent.returncode for agent in agents] == [0, 0], outputs[1][-3000:] + outputs[0][-3000:]

    metrics = (tmp_path / "torchrun" / "metrics.json").read_bytes()
    assert metrics == (tmp_path / "ddp_cpu" / "metrics.json").read_bytes()
    assert b'"world_size": 2' in metrics
    assert run_files(tmp_path / "torchrun") == run_files(tmp_path / "ddp_cpu"), "rank 1 wrote in the run dir"


def test_a_rank_ends_its_process_group_when_its_job_ends(tmp_path, data_dir, monkeypatch):
    """Lightning leaves the process group to the script. A rank that exits holding one can die of SIGABRT in the
    interpreter's shutdown (gloo's threads still hold tensors): under torchrun its agent then fails and the other
    node's agent waits out its 300 s exit barrier (a CI run hung so). A DDP job of one process, in this process,
    as every rank torchrun, srun or our launcher starts runs it (no processes of its own to start)."""
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    settings = [*TINY_RUN, "trainer=ddp_cpu", "trainer.devices=1", f"data.data_dir={data_dir}"]
    train(compose_config("train", settings, tmp_path))
    assert not torch.distributed.is_initialized()
