"""A real (short) training run on real MNIST, and what it leaves behind: checkpoints, TensorBoard events,
metrics.json; then evaluate.py on its checkpoint, and train.py as users type it (a multirun)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from cvae.data.mnist import MNISTDataModule
from cvae.model.checkpoint import load_module
from cvae.model.cvae import negative_elbo
from tests.conftest import QUICK_EVALUATION, QUICK_RUN, QUICK_RUN_ANY_CALLBACKS, ROOT, compose_config

ELBO_METRICS = {f"{stage}/{term}" for stage in ("val", "test") for term in ("nelbo", "recon", "kl")}


def test_run_dir_holds_checkpoints_and_metrics(trained_run):
    output_dir, returned = trained_run
    assert (output_dir / "checkpoints" / "best.ckpt").is_file()
    assert (output_dir / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert ELBO_METRICS <= metrics.keys()
    assert metrics == pytest.approx(returned)
    assert metrics["epochs"] == 2
    for name in ELBO_METRICS:
        assert 0 < metrics[name] < 600, f"{name}={metrics[name]} is no plausible nats-per-image figure"
    assert metrics["test/nelbo"] == pytest.approx(metrics["test/recon"] + metrics["test/kl"], rel=1e-5)
    assert metrics["best_checkpoint"].endswith("best.ckpt")


def test_tensorboard_has_scalars_images_and_hparams(trained_run):
    output_dir, _ = trained_run
    events = EventAccumulator(str(output_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    charted = {name for name in ELBO_METRICS if not name.startswith("test/")}  # test/*: metrics.json
    assert {"train/nelbo", "train/nelbo_step"} | charted <= scalars
    assert not [tag for tag in scalars if "beta" in tag], "without a KL warm-up beta is a constant: no chart"
    assert len(events.Scalars("val/nelbo")) == 2, "one value per epoch"
    generation = {"validation/fid", "validation/label_acc", "validation/fid_digit/7"}
    assert generation | {"validation/label_acc_digit/7", "validation/active_units"} <= scalars
    assert len(events.Scalars("validation/fid")) == 1, "FID after the last epoch (every 5 otherwise)"
    images = events.Tags()["images"]
    assert {"visuals/digits/prior_by_digit", "visuals/digits/reconstructions"} <= set(images)
    grid = events.Images("visuals/digits/prior_by_digit")[-1]
    assert grid.height == 10 * 28 + 11 * 2, "one row per digit 0-9"
    hparams = {
        tag: HParamsPluginData.FromString(content)
        for tag, content in EventAccumulator(str(output_dir / "best")).Reload().PluginTagToContent("hparams").items()
    }
    session = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert session["latent_dim"].string_value == "3" and session["model/beta"].number_value == 1.0
    assert not any(key.rsplit("/", 1)[-1].startswith("_") for key in session), "no _target_ noise in HPARAMS"
    metric_names = {info.name.tag for info in hparams["_hparams_/experiment"].experiment.metric_infos}
    best = EventAccumulator(str(output_dir / "best")).Reload()  # the final figures, under the curves' tags
    assert {"val/nelbo", "validation/fid"} <= metric_names == set(best.Tags()["scalars"]) <= scalars


def test_checkpoint_alone_rebuilds_the_model(trained_run):
    output_dir, _ = trained_run
    module = load_module(output_dir / "checkpoints" / "best.ckpt")
    assert module.net.latent_dim == 3 and module.hparams.net["hidden_dims"] == [512, 256]


def test_logged_means_weight_every_image_equally(trained_run, data_dir):
    """val/kl (deterministic given the weights) logged with an uneven last batch equals the mean over all 5000
    validation images computed at once: a per-batch mean of means would over-weight the short batch."""
    output_dir, _ = trained_run
    import pytorch_lightning as pl

    module = load_module(output_dir / "checkpoints" / "best.ckpt")
    datamodule = MNISTDataModule(data_dir=data_dir, eval_batch_size=999)  # 5 x 999 + 5
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/kl"]
    x, y = datamodule.splits["val"]
    with torch.no_grad():
        exact = negative_elbo(module.net, x.view(-1, 784).float() / 255, y)["kl"].mean().item()
    assert logged == pytest.approx(exact, rel=1e-5)


def test_evaluate_writes_its_own_metrics_and_samples(trained_run, data_dir, tmp_path):
    from cvae.run.evaluate import evaluate

    run_dir, trained = trained_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    cfg = compose_config("evaluate", [f"ckpt_path={ckpt}", f"data.data_dir={data_dir}", *QUICK_EVALUATION], tmp_path)
    returned = evaluate(cfg)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert {
        "test/nelbo",
        "test/recon",
        "test/kl",
        "test/nll_iw",
        "test/fid",
        "test/label_acc",
        "test/label_acc_digit/0",
        "test/fid_digit/9",
        "test/active_units",
        "test/kl_dim/2",
    } <= written.keys()
    assert 0 <= written["test/active_units"] <= 3 and 0 <= written["test/label_acc"] <= 1 and written["test/fid"] > 0
    assert written["test/nll_iw"] < written["test/nelbo"], "the IW bound is tighter than the ELBO"
    assert written["test/kl"] == pytest.approx(trained["test/kl"], rel=1e-4), "same checkpoint, same KL"
    assert written["test/nelbo"] == pytest.approx(trained["test/nelbo"], rel=0.01)
    assert written["test/nelbo"] == pytest.approx(returned["test/nelbo"])
    with Image.open(tmp_path / "samples.png") as samples:
        grid = 10 * 28 + 11 * 2  # ten rows and columns of 28-pixel digits, drawn 4x, a label column on the left
        assert samples.height == 4 * grid and samples.width > 4 * grid


def run_script(*args: str, cwd=ROOT, env_extra: dict | None = None, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    command = [sys.executable, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **popen)


def test_multirun_gives_one_complete_run_per_member(tmp_path, data_dir):
    sweep_dir = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "latent_dim=2,3",
        *QUICK_RUN,
        "trainer.max_epochs=1",
        f"data.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, latent_dim in (("0", 2), ("1", 3)):
        member = sweep_dir / job
        assert (member / "checkpoints" / "best.ckpt").is_file()
        assert list(member.glob("events.out.tfevents.*"))
        assert "test/nelbo" in json.loads((member / "metrics.json").read_text())
        assert load_module(member / "checkpoints" / "best.ckpt").net.latent_dim == latent_dim
        # HPARAMS's knob columns: the knob the sweep varies, marked as such, and the mission's next
        summaries = EventAccumulator(str(member / "best")).Reload().PluginTagToContent("hparams")
        columns = HParamsPluginData.FromString(summaries["_hparams_/experiment"]).experiment.hparam_infos
        assert [(info.name, info.differs) for info in columns] == [("latent_dim", True), ("batch_size", False)]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]


def test_launches_in_the_same_second_get_their_own_dirs(tmp_path, data_dir):
    quick = [
        *QUICK_RUN_ANY_CALLBACKS,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "callbacks=none",
        "logger=csv",
        f"data.data_dir={data_dir}",
    ]
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path)}
    launches = [
        subprocess.Popen(
            [sys.executable, "train.py", *quick],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for launch in launches:
        assert launch.wait(timeout=600) == 0, launch.stderr.read()[-3000:]
    run_dirs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 2
    assert all((run_dir / "metrics.json").is_file() for run_dir in run_dirs)
    assert not [path for run_dir in run_dirs for path in run_dir.rglob("*.ckpt")], "callbacks=none: no checkpoints"
