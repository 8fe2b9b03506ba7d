"""The benchmark on a slice of real MNIST: the paths alternate a b a b, (a) trains exactly the model (b) trains, the
median/spread arithmetic and verdicts, the end-to-end orchestration; and what the progress bar and the logger show of
a training step. No timing is asserted: timings belong to the benchmark's own run on a quiet machine."""

import json
import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks import speed as benchmark
from cvae.data.mnist import MNISTDataModule
from cvae.model.mlp import MLP
from tests.conftest import QUICK_RUN_ANY_CALLBACKS, compose_config

# one epoch of (b) is 3 batches without validation: neither a sanity check nor validation draws random numbers,
# so (a) and (b) see the same random stream and must end with the same weights
SLICE = ["--limit", "3", "--device", "cpu", "--latent-dim", "3", "--fid-samples", "100"]
NO_VALIDATION = ["callbacks=none", "trainer.limit_val_batches=0", "+trainer.num_sanity_val_steps=0"]


@pytest.fixture(scope="module")
def alternated(data_dir, tmp_path_factory):
    overrides = [arg for override in NO_VALIDATION for arg in ("--override", override)]
    out = tmp_path_factory.mktemp("benchmark") / "benchmark.md"
    args = benchmark.parse_args(
        [
            *SLICE,
            "--paths",
            "ab",
            "--warmup",
            "1",
            "--epochs",
            "2",
            "--data-dir",
            data_dir,
            "--out",
            str(out),
            *overrides,
        ]
    )
    return args, *benchmark.run(args)


def test_paths_alternate_epoch_by_epoch(alternated):
    _, phases, extra, _ = alternated
    assert extra["timeline"] == ["a", "b"] * 3
    assert len(phases["b"].warmup_s) == 1 and len(phases["b"].epoch_s) == len(phases["b"].floor_s) == 2
    assert phases["a"].epoch_s == phases["b"].floor_s, "(a)'s row holds the epochs that alternated with (b)"
    assert phases["b"].ratios.values == [b / a for b, a in zip(phases["b"].epoch_s, phases["b"].floor_s)]
    assert all(s > 0 and math.isfinite(s) for s in [*phases["a"].epoch_s, *phases["b"].epoch_s])
    assert phases["a"].images_per_epoch == phases["b"].images_per_epoch == 3 * 128


def test_lightnings_cost_per_step_and_the_rest_of_an_epoch(alternated):
    """The extra ms per optimizer step is (b) - (a) of neighbouring epochs over the 3 steps; the rest of an epoch
    (here no validation, no callbacks) ends with the epoch's last hook, not with the next (a) epoch."""
    _, phases, _, _ = alternated
    b = phases["b"]
    assert b.steps_per_epoch == 3
    assert b.extra_ms_per_step.values == [1000 * (s - a) / 3 for s, a in zip(b.epoch_s, b.floor_s)]
    assert max(b.rest_s) < min(b.floor_s), "the next epoch's plain loop is no part of this epoch's rest"


def test_plain_loop_trains_the_model_lightning_trains(alternated):
    """Same initial weights, batches, loss and Adam: after 3 epochs of 3 steps the weights agree, so the floor is
    the same work; alternating the two in one process disturbed neither's random stream."""
    _, _, extra, _ = alternated
    plain, lightning = extra["models"]["a"].state_dict(), extra["models"]["b"].state_dict()
    assert plain.keys() == lightning.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], lightning[name], rtol=0, atol=1e-4, msg=name)
    initial = MLP(3, [512, 256]).state_dict()
    assert not torch.equal(initial["encoder.0.weight"], plain["encoder.0.weight"]), "it trained"


def test_report_has_the_table_the_ratio_and_its_verdict(alternated):
    _, phases, extra, text = alternated
    rows = [line for line in text.splitlines() if line.startswith("| (")]
    assert [row.split("|")[1].strip()[:3] for row in rows[:2]] == ["(a)", "(b)"]
    ratio = phases["b"].ratios
    low, high = ratio.low_high
    assert f"| (b) / (a), time per training epoch | {ratio.median:.2f} (range {low:.2f}–{high:.2f}, n=2)" in text
    assert f"| ≤ 1.08 | {ratio.verdict(1.08)} |" in text, "the default model's target"
    extra_ms = phases["b"].extra_ms_per_step
    assert f"| {extra_ms.text()} |" in text
    assert f"| {extra_ms.text()} | ≤ 1.0 | {extra_ms.verdict(1.0)} |" in text, "Lightning's extra per step, its target"
    fid_seconds, _ = extra["fid"]
    assert len(fid_seconds.values) == 5, "--fid-repeats' default"
    assert f"| FID on 100 samples, s | {fid_seconds.text()} (" in text and "- CPU: " in text


def test_the_plain_split_is_the_datamodules(data_dir):
    datamodule = MNISTDataModule(data_dir, download=False)
    datamodule.setup()
    plain = benchmark.load_mnist(data_dir)
    for split in ("train", "val", "test"):
        for mine, theirs in zip(plain[split], datamodule.splits[split]):
            assert torch.equal(mine, theirs), split


