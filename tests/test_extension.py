"""Issue 25's promise: docs/contributing.md gives a network, a callback, a metric and a logger each as exact steps,
new files only, and this test follows those steps literally. In a temporary copy of the repository (its working
tree as it is now, committed in a git repository of its own) it writes every code block of the four recipes to
the file its step names, composes each recipe's command alone (`--cfg job`), and runs the copy's own entry points:
the network trains, resumes exactly, evaluates (FID, label accuracy, digits=), runs in a 2-member sweep and
under trainer=ddp_cpu; the callback's train/grad_norm, the metric's val/recon_mse (against the same figure
computed here from the checkpoint, in one process and across DDP ranks) and the logger's CSV files are read back
from one run of the four together, as the doc says. `git status` of the copy then shows the recipes' files and
nothing else."""

import csv
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvae.data.mnist import MNISTDataModule, split_tensors
from cvae.loggers.tensorboard import tensorboard_tag
from tests.conftest import QUICK_RUN, ROOT

DOC = ROOT / "docs" / "contributing.md"
RECIPES = ("A network", "A callback", "A metric", "A logger")
# what the callback, the metric and the logger recipes promise to write
GRAD_NORM, RECON_MSE, CSV_DIR = "train/grad_norm", "val/recon_mse", "metrics_csv"
# QUICK_RUN: 2 epochs of 5 batches (log_every_n_steps=1), 2 validation batches of 1000, FID on 1000 samples
QUICK = [*QUICK_RUN, "trainer.limit_test_batches=2"]
STEPS_PER_EPOCH, VAL_BATCHES, EVAL_BATCH_SIZE = 5, 2, 1000
DIGITS, VARIANTS = "123", 4

# log_final hands a CSVLogger its final metrics after the trainer's last flush of the logger, and nothing saves
# them; the check below passes as soon as they reach metrics.csv

# `1. `path`, what it is:` or `3. `python train.py ...`` at the start of a line, then the step's indented text
STEP = re.compile(r"^(\d+)\. `([^`]+)`")
FENCE = re.compile(r"^\s*```")


@dataclass
class Recipe:
    files: dict[str, str] = field(default_factory=dict)  # path in the repository -> its whole content
    command: list[str] = field(default_factory=list)  # the arguments of `python train.py ...`
    variants: list[str] = field(default_factory=list)  # further key=value overrides the command's step names


def read_recipes(text: str) -> dict[str, Recipe]:
    """Each `### <recipe>` section's numbered steps: a step naming a file is followed by a fenced block, its
    whole content (dedented); the step naming `python train.py ...` is the command, the other `key=value`s it
    names are variants of it."""
    recipes = {}
    for section in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        title, _, body = section.partition("\n")
        if title.strip() not in RECIPES:
            continue
        recipe, path, block = Recipe(), None, None
        for line in body.splitlines():
            if block is not None:  # inside a fenced block
                if FENCE.match(line):
                    if path is not None:  # a block under no step naming a file is an example of the prose
                        assert path not in recipe.files, f"{title}: {path} named twice"
                        recipe.files[path] = textwrap.dedent("\n".join(block)) + "\n"
                    path, block = None, None
                else:
                    block.append(line)
            elif FENCE.match(line):
                block = []
            elif step := STEP.match(line):
                assert path is None, f"{title}: step {step[1]} follows {path} before its code block"
                if step[2].startswith("python "):
                    assert not recipe.command, f"{title}: two commands"
                    python, script, *recipe.command = shlex.split(step[2])
                    assert (python, script) == ("python", "train.py"), step[2]
                    recipe.variants = [v for v in re.findall(r"`([^`]+)`", line)[1:] if re.match(r"^[\w.]+=", v)]
                else:
                    path = step[2]
        assert block is None and path is None, f"{title}: {path} has no closed code block"
        recipes[title.strip()] = recipe
    return recipes


RECIPE_STEPS = read_recipes(DOC.read_text())
NEW_FILES = sorted(path for recipe in RECIPE_STEPS.values() for path in recipe.files)
# the network recipe's config, e.g. conf/net/tiny.yaml: the name its command selects, the net config it holds
NET_CONFIG_FILE = next(path for path in RECIPE_STEPS["A network"].files if path.startswith("conf/net/"))
MODEL = Path(NET_CONFIG_FILE).stem
NET_CONFIG = yaml.safe_load(RECIPE_STEPS["A network"].files[NET_CONFIG_FILE])
NET_FILE = NET_CONFIG["_target_"].rsplit(".", 1)[0].replace(".", "/") + ".py"


