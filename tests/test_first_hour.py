"""A new user's first hour (issues 28, 37): what `python train.py` and `python evaluate.py` print (the run dir, then
the files to open, no library noise), what TensorBoard opens on (read from the event files the way TensorBoard
reads them, ordered as its dashboards order them), and the PNG pictures drawn for people."""

import functools
import os
from pathlib import Path

import numpy as np
import torch
import yaml
from google.protobuf import text_format
from PIL import Image
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from cvae.explore.figures import for_people, image_grid
from cvae.files import read_json
from cvae.loggers.hparams import sweep_keys
from tests.conftest import QUICK_EVALUATION, QUICK_RUN, ROOT, compose_config
from tests.test_train import run_script

# what Lightning and torch printed on every run before issue 28
NOISE = ("LeafSpec", "litlogger", "was configured so")


def test_train_prints_its_dir_first_and_its_results_last_and_no_library_noise(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    # every epoch into the Projector, so that it holds two epochs; the charts that sorted above the curves (an lr
    # schedule logged, a KL warm-up); the data folder typed relative to where the command runs
    extra = ["callbacks.latent_projector.every_n_epochs=1", f"hydra.run.dir={run_dir}"]
    extra += [*SCHEDULES, f"data.data_dir={os.path.relpath(data_dir, tmp_path)}"]
    result = run_script(str(ROOT / "train.py"), *QUICK_RUN, *extra, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "train: writing to run/", "the run dir, relative to where the command ran, first"
    results = lines[lines.index("results in run/:") :]
    assert results[1:4] == ["  run/metrics.json", "  run/checkpoints/best.ckpt", "  run/checkpoints/last.ckpt"]
    assert results[-1] == "  tensorboard --logdir run   # curves, pictures, HPARAMS, Projector"  # pictures between:
    output = result.stdout + result.stderr
    assert not [noise for noise in NOISE if noise in output], output

    assert_tensorboard_opens_on_the_curves(run_dir)
    session = hparams_summaries(run_dir / "best")["_hparams_/session_start_info"].session_start_info.hparams
    assert session["data/data_dir"].string_value == as_shown(data_dir), "where the data is, not ../../.. from the run"
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


# lr-Adam under a cosine schedule and beta under a 2-epoch KL warm-up: the charts that sorted above the curves
SCHEDULES = ["scheduler=cosine", "callbacks=[default,lr_monitor]", "model.kl_warmup_epochs=2"]
# the -ELBO curves and their terms
CURVES = ["train/nelbo", "train/nelbo_step", "val/kl", "val/nelbo", "val/recon"]
# TensorBoard 2.21 (webfiles.zip): a break sorts before any other character; Time Series breaks at / and digits,
# the Scalars and Images dashboards also at _
TIME_SERIES_BREAKS, DASHBOARD_BREAKS = "/", "/_"
# its HPARAMS table, measured in headless Chromium: a 284 px left panel, Trial ID 10em (160 px), Show Metrics 100 px,
# then each ticked knob (the first five listed) and each metric 10em, whatever their names
WINDOW, PANEL, TRIAL_ID, SHOW_METRICS, COLUMN, TICKED = 1400, 284, 160, 100, 160, 5


def tag_order(a: str, b: str, breaks: str) -> int:
    """TensorBoard's compareTagNames: runs of digits compare as numbers, a break before any other character."""
    i = j = 0
    while True:
        if i == len(a) or j == len(b):
            return (i < len(a)) - (j < len(b))
        if a[i].isdigit() and b[j].isdigit():
            start_a, start_b = i, j
            while i < len(a) and a[i].isdigit():
                i += 1
            while j < len(b) and b[j].isdigit():
                j += 1
            if int(a[start_a:i]) != int(b[start_b:j]):
                return -1 if int(a[start_a:i]) < int(b[start_b:j]) else 1
            continue
        break_a, break_b = (c in breaks or c.isdigit() for c in (a[i], b[j]))
        if break_a != break_b:
            return -1 if break_a else 1
        if not break_a and a[i] != b[j]:
            return -1 if a[i] < b[j] else 1
        i, j = i + 1, j + 1


def dashboard_groups(tags, breaks: str) -> list[list[str]]:
    """The groups a TensorBoard dashboard shows, in its order: its tags sorted, grouped by the tag up to its first /
    in the order they come; it opens the first two."""
    groups: dict[str, list[str]] = {}
    for tag in sorted(set(tags), key=functools.cmp_to_key(functools.partial(tag_order, breaks=breaks))):
        groups.setdefault(tag.split("/")[0], []).append(tag)
    return list(groups.values())


def hparams_summaries(run) -> dict:
    events = EventMultiplexer().AddRunsFromDirectory(str(run)).Reload().GetAccumulator(".")
    return {tag: HParamsPluginData.FromString(content) for tag, content in events.PluginTagToContent("hparams").items()}


def as_shown(path: str) -> str:
    """docs/outputs.md's promise: a path inside the project relative to its root, one outside it absolute (the home
    dir as ~), never ../.."""
    path = os.path.abspath(path)
    if Path(path).is_relative_to(ROOT):
        return os.path.relpath(path, ROOT)
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if path.startswith(home + os.sep) else path


def assert_tensorboard_opens_on_the_curves(run_dir) -> None:
    """Time Series (scalars and pictures) and Scalars open on the -ELBO curves alone, each a line of several values;
    lr-Adam and beta come after them; the Images dashboard opens on the samples. The final figures are points of the
    `best` sub-run on the charts of the curves, which is HPARAMS's session, whose metric columns read them (the values
    of metrics.json) and fit beside its knob columns in a 1,400 px window; it shows integers as integers."""
    runs = EventMultiplexer().AddRunsFromDirectory(str(run_dir)).Reload()
    assert set(runs.Runs()) == {".", "best"}
    main, best = runs.GetAccumulator("."), runs.GetAccumulator("best")
    scalars, images = {*main.Tags()["scalars"], *best.Tags()["scalars"]}, main.Tags()["images"]
    for tags, breaks in ((scalars | set(images), TIME_SERIES_BREAKS), (scalars, DASHBOARD_BREAKS)):
        groups = dashboard_groups(tags, breaks)
        assert [tag for group in groups[:2] for tag in group] == CURVES, groups
    for tag in CURVES:
        values = [event.value for event in main.Scalars(tag)]
        assert len(set(values)) > 1, f"{tag}: a line, not a point or a flat line"
    assert len(main.Scalars("train/nelbo")) == len(main.Scalars("val/nelbo")) == 2, "the curves, a point per epoch"
    groups = dashboard_groups(scalars, DASHBOARD_BREAKS)
    scheduled = [group for group in groups if "varying/lr-Adam" in group or "varying/beta" in group]
    assert scheduled and groups.index(scheduled[0]) >= 2, "the schedules: charted, after the curves"
    # the warm-up's beta at each epoch's end: epochs done over the 2 warm-up epochs
    assert [event.value for event in main.Scalars("varying/beta")] == [0.5, 1.0]
    # the Images dashboard: the samples first, then the exploration
    cards = [tag for group in dashboard_groups(images, DASHBOARD_BREAKS) for tag in group]
    assert cards[:2] == ["visuals/digits/prior_by_digit", "visuals/digits/reconstructions"], cards
    assert len(cards) > 2 and all(card.startswith("visuals/exploration/") for card in cards[2:])

    metrics = read_json(run_dir / "metrics.json")
    hparams = hparams_summaries(run_dir / "best")
    experiment = hparams["_hparams_/experiment"].experiment
    columns = experiment.metric_infos
    assert [info.display_name for info in columns] == ["val/nelbo", "val/fid", "val/label_acc"]
    assert not [info.name.group for info in columns if info.name.group], "the session's own run: best/"
    for info in columns:
        assert best.Scalars(info.name.tag)[-1].value == np.float32(metrics[info.display_name]), info.display_name
    knobs = [info.name for info in experiment.hparam_infos]
    assert knobs == ["latent_dim", "batch_size"] and not [info for info in experiment.hparam_infos if info.differs]
    width = TRIAL_ID + SHOW_METRICS + COLUMN * (min(TICKED, len(knobs)) + len(columns))
    assert width <= WINDOW - PANEL, "every metric column in view"
    shown = hparams["_hparams_/session_start_info"].session_start_info.hparams
    assert set(shown) == set(yaml.safe_load((run_dir / "hparams.yaml").read_text())), "the session: every knob"
    assert (shown["batch_size"].string_value, shown["latent_dim"].string_value) == ("128", "2")
    assert shown["lr"].number_value == 1e-3


def test_hparams_columns_are_the_knobs_a_sweep_varies():
    """A sweep member's overrides hold one value each: the varied knobs are read from the sweep as launched, Hydra's
    sweeper params (Optuna's search space) and the command line's."""
    search = yaml.safe_load((ROOT / "conf" / "hparams_search" / "optuna.yaml").read_text())["hydra"]["sweeper"]
    params = [f"{key}={value}" for key, value in search["params"].items()]
    assert sweep_keys(params) == ["latent_dim", "batch_size", "lr"]
    typed = ["model.beta=1,4", "trainer.max_epochs=3", "net=mlp,conv", "seed=range(3)", "data.data_dir=../data"]
    assert sweep_keys([*typed, "hydra.launcher.n_jobs=1,2"]) == ["model/beta", "net", "seed"]


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
