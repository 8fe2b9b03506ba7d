"""Every file a user passes, or that lies beside one, is read as data and checked: a damaged or crafted file ends
in one line (or, for the mixture fit, a refit with a note), and a pickled payload in any of them never runs."""

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from cvae.errors import CheckpointError, DataError
from cvae.metrics.inception import standard_inception
from cvae.model.checkpoint import load_module, read_checkpoint
from cvae.model.mlp import MLP
from cvae.run.evaluate import evaluate
from cvae.run.train import train
from cvae.sampling.gmm import GaussianMixtureSampler, read_fit
from tests.conftest import QUICK_EVALUATION, QUICK_RUN, compose_config
from tests.test_failures import expect_one_line_exit
from tests.test_run_dirs import mounted_tmpfs


class Payload:
    """Unpickled, it creates `proof`: what a crafted file would do with torch.load(weights_only=False)."""

    def __init__(self, proof: Path):
        self.proof = proof

    def __reduce__(self):
        return (os.system, (f"touch {self.proof}",))


def with_hyperparameters(good: Path, path: Path, changes: dict) -> Path:
    """A copy of a good checkpoint with some hyperparameters changed: "net.<key>" changes the network's config."""
    checkpoint = torch.load(good, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    net = {**hparams["net"], **{key[4:]: value for key, value in changes.items() if key.startswith("net.")}}
    changes = {key: value for key, value in changes.items() if not key.startswith("net.")}
    torch.save({**checkpoint, "hyper_parameters": {**hparams, "net": net, **changes}}, path)
    return path


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"dropout": 0.5}, "holds hyperparameters this version of cvae does not know (dropout)"),
        ({"net.latent_dim": -1}, "holds a bad hyperparameter: latent_dim=-1 is not allowed"),
        ({"net.latent_dim": "abc"}, "holds a bad hyperparameter: latent_dim='abc' is not allowed"),
        ({"net.hidden_dims": [2_000_000_000]}, "describes a model of about 3.2e+12 parameters"),
        ({"net.hidden_dims": "abc"}, "holds a bad hyperparameter: model.net.hidden_dims='abc' is not allowed"),
        ({"net.depth": 3}, "unexpected keyword argument 'depth'"),
        ({"net._target_": "cvae.model.rnn.RNN"}, "net._target_=cvae.model.rnn.RNN cannot be found"),
        ({"net._target_": "os.system"}, "holds a bad hyperparameter: "),
        ({"beta": -1}, "holds a bad hyperparameter: model.beta=-1 is not allowed"),
    ],
)
def test_checkpoint_hyperparameters_are_checked_before_a_model_is_built(changes, said, trained_run, tmp_path, capsys):
    ckpt = with_hyperparameters(trained_run[0] / "checkpoints" / "best.ckpt", tmp_path / "crafted.ckpt", changes)
    with pytest.raises(CheckpointError, match=said.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        load_module(ckpt)  # no allocation of terabytes: it would not come back
    evaluation = compose_config("evaluate", [f"ckpt_path={ckpt}", *QUICK_EVALUATION], tmp_path / "evaluation")
    assert said in expect_one_line_exit(capsys, evaluate, evaluation)


def test_flipped_bytes_in_a_checkpoint_are_called_corruption_not_code(trained_run, tmp_path, capsys, data_dir):
    data = bytearray((trained_run[0] / "checkpoints" / "last.ckpt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the weights: torch.load itself would read other weights without a word
    ckpt = tmp_path / "flipped.ckpt"
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"is truncated or corrupted \(archive/data/\d+ fails its checksum\)"):
        read_checkpoint(ckpt)
    resume = compose_config(
        "train", [*QUICK_RUN, "latent_dim=3", f"ckpt_path={ckpt}", f"data.data_dir={data_dir}"], tmp_path / "run"
    )
    assert "fails its checksum" in expect_one_line_exit(capsys, train, resume)


@pytest.fixture(scope="module")
def small_fit_inputs():
    """A 3-d model and 200 images (20 per digit): enough for a 2-component fit in a moment."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (200, 28, 28), dtype=torch.uint8)
    return MLP(latent_dim=3).eval(), images, torch.arange(10).repeat(20)


def fit_path(ckpt: Path) -> Path:
    return ckpt.with_name(f"{ckpt.name}.gmm2_full_seed0.pt")


def bad_fit(kind: str, good: Path, path: Path, proof: Path) -> None:
    saved = torch.load(good, weights_only=True)
    mixture = saved["mixture"]
    contents = {
        "list": [1, 2, 3],
        "no_mixture": {"settings": saved["settings"]},
        "wrong_shape": {**saved, "mixture": {**mixture, "means": mixture["means"][..., :2]}},
        "float32": {**saved, "mixture": {key: value.float() for key, value in mixture.items()}},
        "nan": {**saved, "mixture": {**mixture, "scale_tril": mixture["scale_tril"] * float("nan")}},
        "payload": {**saved, "mixture": Payload(proof)},
    }
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:300])
    else:
        torch.save(contents[kind], path)


@pytest.mark.parametrize("kind", ["truncated", "list", "no_mixture", "wrong_shape", "float32", "nan", "payload"])
def test_a_bad_saved_mixture_fit_is_refitted_with_a_note(kind, small_fit_inputs, tmp_path, capsys):
    model, images, labels = small_fit_inputs
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"the checkpoint")
    GaussianMixtureSampler(components=2).fit_for_checkpoint(model, images, labels, ckpt)
    good = tmp_path / "good.pt"
    fit_path(ckpt).rename(good)
    bad_fit(kind, good, fit_path(ckpt), tmp_path / "code_ran")
    capsys.readouterr()

    sampler = GaussianMixtureSampler(components=2).fit_for_checkpoint(model, images, labels, ckpt)
    out = capsys.readouterr().out
    assert f"ex-post mixture: {fit_path(ckpt)} " in out and "; refitting" in out
    assert sampler.mixture["means"].shape == (10, 2, 3)
    assert read_fit(fit_path(ckpt), latent_dim=3, components=2)[1] is None, "the bad file was replaced by the fit"
    assert not (tmp_path / "code_ran").exists(), "reading the fit ran code from it"


def test_a_read_only_checkpoint_folder_keeps_the_fit_for_this_evaluation(small_fit_inputs, tmp_path, capsys):
    model, images, labels = small_fit_inputs
    with mounted_tmpfs(tmp_path / "readonly", "size=1m") as folder:
        ckpt = folder / "best.ckpt"
        ckpt.write_bytes(b"the checkpoint")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        sampler = GaussianMixtureSampler(components=2).fit_for_checkpoint(model, images, labels, ckpt)
        left = sorted(path.name for path in folder.iterdir())
    assert sampler.mixture["means"].shape == (10, 2, 3)
    out = capsys.readouterr().out
    assert "fitted to 200 training images, not saved: " in out and "(Read-only file system)" in out
    assert left == ["best.ckpt"]


def image_set(kind: str, path: Path, proof: Path) -> Path:
    images, labels = torch.zeros(4, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 2, 3])
    if path.suffix == ".npz":
        arrays = {"images": images.numpy(), "labels": labels.numpy()}
        if kind == "payload":
            arrays["images"] = np.array([Payload(proof)], dtype=object)
        elif kind == "bad_labels":
            arrays["labels"] = np.array([0, 1, 2, 12])
        np.savez(path, **arrays)
    else:
        arrays = {"images": images, "labels": labels}
        if kind == "payload":
            arrays["images"] = Payload(proof)
        elif kind == "bad_labels":
            arrays["labels"] = torch.tensor([0, 1, 2, 12])
        torch.save(arrays, path)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
@pytest.mark.parametrize(
    ("kind", "said"),
    [("payload", "cannot be read as images and labels"), ("bad_labels", "labels must be whole numbers 0-9")],
)
def test_a_bad_anomaly_set_is_one_line_before_the_test_pass(
    suffix, kind, said, trained_run, tmp_path, capsys, monkeypatch
):
    scored = image_set(kind, tmp_path / f"set{suffix}", tmp_path / "code_ran")
    ckpt = trained_run[0] / "checkpoints" / "best.ckpt"
    cfg = compose_config(
        "evaluate", [f"ckpt_path={ckpt}", *QUICK_EVALUATION, f"anomaly.scores_for={scored}"], tmp_path / "out"
    )
    monkeypatch.setattr(pl.Trainer, "test", lambda *args, **kwargs: pytest.fail("the test pass ran first"))
    assert said in expect_one_line_exit(capsys, evaluate, cfg)
    assert not (tmp_path / "code_ran").exists(), "reading the set ran code from it"


def test_a_payload_in_any_file_a_user_passes_never_runs(trained_run, small_fit_inputs, tmp_path, capsys, data_dir):
    """One payload planted in each: the checkpoint (evaluated and resumed), the mixture fit beside it, InceptionV3
    weights (quality.inception_weights), anomaly sets as .pt and .npz. Each is refused or replaced; the payload's
    marker file never appears."""
    proof = tmp_path / "code_ran"
    good = torch.load(trained_run[0] / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt = tmp_path / "crafted.ckpt"
    torch.save({**good, "hyper_parameters": {**good["hyper_parameters"], "hidden_dims": Payload(proof)}}, ckpt)
    evaluation = compose_config("evaluate", [f"ckpt_path={ckpt}", *QUICK_EVALUATION], tmp_path / "evaluation")
    assert "never unpickled" in expect_one_line_exit(capsys, evaluate, evaluation)
    resume = compose_config("train", [*QUICK_RUN, f"ckpt_path={ckpt}", f"data.data_dir={data_dir}"], tmp_path / "run")
    assert "never unpickled" in expect_one_line_exit(capsys, train, resume)

    model, images, labels = small_fit_inputs
    plain = tmp_path / "best.ckpt"
    plain.write_bytes(b"the checkpoint")
    torch.save({"settings": {}, "mixture": Payload(proof)}, fit_path(plain))
    GaussianMixtureSampler(components=2).fit_for_checkpoint(model, images, labels, plain)

    inception = tmp_path / "pt_inception.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": Payload(proof)}, inception)
    with pytest.raises(DataError, match="cannot be read as InceptionV3 weights"):
        standard_inception(str(inception))

    best = trained_run[0] / "checkpoints" / "best.ckpt"
    for suffix in (".pt", ".npz"):
        scored = image_set("payload", tmp_path / f"set{suffix}", proof)
        cfg = compose_config(
            "evaluate", [f"ckpt_path={best}", *QUICK_EVALUATION, f"anomaly.scores_for={scored}"], tmp_path / suffix
        )
        assert "cannot be read" in expect_one_line_exit(capsys, evaluate, cfg)
    assert not proof.exists(), "a file's payload ran"


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"net.hidden_dims": [1] * 1_000_000}, "is larger than 10,000 entries or 100,000 characters"),
        (
            {"net._target_": "cvae.model.conv.Conv", "net.channels": [2_000_000_000, 32], "net.hidden_dims": [8]},
            "describes a model of about",
        ),
    ],
)
def test_a_checkpoint_asking_for_a_huge_model_is_refused_at_once(changes, said, trained_run, tmp_path):
    ckpt = with_hyperparameters(trained_run[0] / "checkpoints" / "best.ckpt", tmp_path / "huge.ckpt", changes)
    with pytest.raises(CheckpointError, match=re.escape(said)):
        load_module(ckpt)


def test_an_archive_part_declaring_more_than_the_file_is_refused_without_inflating_it(trained_run, tmp_path):
    """torch stores a checkpoint's parts uncompressed: a part that declares gigabytes in a small file is a zip bomb,
    refused from its header (testzip would inflate all of it to check its CRC)."""
    import zipfile

    bomb = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", (trained_run[0] / "checkpoints" / "best.ckpt").read_bytes()[:100])
        archive.writestr("archive/data/0", bytes(64 << 20))  # 64 MiB of zeros in about 64 KiB
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match=r"archive/data/0 declares 67,108,864 bytes, more than the whole file"):
        read_checkpoint(bomb)


def test_a_checkpoint_state_naming_files_outside_its_dir_is_refused(trained_run, tmp_path, capsys, data_dir):
    """Lightning deletes the files a restored ModelCheckpoint state names when better epochs replace them: a crafted
    `../` path would delete a file outside the run. The checkpoint is refused before any resume."""
    good = trained_run[0] / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(good, weights_only=True)
    (state_key,) = [key for key in checkpoint["callbacks"] if key.startswith("ModelCheckpoint")]
    state = checkpoint["callbacks"][state_key]
    outside = os.path.join(state["dirpath"], "..", "..", "victim.txt")
    state["best_k_models"] = {outside: torch.tensor(1e9)}
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    with pytest.raises(CheckpointError, match=r"its ModelCheckpoint state names .*victim.txt, outside its checkpoints"):
        read_checkpoint(crafted)
    resume = compose_config(
        "train", [*QUICK_RUN, "latent_dim=3", f"ckpt_path={crafted}", f"data.data_dir={data_dir}"], tmp_path / "run"
    )
    assert "outside its checkpoints dir" in expect_one_line_exit(capsys, train, resume)
    assert read_checkpoint(good)["callbacks"][state_key]["dirpath"] == state["dirpath"], "a run's own state passes"


def test_an_unreachable_tracking_server_is_one_line_at_once():
    from cvae.errors import ConfigError
    from cvae.loggers.trackers import MLFlowLogger

    with pytest.raises(ConfigError, match=r"logger.mlflow.tracking_uri=http://127.0.0.1:9 does not answer"):
        MLFlowLogger("outputs/x", tracking_uri="http://127.0.0.1:9")


@pytest.mark.parametrize("route", ["hydra_callbacks", "job_logging"])
def test_a_loader_in_what_hydra_builds_itself_never_runs(route, tmp_path):
    """Hydra instantiates its callbacks and logging handlers from the config: its list (HYDRA_TARGETS) names
    classes in full, so a trusted package's loader method is refused there too, in one line."""
    from tests.test_launch_checks import LOADER, payload_files
    from tests.test_run_dirs import one_error_line
    from tests.test_train import run_script

    files = payload_files(tmp_path)
    overrides = {
        "hydra_callbacks": [
            f"+hydra.callbacks.evil._target_={LOADER}",
            f"+hydra.callbacks.evil.checkpoint_path={files['pickled']}",
            "+hydra.callbacks.evil.weights_only=false",
        ],
        "job_logging": [files["searchpath"], "hydra/job_logging=evil"],
    }[route]
    result = run_script(
        "train.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}", env_extra={"CVAE_TRUSTED_TARGETS": ""}
    )
    if route == "job_logging":  # checked with the config, before Hydra starts the job
        assert LOADER in one_error_line(result)
    else:  # Hydra builds its callbacks before any of the project's code runs: its own report, with a traceback
        assert result.returncode == 1 and f"Target '{LOADER}' is not in the Hydra execution whitelist" in result.stderr
    assert not (tmp_path / "code_ran").exists(), "the payload ran"
    assert not (tmp_path / "run").exists()