def merged_overrides(*commands: list[str]) -> list[str]:
    """One command of several: `callbacks=[default,a]` and `callbacks=[default,b]` give `callbacks=[default,a,b]`."""
    overrides: dict[str, str] = {}
    for command in commands:
        for argument in command:
            key, _, value = argument.partition("=")
            if key in overrides and value.startswith("["):
                items = overrides[key].strip("[]").split(",")
                items += [item for item in value.strip("[]").split(",") if item not in items]
                value = f"[{','.join(items)}]"
            overrides[key] = value
    return [f"{key}={value}" for key, value in overrides.items()]


NETWORK = RECIPE_STEPS["A network"].command
# the four recipes in one run: the network trained with the new callback and metric, logged by the new logger
ALL = merged_overrides(*(RECIPE_STEPS[title].command for title in RECIPES))


def git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout


def copy_working_tree(destination: Path) -> None:
    """The files git tracks or would track (committed or not, ignored ones left out: no .venv, no outputs)."""
    listed = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if source.is_file():  # a tracked file deleted in the working tree is no part of it
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / relative)


@pytest.fixture(scope="module")
def project(tmp_path_factory, data_dir):
    """The copy with the recipes' files written, and a function running a command in it as a user would."""
    copy = tmp_path_factory.mktemp("extension") / "repo"
    copy.mkdir()
    copy_working_tree(copy)
    git(copy, "init", "--quiet")
    git(copy, "add", "--all")
    git(copy, "commit", "--quiet", "--no-verify", "-m", "the repository as it is")
    for path in NEW_FILES:
        assert not (copy / path).exists(), f"{path} is no new file"
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        (copy / path).write_text(next(r.files[path] for r in RECIPE_STEPS.values() if path in r.files))
    # nothing trusted beyond the project's own targets: the recipes' code lives under cvae/
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "CVAE_TRUSTED_TARGETS")}
    # one thread a process: these tiny runs gain nothing from more, and lose several times over on a busy machine
    env.update(CVAE_DATA_DIR=data_dir, PROJECT_ROOT=str(copy), OMP_NUM_THREADS="1")

    def run(*args: str) -> subprocess.CompletedProcess:
        # cwd and the script's own dir are the copy: its cvae is imported, not the checkout's installed one
        result = subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        return result

    return copy, run


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """Where the runs write: outside the copy."""
    return tmp_path_factory.mktemp("extension_runs")


