"""MLflow and W&B, offline with the real libraries: one short training run logs to TensorBoard, MLflow (a local
SQLite store, read back with MLflow's client) and W&B (offline, its run file read back) at once, and each
tracker holds the run's knobs, its final metrics (those of metrics.json) and the images TensorBoard got. A run
crashed and resumed continues each tracker's run (against a real `mlflow server`), as a run never stopped."""

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest
import pytorch_lightning as pl
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvae.callbacks.images import tensorboard_image_tag
from cvae.errors import ConfigError
from cvae.loggers.trackers import EARLIER_ROWS, MLFlowLogger, WandbLogger, run_label, wandb_logged_in, wandb_run_closed
from tests.conftest import QUICK_RUN, QUICK_RUN_ANY_CALLBACKS, compose_config

mlflow = pytest.importorskip("mlflow", reason='MLflow is an extra: pip install -e ".[mlflow]" (".[test]" has it)')
wandb_proto = pytest.importorskip(
    "wandb.proto.wandb_internal_pb2", reason='W&B is an extra: pip install -e ".[wandb]" (".[test]" has it)'
)
IMAGE_TAGS = ("samples/prior_by_digit", "samples/reconstructions", "exploration/latent_map")


@contextmanager
def machine_never_logged_in_to_wandb(root):
    with pytest.MonkeyPatch.context() as env:
        for variable in ("WANDB_MODE", "WANDB_API_KEY"):
            env.delenv(variable, raising=False)
        env.setenv("NETRC", str(root / "no_netrc"))
        env.setenv("WANDB_SILENT", "true")
        yield


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, data_dir):
    """A two-epoch run with logger=[tensorboard,mlflow,wandb], W&B on a machine that never logged in."""
    from cvae.run.train import train

    root = tmp_path_factory.mktemp("tracked")
    with machine_never_logged_in_to_wandb(root):
        overrides = [
            *QUICK_RUN,
            f"data.data_dir={data_dir}",
            "latent_dim=3",
            "logger=[tensorboard,mlflow,wandb]",
            f"logger.mlflow.tracking_uri=sqlite:///{root}/mlflow.db",
            f"logger.mlflow.artifact_location={root}/mlartifacts",
        ]
        run_dir = root / "outputs" / "multirun" / "day" / "time" / "0"
        train(compose_config("train", overrides, run_dir))
    return root, run_dir, json.loads((run_dir / "metrics.json").read_text())


def tensorboard_images(run_dir) -> dict[str, np.ndarray]:
    """The last image of each tag TensorBoard holds, as an array."""
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    return {tag: png_array(events.Images(tensorboard_image_tag(tag))[-1].encoded_image_string) for tag in IMAGE_TAGS}


