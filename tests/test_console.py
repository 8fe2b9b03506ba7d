"""What each entry point prints, read whole, as a new user sees it (issue 37): its own lines and nothing else (no
library INFO line, tip or deprecation), paths relative to where the command ran, and every figure as docs/results.md
writes it: nats to two decimals, FID to one, accuracies in per cent."""

import re

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvae.files import read_json
from tests.conftest import QUICK_EVALUATION, QUICK_RUN, ROOT
from tests.test_train import run_script

# docs/results.md's way of writing each kind of figure, spelled out here apart from the code that prints them
EXPECTED = {
    "nelbo": lambda value: f"{value:.2f}",
    "recon": lambda value: f"{value:.2f}",
    "kl": lambda value: f"{value:.2f}",
    "nll_iw": lambda value: f"{value:.2f}",
    "fid": lambda value: f"{value:.1f}",
    "label_acc": lambda value: f"{100 * value:.2f} %",
    "active_units": lambda value: str(round(value)),
}
TABLE_ROW = re.compile(r"^\| (\S+) +\| +(.+?) \|$")


def table(lines: list[str]) -> dict[str, str]:
    """The rows of the metrics table among the lines: name -> the figure as printed."""
    return {match[1]: match[2] for line in lines if (match := TABLE_ROW.match(line)) and match[1] != "metric"}


def assert_figures_as_documented(printed: dict[str, str], metrics: dict) -> None:
    assert printed, "a table of figures"
    for name, text in printed.items():
        assert text == EXPECTED[name.split("/")[1]](metrics[name]), name


def test_train_prints_its_dir_the_best_checkpoints_figures_and_its_results_and_nothing_else(tmp_path, data_dir):
    result = run_script(
        str(ROOT / "train.py"), *QUICK_RUN, f"data.data_dir={data_dir}", "hydra.run.dir=run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "", "no warning, tip, deprecation or library INFO line"
    lines = result.stdout.splitlines()
    metrics = read_json(tmp_path / "run" / "metrics.json")
    printed = table(lines)
    assert set(printed) == {name for name in metrics if name.count("/") == 1}, "every overall figure, once"
    folders = [line for line in lines if line.startswith("    ") and "/: " in line]
    listed = [f"{folder}/{name}" for line in folders for folder, names in [line.strip().split("/: ")]
              for name in names.split(", ")]  # fmt: skip
    drawn = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 1}).Reload().Tags()["images"]
    assert sorted(listed) == sorted(drawn) and len(drawn) > 2, "every picture the run drew, as TensorBoard shows it"
    assert_figures_as_documented(printed, metrics)
    assert (
        lines
        == [
            "train: writing to run/",
            "the best checkpoint's figures (each digit's and each latent dimension's in metrics.json):",
            *lines[2 : 4 + len(printed)],  # the table: its header, its rule and the rows checked above
            "results in run/:",
            "  run/metrics.json",
            "  run/checkpoints/best.ckpt",
            "  run/checkpoints/last.ckpt",
            "  pictures (TensorBoard's Images tab):",
            *lines[-len(folders) - 1 : -1],  # a line per folder of pictures, checked below
            "  tensorboard --logdir run   # curves, pictures, HPARAMS, Projector",
        ]
    )
    assert "GPU available" in (tmp_path / "run" / "train.log").read_text(), "Lightning's INFO lines: in the log"

    resumed = run_script(
        str(ROOT / "train.py"), *QUICK_RUN, "trainer.max_epochs=3", f"data.data_dir={data_dir}",
        "hydra.run.dir=run", "resume.auto=true", cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0 and resumed.stderr == "", resumed.stderr[-3000:]
    assert resumed.stdout.splitlines()[:2] == ["train: writing to run/", "resuming from run/checkpoints/last.ckpt"]


def test_evaluate_prints_its_dir_its_figures_and_its_results_and_nothing_else(trained_run, data_dir, tmp_path):
    output_dir, _ = trained_run
    ckpt = output_dir / "checkpoints" / "best.ckpt"
    overrides = [f"ckpt_path={ckpt}", f"data.data_dir={data_dir}", "hydra.run.dir=evaluation"]
    result = run_script(str(ROOT / "evaluate.py"), *QUICK_EVALUATION, *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "", "no warning, tip, deprecation or library INFO line"
    lines = result.stdout.splitlines()
    metrics = read_json(tmp_path / "evaluation" / "metrics.json")
    printed = table(lines)
    assert {"test/fid", "test/label_acc", "test/nll_iw"} <= set(printed)
    assert_figures_as_documented({name: text for name, text in printed.items() if name.count("/") == 1}, metrics)
    digit = printed["test/label_acc_digit/3"]
    assert digit == f"{100 * metrics['test/label_acc_digit/3']:.2f} %", "per digit in the same unit"
    assert lines == [
        "evaluate: writing to evaluation/",
        *lines[1 : 3 + len(printed)],
        "results in evaluation/:",
        "  evaluation/metrics.json",
        "  evaluation/samples.png",
    ]


def test_the_benchmark_prints_its_progress_and_its_report_and_nothing_else(tmp_path, data_dir):
    """On stderr its own timeline; on stdout the progress bar of the (b) run it times (train.py's own bar), then the
    report it writes to --out."""
    out = tmp_path / "report.md"
    command = ["-m", "benchmarks.speed", "--limit", "3", "--epochs", "1", "--warmup", "0", "--paths", "ab"]
    result = run_script(*command, "--fid-samples", "100", "--data-dir", data_dir, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    timeline = result.stderr.splitlines()
    assert timeline and all(line.startswith("[benchmark ") for line in timeline), result.stderr
    ending = out.read_text() + "\n" + f"written to {out}\n"
    assert result.stdout.endswith(ending)
    bar = re.compile(r"^(.*\d+/(\d+|\?) \[[^\]]*\])?\s*(\x1b\[A)?$")  # a bar, a blank or a cursor move
    redraws = re.split(r"[\r\n]", result.stdout[: -len(ending)])
    assert [line for line in redraws if not bar.match(line)] == []
