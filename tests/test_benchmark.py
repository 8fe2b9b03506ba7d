"""The benchmark's code on a slice of real MNIST: every path runs, the figures are sane, the report holds them.
No timing is asserted: timings belong to the benchmark's own run on a quiet machine."""

import math

import pytest

from cvae import benchmark


@pytest.fixture(scope="module")
def quick(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark") / "benchmark.md"
    args = benchmark.parse_args(
        [
            "--limit",
            "3",
            "--epochs",
            "2",
            "--warmup",
            "1",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--data-dir",
            data_dir,
            "--latent-dim",
            "3",
            "--fid-samples",
            "200",
            "--override",
            "callbacks=model_checkpoint",
        ]
    )
    return args, *benchmark.run(args)


def test_every_path_is_timed_on_the_same_slice(quick):
    args, phases, _, _ = quick
    assert list(phases) == ["a", "b", "c"]
    for phase in phases.values():
        assert len(phase.warmup_s) == 1 and len(phase.epoch_s) == len(phase.cpu_s) == 2
        assert all(s > 0 and math.isfinite(s) for s in [*phase.warmup_s, *phase.epoch_s])
        assert phase.images_per_epoch == 3 * 128
        assert phase.images_per_s > 0
        assert phase.peak_memory and phase.peak_memory > 2**20
        assert 0 < phase.final_nelbo < 600, f"{phase.name}: {phase.final_nelbo} is no plausible nats-per-image figure"
    for name in "bc":  # Lightning runs also time the rest of each epoch: validation, checkpoints, images
        assert len(phases[name].rest_s) == 2 and all(s >= 0 for s in phases[name].rest_s)
        assert any(note.startswith("callbacks:") for note in phases[name].notes)


def test_report_is_a_markdown_table_with_the_ratios_and_the_machine(quick):
    args, phases, extra, text = quick
    lines = text.splitlines()
    assert any(line.startswith("- CPU: ") for line in lines) and any(line.startswith("- software: ") for line in lines)
    rows = [line for line in lines if line.startswith("| (") and ("loop" in line or "Lightning" in line)]
    assert [row.split("|")[1].strip()[:3] for row in rows] == ["(a)", "(b)", "(c)"]
    assert all(len(row.split("|")) == len(rows[0].split("|")) for row in rows)
    assert "| (b) / (a), time per training epoch |" in text and "| (b) speed-up over (c) |" in text
    assert "| FID on 200 samples |" in text
    fid_seconds, note = extra["fid"]
    assert (fid_seconds is None and note.startswith("skipped")) or fid_seconds > 0


def test_main_writes_the_report_where_asked(data_dir, tmp_path, capsys):
    out = tmp_path / "nested" / "bench.md"
    text = benchmark.main(
        [
            "--limit",
            "2",
            "--epochs",
            "1",
            "--warmup",
            "0",
            "--paths",
            "a",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--data-dir",
            data_dir,
            "--fid-samples",
            "100",
        ]
    )
    assert out.read_text() == text
    assert "(a) plain PyTorch loop" in capsys.readouterr().out
    assert "(b)" not in text.split("| check |")[0]


def test_end_to_end_times_train_py_against_five_plain_epochs(data_dir, tmp_path):
    args = benchmark.parse_args(
        [
            "--limit",
            "2",
            "--epochs",
            "1",
            "--warmup",
            "0",
            "--paths",
            "a",
            "--end-to-end",
            "--out",
            str(tmp_path / "b.md"),
            "--device",
            "cpu",
            "--data-dir",
            data_dir,
            "--fid-samples",
            "100",
            "--override",
            "callbacks=model_checkpoint",
        ]
    )
    _, extra, text = benchmark.run(args)
    e2e = extra["end_to_end"]
    assert e2e["wall"] > 0 and e2e["fit"] is not None and 0 < e2e["fit"] < e2e["wall"]
    assert e2e["test_pass"] > 0 and e2e["reference"] > e2e["test_pass"]
    assert e2e["command"].startswith("python train.py trainer.max_epochs=5")
    assert "callbacks=model_checkpoint" in e2e["command"], "the overrides reach the end-to-end run"
    assert "end to end" in text