def png_array(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def assert_same_picture(image: np.ndarray, reference: np.ndarray) -> None:
    assert image.shape == reference.shape and (image == reference).all()


def test_mlflow_holds_the_knobs_final_metrics_and_images(tracked_run):
    root, run_dir, metrics = tracked_run
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("cvae").experiment_id])
    assert run.info.run_name == "multirun/day/time/0" and run.data.tags["run_dir"] == str(run_dir)
    params = run.data.params
    assert params["latent_dim"] == "3" and params["logger"] == "[tensorboard,mlflow,wandb]"
    assert params["trainer/max_epochs"] == "2" and params["model/beta"] == "1.0"
    assert "data/batch_size" not in params and "model/latent_dim" not in params, "no copies of a knob"
    for name in ("val/nelbo", "test/nelbo", "val/fid", "val/label_acc"):
        assert run.data.metrics[f"final/{name}"] == pytest.approx(metrics[name])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val/nelbo")] == pytest.approx(
        [event.value for event in EventAccumulator(str(run_dir)).Reload().Scalars("val/nelbo")]
    )
    logged = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "images")}
    for tag, reference in tensorboard_images(run_dir).items():
        # MLflow's file name for a step image: images/<key with / as ~>+step+<step>+timestamp+...png
        (name,) = [path for path in logged if f"/{tag.replace('/', '~')}+step+10+" in path and path.endswith(".png")]
        assert_same_picture(png_array(open(client.download_artifacts(run.info.run_id, name), "rb").read()), reference)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_json(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def mlflow_server(store: str, artifacts: str, deadline_s: float = 90):
    """`mlflow server` from this environment on a free local port, until the block ends (stopped, never left)."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--backend-store-uri", store, "--default-artifact-root", artifacts, "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its workers go with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-3000:]
                assert time.monotonic() - start < deadline_s, f"mlflow server not up in {deadline_s} s"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_mlflow_server_from_this_environment_serves_the_logged_run(tracked_run):
    """`mlflow ui` / `mlflow server` run in the project's own environment (SQLAlchemy 2, no second venv) and
    serve a run logged by logger=mlflow: its params and final metrics over the REST API, and the UI's page."""
    root, run_dir, metrics = tracked_run
    with mlflow_server(f"sqlite:///{root}/mlflow.db", str(root / "mlartifacts")) as url:
        experiment = http_json(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=cvae")["experiment"]
        (run,) = http_json(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})[
            "runs"
        ]
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    params = {param["key"]: param["value"] for param in run["data"]["params"]}
    final = {metric["key"]: metric["value"] for metric in run["data"]["metrics"]}
    assert run["info"]["run_name"] == "multirun/day/time/0" and params["latent_dim"] == "3"
    assert final["final/val/nelbo"] == pytest.approx(metrics["val/nelbo"])


def exit_codes(run_file, seconds: float = 30.0) -> list[int]:
    """The exit codes recorded in an offline W&B run file. W&B's core process writes the file: on a loaded machine
    the exit record can land a moment after wandb.finish() returned, so the file is read again until it shows one
    (or `seconds` pass)."""
    deadline = time.monotonic() + seconds
    while True:
        codes = [record.exit.exit_code for record in wandb_records(run_file) if record.HasField("exit")]
        if codes or time.monotonic() > deadline:
            return codes
        time.sleep(0.2)


def wandb_records(run_file) -> list:
    """The records of an offline W&B run file: a LevelDB-style log of protobuf records (W&B has no Python reader
    of its own any more: `wandb sync` hands the file to its Go core). Blocks of 32 KiB, each record in chunks
    with a 7-byte header (CRC, length, type: 1 whole, 2 first, 3 middle, 4 last), after a 7-byte file header."""
    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, chunks, position = [], b"", 7
    while position + 7 <= len(data):
        left_in_block = 32768 - position % 32768
        if left_in_block < 7:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunks += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            records.append(wandb_proto.Record.FromString(chunks))
            chunks = b""
    return records


def test_wandb_runs_offline_and_holds_the_knobs_final_metrics_and_images(tracked_run):
    _, run_dir, metrics = tracked_run
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    records = wandb_records(next(offline_run.glob("run-*.wandb")))
    kinds = [record.WhichOneof("record_type") for record in records]
    assert kinds[-1] == "exit", "the run was finished at the end of the job"
    (run,) = [record.run for record in records if record.HasField("run")]
    assert run.display_name == "multirun/day/time/0" and run.project == "cvae"
    config = {
        item.key: json.loads(item.value_json)
        for record in records
        if record.HasField("config")
        for item in record.config.update
    }
    assert config["latent_dim"] == 3 and config["trainer/max_epochs"] == 2 and "data/batch_size" not in config
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in records
        if record.HasField("history")
    ]
    final = next(step for step in history if "final/val/nelbo" in step)
    for name in ("val/nelbo", "test/nelbo", "val/fid", "val/label_acc"):
        assert final[f"final/{name}"] == pytest.approx(metrics[name])
    for tag, reference in tensorboard_images(run_dir).items():
        (image,) = [
            step[f"{tag}/filenames"][0]
            for step in history
            if step.get(f"{tag}/filenames") and step["trainer/global_step"] == 10
        ]
        assert_same_picture(png_array((offline_run / "files" / image).read_bytes()), reference)