@pytest.mark.parametrize(
    ("values", "target", "verdict"),
    [
        ([1.00, 1.01, 1.02, 1.03, 1.20], 1.05, "yes"),  # one outlier stays outside the IQR
        ([1.10, 1.20, 1.30, 1.40], 1.05, "**no**"),
        ([1.00, 1.04, 1.06, 1.10], 1.05, "unclear: the spread straddles the target"),
        ([1.01, 1.07], 1.05, "unclear: the spread straddles the target"),  # under 4 values: min to max
    ],
)
def test_median_spread_and_verdict_on_known_values(values, target, verdict):
    spread = benchmark.Spread(values)
    assert spread.median == pytest.approx(np.median(values))
    expected = np.percentile(values, [25, 75]) if len(values) >= 4 else (min(values), max(values))
    assert spread.low_high == pytest.approx(tuple(expected))
    assert spread.verdict(target) == verdict


def test_end_to_end_alternates_processes_and_divides_matching_runs(data_dir, monkeypatch):
    """The orchestration with stand-in processes of known durations: plain, train, then train, plain, ...; each
    train.py run over the plain run of its pair."""
    args = benchmark.parse_args([*SLICE, "--data-dir", data_dir, "--repeats", "3", "--override", "callbacks=none"])
    walls = iter([10.0, 11.0, 18.0, 12.0, 10.0, 12.0])
    ran = []

    def stand_in(command, env):
        ran.append(command)
        if "train.py" in command:
            run_dir = next(arg.split("=", 1)[1] for arg in command if arg.startswith("hydra.run.dir="))
            benchmark.Path(run_dir).mkdir(parents=True)
            (benchmark.Path(run_dir) / "timing.json").write_text(json.dumps({"fit_seconds": 5.0}))
            return next(walls), None
        fake = json.dumps({"train_s": 6.0, "test_s": 1.0, "in_script_s": 8.0, "train_nelbo": 1, "test_nelbo": 1})
        return next(walls), type("Done", (), {"stdout": fake})()

    monkeypatch.setattr(benchmark, "run_child", stand_in)
    result = benchmark.end_to_end(7, args)
    assert ["train.py" in command for command in ran] == [False, True, True, False, False, True]
    assert result.ratios.values == pytest.approx([1.1, 1.5, 1.2])
    assert result.ratios.median == pytest.approx(1.2)
    assert result.command == "python train.py trainer.max_epochs=7 trainer.limit_train_batches=3 " + (
        "trainer.limit_val_batches=3 trainer.limit_test_batches=3 callbacks=none"
    )
    plain_args = benchmark.parse_args(ran[0][3:])  # the plain process gets this run's settings
    assert (plain_args.plain_script, plain_args.limit, plain_args.latent_dim) == (7, 3, 3)
    assert "fit 5.0 s" in benchmark.end_to_end_notes(result)[0]


def test_plain_script_trains_and_tests_each_epoch(data_dir, capsys):
    benchmark.main([*SLICE, "--data-dir", data_dir, "--plain-script", "2"])
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["train_s"] > 0 and done["test_s"] > 0 and done["in_script_s"] > done["train_s"] + done["test_s"]
    assert 100 < done["test_nelbo"] < 600, "the mean -ELBO of 3,000 test images, nats per image"


# ------------------------------------------------------------------------ what the bar and the logger show
def fit_quick(data_dir, output_dir) -> tuple[list, list, list]:
    """A seeded 2-epoch run of 12 batches with a progress bar redrawn every 10: each step's loss, what the bar
    showed (its count and train/nelbo_step) each time it redrew, and the train/nelbo_step events the logger wrote."""
    import pytorch_lightning as pl

    from cvae.model.checkpoint import build_module
    from cvae.run.train import build_trainer
    from cvae.trust import instantiate, instantiate_group

    overrides = [*QUICK_RUN_ANY_CALLBACKS, "callbacks=none", "trainer.limit_train_batches=12"]
    overrides += ["trainer.log_every_n_steps=3", "trainer.enable_progress_bar=true", f"data.data_dir={data_dir}"]
    cfg = compose_config("train", overrides, output_dir)
    losses, shown = [], []

    class BarWatcher(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].item())
            bar = trainer.progress_bar_callback
            if (batch_idx + 1) % bar.refresh_rate == 0 or batch_idx + 1 == trainer.num_training_batches:
                value = bar.get_metrics(trainer, pl_module).get("train/nelbo_step")
                shown.append((bar.train_progress_bar.n, value))

    pl.seed_everything(cfg.seed)
    trainer = build_trainer(cfg, instantiate_group(cfg.logger))
    trainer.callbacks.append(BarWatcher())
    trainer.fit(build_module(cfg.model), datamodule=instantiate(cfg.data))
    events = EventAccumulator(str(output_dir), size_guidance={"scalars": 0}).Reload()
    return losses, shown, [(event.step, event.value) for event in events.Scalars("train/nelbo_step")]


def test_the_logger_and_the_bar_show_the_nelbo_of_one_step(data_dir, tmp_path):
    """train/nelbo_step is the -ELBO of a single optimizer step (with beta 1 and no free bits, the loss it
    returned), not a running mean: the logger writes it every log_every_n_steps-th step, and the bar, which counts
    optimizer steps, shows the value of the step it redrew after."""
    losses, shown, logged = fit_quick(data_dir, tmp_path)
    assert len(losses) == 24
    assert [step for step, _ in logged] == [s for s in range(24) if (s + 1) % 3 == 0]
    assert [value for _, value in logged] == pytest.approx([losses[step] for step, _ in logged], rel=1e-6)
    assert [n for n, _ in shown] == [10, 12, 10, 12]
    assert [float(value) for _, value in shown] == pytest.approx([losses[s] for s in (9, 11, 21, 23)], rel=1e-6)
