"""A new user's first hour (issue 28): what `python train.py` and `python evaluate.py` print (the run dir, then
the files to open, no library noise), what TensorBoard opens on (read from the event files the way TensorBoard
reads them), and the PNG pictures drawn for people."""

import numpy as np
import torch
from google.protobuf import text_format
from PIL import Image
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from cvae.explore.figures import for_people, image_grid
from cvae.files import read_json
from tests.conftest import QUICK_EVALUATION, QUICK_RUN, ROOT, compose_config
from tests.test_train import run_script

# what Lightning and torch printed on every run before issue 28
NOISE = ("LeafSpec", "litlogger", "was configured so")


def test_train_prints_its_dir_first_and_its_results_last_and_no_library_noise(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    # every epoch into the Projector, so that it holds two epochs
    extra = ["callbacks.latent_projector.every_n_epochs=1", f"data.data_dir={data_dir}", f"hydra.run.dir={run_dir}"]
    result = run_script(str(ROOT / "train.py"), *QUICK_RUN, *extra, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "train: writing to run/", "the run dir, relative to where the command ran, first"
    results = lines[lines.index("results in run/:") :]
    assert results[1:] == [
        "  run/metrics.json",
        "  run/checkpoints/best.ckpt",
        "  run/checkpoints/last.ckpt",
        "  tensorboard --logdir run   # curves, pictures, HPARAMS, Projector",
    ]
    output = result.stdout + result.stderr
    assert not [noise for noise in NOISE if noise in output], output

    assert_tensorboard_opens_on_the_curves(run_dir)
    projector = text_format.Parse((run_dir / "projector_config.pbtxt").read_text(), ProjectorConfig())
    names = [embedding.tensor_name for embedding in projector.embeddings]
    # the Projector sorts the names and opens on the first: the final epoch's
    assert names == ["latent/posterior_mean (newest, step 10)", "latent/posterior_mean:00005"]
    assert min(names) == names[0], "opens on the final epoch"
    assert all((run_dir / embedding.tensor_path).is_file() for embedding in projector.embeddings)
    empty = [
        str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if path.is_file() and not path.stat().st_size
    ]
    assert not empty, "no empty file in a run dir"
    assert "latent_dim: 2" in (run_dir / "hparams.yaml").read_text(), "the run's knobs, not {}"


def assert_tensorboard_opens_on_the_curves(run_dir) -> None:
    """Time Series and Scalars sort their charts by tag and open the first two groups (the tag up to its first /):
    train/ and val/, holding the -ELBO curves and their terms alone; no `epoch` or single-point charts. The final
    figures are points of the `best` sub-run on the charts of the curves, which is HPARAMS's session, whose metric
    columns read them (the values of metrics.json); it shows integers as integers."""
    runs = EventMultiplexer().AddRunsFromDirectory(str(run_dir)).Reload()
    assert set(runs.Runs()) == {".", "best"}
    main, best = runs.GetAccumulator("."), runs.GetAccumulator("best")
    tags = [*main.Tags()["scalars"], *main.Tags()["images"], *best.Tags()["scalars"]]
    groups = sorted({tag.split("/")[0] for tag in tags})
    assert groups[:2] == ["train", "val"], groups
    opened = sorted(tag for tag in tags if tag.split("/")[0] in groups[:2])
    assert opened == ["train/beta", "train/nelbo", "train/nelbo_step", "val/kl", "val/nelbo", "val/nelbo", "val/recon"]
    assert len(main.Scalars("train/nelbo")) == len(main.Scalars("val/nelbo")) == 2, "the curves, a point per epoch"
    metrics = read_json(run_dir / "metrics.json")
    hparams = {
        tag: HParamsPluginData.FromString(content) for tag, content in best.PluginTagToContent("hparams").items()
    }
    columns = hparams["_hparams_/experiment"].experiment.metric_infos
    assert [info.display_name for info in columns] == ["val/nelbo", "val/fid", "val/label_acc"]
    assert not [info.name.group for info in columns if info.name.group], "the session's own run: best/"
    for info in columns:
        assert best.Scalars(info.name.tag)[-1].value == np.float32(metrics[info.display_name]), info.display_name
    shown = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert (shown["batch_size"].string_value, shown["latent_dim"].string_value) == ("128", "2")
    assert shown["lr"].number_value == 1e-3


def test_evaluate_prints_its_dir_and_the_pictures_it_drew(trained_run, data_dir, tmp_path, capsys, monkeypatch):
    from cvae.run.evaluate import evaluate

    monkeypatch.chdir(tmp_path)  # paths are shown relative to the current dir

    output_dir, _ = trained_run
    requests = ["digits=2026", "variants=3", "digit=7", "variants=3"]
    overrides = [f"ckpt_path={output_dir / 'checkpoints' / 'best.ckpt'}", f"data.data_dir={data_dir}", *requests]
    evaluate(compose_config("evaluate", [*QUICK_EVALUATION, *overrides], tmp_path / "evaluation"))
    lines = capsys.readouterr().out.splitlines()
    shown = "evaluation"
    assert lines[0] == f"evaluate: writing to {shown}/"
    results = lines[lines.index(f"results in {shown}/:") + 1 :]
    assert results == [f"  {shown}/{name}" for name in ("metrics.json", "samples.png", "digits.png", "digit_7.png")]
    digits = np.asarray(Image.open(tmp_path / "evaluation" / "digits.png").convert("L"))
    grid_height, grid_width = 3 * 30 + 2, 4 * 30 + 2  # 3 styles of 4 digits, 28 pixels and a 2-pixel line each
    assert digits.shape[0] == 4 * grid_height and digits.shape[1] > 4 * grid_width, "4x, and a label column"


def test_pictures_for_people_are_the_grid_four_times_larger_with_a_label_per_row():
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    grid = image_grid(images, nrow=3)  # two rows of three
    picture = for_people(grid, ["first", "second"])
    pixels = (grid * 255).round().byte().permute(1, 2, 0).numpy()
    larger = np.kron(pixels, np.ones((4, 4, 1), dtype=np.uint8))  # each pixel as a 4 x 4 square
    drawn = (picture * 255).round().byte().permute(1, 2, 0).numpy()
    label_width = drawn.shape[1] - larger.shape[1]
    assert drawn.shape[0] == larger.shape[0] and label_width > 0
    np.testing.assert_array_equal(drawn[:, label_width:], larger)
    margin = drawn[:, :label_width].min(axis=(1, 2)) < 128  # rows of the label column with dark (text) pixels
    for row in range(2):
        top, bottom = (2 + 30 * row) * 4, (30 + 30 * row) * 4
        assert margin[top:bottom].any(), f"row {row} has its label beside it"
    assert not margin[: 2 * 4].any(), "nothing drawn above the first row"