def test_a_failed_job_closes_its_wandb_run_as_failed(tmp_path, monkeypatch):
    """So the next job of a multirun starts a run of its own instead of logging into this one."""
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    with pytest.raises(RuntimeError, match="diverged"), wandb_run_closed():
        wandb.init(mode="offline", dir=tmp_path, project="cvae")
        raise RuntimeError("diverged")
    assert wandb.run is None
    assert exit_codes(next(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))) == [1]


def test_wandb_is_online_only_when_logged_in(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_logged_in()
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    assert wandb_logged_in()
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert wandb_logged_in()


def test_wandb_mode_is_what_wandb_mode_says_else_online_only_when_logged_in(tmp_path, monkeypatch):
    def mode() -> str:
        return WandbLogger(save_dir=str(tmp_path))._wandb_init["mode"]  # what the logger hands to wandb.init

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert mode() == "disabled"


def test_a_missing_extra_is_a_one_line_error_saying_what_to_install(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r'logger=mlflow needs the mlflow package: pip install -e "\.\[mlflow\]"'):
        MLFlowLogger(run_dir="outputs/x")


def test_runs_are_named_by_their_dir_below_outputs():
    assert run_label("/home/me/cvae/outputs/multirun/2026-11-21/06-14-44_123/3") == "multirun/2026-11-21/06-14-44_123/3"
    assert run_label("/elsewhere/run") == "/elsewhere/run"


class CrashAt(pl.Callback):
    """A hard failure in the middle of an epoch, after some of its batches were logged: the run ends without a
    checkpoint of its own (as after SIGKILL or a power cut), last.ckpt is the previous epoch's."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("power cut")


@pytest.fixture(scope="module")
def resumed_trackers(tmp_path_factory, data_dir):
    """Against a real MLflow server: one run trained straight through, and the same run crashed in its second
    epoch (after logging some of its batches) and resumed with resume.auto=true; TensorBoard, CSV, MLflow and W&B
    (offline) log both."""
    from cvae.run.train import train

    root = tmp_path_factory.mktemp("resumed_trackers")
    with machine_never_logged_in_to_wandb(root), mlflow_server(f"sqlite:///{root}/mlflow.db", str(root / "art")) as url:
        overrides = [
            *QUICK_RUN_ANY_CALLBACKS,
            "callbacks=[model_checkpoint,sample_grids]",  # no FID: quicker
            f"data.data_dir={data_dir}",
            "latent_dim=3",
            "logger=[tensorboard,csv,mlflow,wandb]",
            f"logger.mlflow.tracking_uri={url}",
        ]
        straight, resumed = (root / "outputs" / "multirun" / "day" / "time" / job for job in ("0", "1"))
        train(compose_config("train", overrides, straight))
        crash = ["+callbacks.crash._target_=tests.test_loggers.CrashAt", "+callbacks.crash.step=8"]
        with pytest.raises(RuntimeError, match="power cut"):
            train(compose_config("train", [*overrides, *crash], resumed))
        assert (resumed / "checkpoints" / "last.ckpt").is_file() and not (resumed / "metrics.json").exists()
        train(compose_config("train", [*overrides, "resume.auto=true"], resumed))
        experiment = http_json(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=cvae")["experiment"]
        runs = http_json(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})
        histories = {
            tag_value(run, "run_dir"): {
                key: [
                    (point["step"], point["value"])
                    for point in http_json(
                        f"{url}/api/2.0/mlflow/metrics/get-history?run_id={run['info']['run_id']}&metric_key={key}"
                    )["metrics"]
                ]
                for key in ("val/nelbo", "train/nelbo", "train/nelbo_step")
            }
            for run in runs["runs"]
        }
    return straight, resumed, runs["runs"], histories


def tag_value(run: dict, key: str) -> str:
    return next(tag["value"] for tag in run["data"]["tags"] if tag["key"] == key)


def once_per_step(points: list) -> dict:
    """{step: value}, checking that a step logged twice holds the same value both times (an exact resume)."""
    steps = {}
    for step, value in points:
        assert steps.setdefault(step, value) == value, f"step {step} logged with two values"
    return steps


def test_a_resumed_run_appends_to_its_metrics_csv_as_if_never_stopped(resumed_trackers):
    straight, resumed, _, _ = resumed_trackers
    assert (resumed / "metrics.csv").read_bytes() == (straight / "metrics.csv").read_bytes()
    assert not (resumed / EARLIER_ROWS).exists()


def test_a_resumed_run_continues_tensorboard_in_the_same_dir_without_what_the_crash_logged_after_the_checkpoint(
    resumed_trackers,
):
    straight, resumed, _, _ = resumed_trackers
    expected, got = (EventAccumulator(str(run)).Reload() for run in (straight, resumed))
    tags = expected.Tags()["scalars"]
    assert set(got.Tags()["scalars"]) == set(tags) and "val/nelbo" in tags
    for tag in tags:
        points, reference = (Counter((e.step, e.value) for e in events.Scalars(tag)) for events in (got, expected))
        assert not reference - points, f"{tag}: nothing lost"
        # TensorBoard purges by step alone: the crashed launch's points at the checkpoint's own step (5, which also
        # holds epoch 0's images) stay beside the resumed launch's; from step 6 on they are purged
        assert {step for step, _ in points - reference} <= {5}, f"{tag}: logged twice after the checkpoint"
    images, reference_images = (
        EventAccumulator(str(run), size_guidance={"images": 0}).Reload() for run in (resumed, straight)
    )
    image_tags = reference_images.Tags()["images"]
    steps, reference_steps = (
        {tag: [e.step for e in i.Images(tag)] for tag in image_tags} for i in (images, reference_images)
    )
    # the sample grids of epoch 0 (step 5, the crashed launch's) and epoch 1 (step 10, the resume's)
    assert steps == reference_steps and steps[tensorboard_image_tag("samples/prior_by_digit")] == [5, 10]


def test_a_resumed_run_continues_its_mlflow_run_read_back_over_rest(resumed_trackers):
    straight, resumed, runs, histories = resumed_trackers
    assert sorted(tag_value(run, "run_dir") for run in runs) == [str(straight), str(resumed)], "one run per run"
    (run,) = [run for run in runs if tag_value(run, "run_dir") == str(resumed)]
    assert run["info"]["status"] == "FINISHED"
    got, expected = histories[str(resumed)], histories[str(straight)]
    for key in ("val/nelbo", "train/nelbo"):
        assert got[key] == expected[key], f"{key}: each epoch once"
    assert len(got["val/nelbo"]) == 2
    # MLflow cannot delete a point: the crashed launch's batches after the checkpoint are there twice
    assert once_per_step(got["train/nelbo_step"]) == dict(expected["train/nelbo_step"])


def test_a_resumed_run_resumes_its_wandb_run_offline(resumed_trackers):
    straight, resumed, _, _ = resumed_trackers
    launches = sorted((resumed / "wandb").glob("offline-run-*"))
    assert len(launches) == 2, "the crashed launch and the resume"

    def history(launch) -> tuple[str, list[dict]]:
        records = wandb_records(next(launch.glob("run-*.wandb")))
        (run,) = [record.run for record in records if record.HasField("run")]
        rows = [
            {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in records
            if record.HasField("history")
        ]
        return run.run_id, rows

    (first_id, first), (second_id, second) = (history(launch) for launch in launches)
    (reference_launch,) = (straight / "wandb").glob("offline-run-*")
    _, reference = history(reference_launch)
    assert first_id == second_id, "the resume logs into the same W&B run"

    def epochs(rows: list[dict], key: str) -> list:
        return [(row["trainer/global_step"], row[key]) for row in rows if key in row]

    for key in ("val/nelbo", "train/nelbo", "final/val/nelbo"):
        assert epochs(first, key) + epochs(second, key) == epochs(reference, key), key