@pytest.fixture(scope="module")
def trained(project, outputs) -> Path:
    """An uninterrupted 2-epoch run of the four recipes together."""
    _, run = project
    run_dir = outputs / "trained"
    run("train.py", *ALL, *QUICK, f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.fixture(scope="module")
def val_split(data_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation images (uint8) and labels, in the order the runs validate them."""
    datamodule = MNISTDataModule(data_dir=data_dir, download=False)
    datamodule.setup()
    return split_tensors(datamodule, "val")


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def load_checkpoint(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def recipe_network(copy: Path, net_config: dict) -> torch.nn.Module:
    """The network class as the recipe wrote it into the copy, built with a checkpoint's net config."""
    spec = importlib.util.spec_from_file_location("recipe_network", copy / NET_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    arguments = {key: value for key, value in net_config.items() if key != "_target_"}
    return getattr(module, net_config["_target_"].rsplit(".", 1)[1])(**arguments)


def reconstruction_mse(copy: Path, checkpoint: Path, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The metric's figure, computed here: pixels against the decoding at the posterior mean, float64 sums."""
    saved = load_checkpoint(checkpoint)
    net = recipe_network(copy, saved["hyper_parameters"]["net"])
    net.load_state_dict({key.removeprefix("net."): value for key, value in saved["state_dict"].items()})
    x = images.flatten(1).float() / 255
    with torch.no_grad():
        mu, _ = net.encode(x, labels)
        decoded = torch.sigmoid(net.decode(mu, labels))
    return (x.double() - decoded.double()).pow(2).mean().item()


def csv_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Each metric of the new logger's metrics.csv as (step, value) pairs."""
    with (run_dir / CSV_DIR / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for name, value in row.items():
            if name != "step" and value != "":
                series.setdefault(name, []).append((int(row["step"]), float(value)))
    return series


def tensorboard_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_the_doc_gives_each_recipe_as_new_files_and_a_command():
    assert set(RECIPE_STEPS) == set(RECIPES)
    for title, recipe in RECIPE_STEPS.items():
        assert recipe.files and recipe.command, title
    assert len(NEW_FILES) == len(set(NEW_FILES))
    assert NET_FILE in RECIPE_STEPS["A network"].files
    assert f"net={MODEL}" in NETWORK


@pytest.mark.parametrize("title", RECIPES)
def test_each_command_composes_alone(project, title):
    """The recipe's command as the doc gives it: its config files are in the config; with its variants too."""
    _, run = project
    recipe = RECIPE_STEPS[title]
    composed = OmegaConf.create(run("train.py", *recipe.command, "--cfg", "job").stdout)
    for path, content in recipe.files.items():
        if path.startswith("conf/"):
            # where the file lands: its group, or what its `# @package` line names (conf/net/: model.net)
            group = Path(path).parent.relative_to("conf").as_posix().replace("/", ".")
            header = re.match(r"# @package (\S+)", content)
            group = header[1] if header else group
            for key, value in yaml.safe_load(content).items():
                assert OmegaConf.to_container(OmegaConf.select(composed, group))[key] == value, (path, key)
    if recipe.variants:
        composed = OmegaConf.create(run("train.py", *recipe.command, *recipe.variants, "--cfg", "job").stdout)
        for variant in recipe.variants:
            key, _, value = variant.partition("=")
            assert OmegaConf.select(composed, key) == yaml.safe_load(value), variant


def test_the_network_trains(trained):
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    saved = load_checkpoint(trained / "checkpoints" / "best.ckpt")["hyper_parameters"]["net"]
    assert saved == {**NET_CONFIG, "latent_dim": 2}
    results = metrics(trained)
    assert results["epochs"] == 2
    for name in ("val/nelbo", "test/nelbo", "val/fid", "val/label_acc"):
        assert math.isfinite(results[name]), name
    assert 0 < results["test/nelbo"] < 600


def test_the_callback_logs_the_gradient_norm_every_step(trained):
    for series in (csv_series(trained), tensorboard_series(trained)):
        norms = series[GRAD_NORM]
        assert [step for step, _ in norms] == list(range(2 * STEPS_PER_EPOCH))
        assert all(math.isfinite(norm) and norm > 0 for _, norm in norms), norms


def test_the_metric_is_logged_and_matches_the_checkpoint(project, trained, val_split):
    copy, _ = project
    results = metrics(trained)
    # measured again on the best checkpoint: the first VAL_BATCHES batches of the validation split, unshuffled
    images, labels = (tensor[: VAL_BATCHES * EVAL_BATCH_SIZE] for tensor in val_split)
    expected = reconstruction_mse(copy, trained / results["best_checkpoint"], images, labels)
    assert 0 < expected < 0.25
    assert results[RECON_MSE] == pytest.approx(expected, rel=1e-5)
    # and every epoch, to every logger
    for series in (csv_series(trained), tensorboard_series(trained)):
        values = [value for _, value in series[RECON_MSE]]
        assert len(values) == 2 and all(0 < value < 0.25 for value in values), values
    assert expected in [pytest.approx(value, rel=1e-5) for value in values]  # the epoch of the best checkpoint


def test_the_logger_gets_every_scalar_the_hparams_and_the_final_metrics(trained):
    logged, shown = csv_series(trained), tensorboard_series(trained)
    # TensorBoard's names of the metrics (cvae/loggers/tensorboard.py: the -ELBO curves first)
    charted = {tensorboard_tag(name): name for name in logged if not name.startswith("final/")}
    charted.pop(None, None)
    assert {GRAD_NORM, RECON_MSE, "train/nelbo", "val/nelbo"} <= set(shown) <= set(charted)
    for tag, series in shown.items():
        name = charted[tag]
        assert [step for step, _ in logged[name]] == [step for step, _ in series], name
        assert [value for _, value in logged[name]] == pytest.approx([value for _, value in series], rel=1e-6), name
    hparams = yaml.safe_load((trained / CSV_DIR / "hparams.yaml").read_text())
    assert (hparams["latent_dim"], hparams["net"], hparams["global_batch_size"]) == (2, MODEL, 128)
    final = sorted(name for name in logged if name.startswith("final/"))
    assert "final/val/nelbo" in final, "the final metrics reach the CSV (TensorBoard: its `best` sub-run)"
    results = metrics(trained)
    for name in final:
        assert logged[name][-1][1] == pytest.approx(results[name.removeprefix("final/")], rel=1e-6), name


def test_it_resumes_as_the_uninterrupted_run(project, outputs, trained):
    _, run = project
    run_dir = outputs / "resumed"
    run("train.py", *ALL, *QUICK, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert metrics(run_dir)["epochs"] == 1
    last = run_dir / "checkpoints" / "last.ckpt"
    run("train.py", *ALL, *QUICK, f"ckpt_path={last}", f"hydra.run.dir={run_dir}")
    assert metrics(run_dir)["epochs"] == 2
    assert (run_dir / "metrics.json").read_bytes() == (trained / "metrics.json").read_bytes()


def test_it_evaluates(project, outputs, trained):
    _, run = project
    evaluation = outputs / "evaluation"
    run(
        "evaluate.py",
        f"ckpt_path={trained / 'checkpoints' / 'best.ckpt'}",
        f"digits={DIGITS}",
        f"variants={VARIANTS}",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "quality.num_samples=1000",
        "quality.iw_samples=5",
        "picture_scale=1",  # actual size: 28-pixel cells, right of the row labels
        f"hydra.run.dir={evaluation}",
    )
    results = metrics(evaluation)
    for name in ("test/nelbo", "test/nll_iw", "test/fid", "test/label_acc"):
        assert math.isfinite(results[name]), name
    assert 0 <= results["test/label_acc"] <= 1
    # a grid of VARIANTS rows of the len(DIGITS) digits, 28 pixels each and 2-pixel lines around them
    with Image.open(evaluation / "digits.png") as digits:
        assert digits.format == "PNG"
        label_width = digits.width - (len(DIGITS) * 30 + 2)
        assert digits.height == VARIANTS * 30 + 2 and label_width > 0
        grey = digits.convert("L")
    for row in range(VARIANTS):
        for column in range(len(DIGITS)):
            left, top = label_width + 2 + 30 * column, 2 + 30 * row
            darkest, brightest = grey.crop((left, top, left + 28, top + 28)).getextrema()
            assert brightest - darkest > 32, f"digits.png: the cell of row {row}, column {column} holds no drawing"


def test_it_runs_in_a_sweep(project, outputs):
    copy, run = project
    sweep = outputs / "sweep"
    run("train.py", "-m", *NETWORK, *QUICK, "trainer.max_epochs=1", "latent_dim=2,3", f"hydra.sweep.dir={sweep}")
    for job, latent_dim in (("0", 2), ("1", 3)):
        assert metrics(sweep / job)["epochs"] == 1
        checkpoint = load_checkpoint(sweep / job / "checkpoints" / "best.ckpt")
        # the config a checkpoint is rebuilt from (as test_it_evaluates loads it), and weights to match
        assert checkpoint["hyper_parameters"]["net"] == {**NET_CONFIG, "latent_dim": latent_dim}
        built = recipe_network(copy, checkpoint["hyper_parameters"]["net"]).state_dict()
        saved = {key.removeprefix("net."): value for key, value in checkpoint["state_dict"].items()}
        assert {key: value.shape for key, value in saved.items() if key in built} == {
            key: value.shape for key, value in built.items()
        }


def test_it_trains_under_ddp(project, outputs, val_split):
    """The four recipes under DDP: the metric's states summed over the two ranks' halves of the batches."""
    copy, run = project
    run_dir = outputs / "ddp"
    run("train.py", *ALL, *QUICK, "trainer=ddp_cpu", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    results = metrics(run_dir)
    assert (results["world_size"], results["epochs"]) == (2, 1)
    assert math.isfinite(results["test/nelbo"])
    best = run_dir / results["best_checkpoint"]
    assert load_checkpoint(best)["hyper_parameters"]["net"]["_target_"] == NET_CONFIG["_target_"]
    # rank r validates images r, r + 2, ...: VAL_BATCHES batches each, so together the first 2 x that many
    images, labels = (tensor[: 2 * VAL_BATCHES * EVAL_BATCH_SIZE] for tensor in val_split)
    assert results[RECON_MSE] == pytest.approx(reconstruction_mse(copy, best, images, labels), rel=1e-5)
    assert len(csv_series(run_dir)[GRAD_NORM]) == STEPS_PER_EPOCH  # one epoch's steps, logged once (rank 0)


def test_the_copy_differs_by_the_recipes_files_alone(project):
    """Last in the file: after every run above, which wrote outside the copy."""
    copy, _ = project
    status = git(copy, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert sorted(status) == [f"?? {path}" for path in NEW_FILES]
