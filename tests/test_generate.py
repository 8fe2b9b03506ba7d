"""Generation and exploration (cvae/explore/) on real checkpoints: what each function returns (shapes,
counts, determinism given the seed, the labels of exported data, AUROC of the anomaly demo), and evaluate.py
writing the PNGs, files and CSV its config asks for."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvae.data.mnist import MNISTDataModule
from cvae.explore import anomaly, digits, export, latent
from cvae.explore.figures import latent_map_images
from cvae.files import atomic_path
from cvae.model.checkpoint import load_module
from cvae.model.cvae import posterior_means, sample
from cvae.sampling.prior import prior_latents
from cvae.validate import parse_digits
from tests.conftest import QUICK_EVALUATION, QUICK_RUN, compose_config

PAD = 2  # make_grid's lines between images


def grid_size(columns: int, rows: int) -> tuple[int, int]:
    """(width, height) of a make_grid image of 28x28 cells."""
    return columns * 28 + (columns + 1) * PAD, rows * 28 + (rows + 1) * PAD


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory, data_dir):
    """A short real training run with latent_dim 2 (60 steps: enough for digits to separate a little), its
    latent exploration logged after every epoch."""
    from cvae.run.train import train

    output_dir = tmp_path_factory.mktemp("run_2d")
    overrides = [
        *QUICK_RUN,
        f"data.data_dir={data_dir}",
        "latent_dim=2",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=60",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "callbacks.latent_exploration.every_n_epochs=1",
    ]
    train(compose_config("train", overrides, output_dir))
    return output_dir


@pytest.fixture(scope="module")
def model_2d(run_2d):
    return load_module(run_2d / "checkpoints" / "best.ckpt").net


@pytest.fixture(scope="module")
def model_3d(trained_run):
    return load_module(trained_run[0] / "checkpoints" / "best.ckpt").net


@pytest.fixture(scope="module")
def test_split(data_dir):
    datamodule = MNISTDataModule(data_dir=data_dir)
    datamodule.setup()
    return datamodule.splits["test"]


def test_digit_strings_give_rows_of_the_string_each_digit_its_own_style(model_3d):
    strings = digits.digit_strings(model_3d, "2026", variants=3, seed=1)
    assert strings.shape == (3, 4, 1, 28, 28) and 0 <= strings.min() and strings.max() <= 1
    assert torch.equal(strings, digits.digit_strings(model_3d, "2026", variants=3, seed=1))
    assert not torch.equal(strings, digits.digit_strings(model_3d, "2026", variants=3, seed=2))
    assert not torch.equal(strings[0, 1], strings[1, 1]), "rows are different styles"
    twins = digits.digit_strings(model_3d, "00", variants=1)
    assert not torch.equal(twins[0, 0], twins[0, 1]), "each digit of a string has its own z"
    assert digits.digit_strings(model_3d, 20261120, variants=1).shape[1] == 8, "an int, as Hydra passes it"
    assert parse_digits("007") == [0, 0, 7]


def test_digit_variants_are_distinct_and_repeatable(model_3d):
    variants = digits.digit_variants(model_3d, 7, variants=5, seed=3)
    assert variants.shape == (5, 1, 28, 28)
    assert torch.equal(variants, digits.digit_variants(model_3d, "7", variants=5, seed=3))
    assert len({image.numpy().tobytes() for image in variants}) == 5


@pytest.mark.parametrize("digits", ["12a4", "2026-11-20", " 42", "", 3.5, True, -5])
def test_anything_but_digits_is_refused_by_name(digits):
    with pytest.raises(ValueError, match=r"^digits=.* 0-9") as error:
        parse_digits(digits)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda model: digits.digit_variants(model, 12), r"^digit=12 is not a single digit"),
        (lambda model: digits.digit_variants(model, 1, variants=0), r"^variants=0 .* >= 1"),
        (lambda model: export.synthetic_dataset(model, per_digit=-2), r"^export.per_digit=-2 "),
        (
            lambda model: anomaly.anomaly_scores(model, torch.zeros(1, 784), torch.zeros(1).long(), score="elbo"),
            r"^anomaly.score='elbo' .* nelbo, iw",
        ),
    ],
)
def test_bad_requests_name_the_key_and_what_is_allowed(model_3d, call, message):
    with pytest.raises(ValueError, match=message):
        call(model_3d)


def test_latent_map_of_a_2d_model_is_z_itself_plus_a_manifold_per_digit(model_2d, test_split):
    images, labels = test_split
    means = posterior_means(model_2d, images[:500], labels[:500])
    assert means.shape == (500, 2)
    assert torch.equal(latent.project_2d(means)[0], means)
    pictures = latent_map_images(model_2d, images[:500], labels[:500])
    assert pictures.keys() == {"latent_map", "latent_manifold"}
    assert all(picture.shape[0] == 3 and 0 <= picture.min() and picture.max() <= 1 for picture in pictures.values())

    grid = latent.manifold_grid(model_2d, 4, size=3)
    assert grid.shape == (9, 1, 28, 28)
    high = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(5 / 6))
    top_left = sample(model_2d, torch.tensor([4]), torch.tensor([[-high, high]]))
    assert torch.allclose(grid[0], top_left[0], atol=1e-6), "z1 grows to the right, z2 upwards"


def test_latent_map_above_2d_is_a_pca_projection(model_3d, test_split):
    images, labels = test_split
    points, axis_names = latent.project_2d(posterior_means(model_3d, images[:500], labels[:500]))
    assert points.shape == (500, 2) and axis_names == ("PC1", "PC2")
    covariance = torch.cov(points.T.double())
    assert torch.allclose(points.mean(0), torch.zeros(2), atol=1e-4)
    assert covariance[0, 0] >= covariance[1, 1] and abs(covariance[0, 1]) < 1e-4, "uncorrelated, by variance"
    assert latent_map_images(model_3d, images[:500], labels[:500]).keys() == {"latent_map"}


def test_interpolations_start_and_end_where_they_should(model_3d):
    within = latent.interpolate_within_digit(model_3d, 5, steps=6, seed=4)
    assert within.shape == (6, 1, 28, 28)
    ends = sample(model_3d, torch.tensor([5, 5]), prior_latents(2, 3, seed=4))
    assert torch.allclose(within[[0, -1]], ends, atol=1e-6)

    across = latent.interpolate_across_digits(model_3d, 1, 7, steps=5, seed=4)
    assert across.shape == (5, 1, 28, 28)
    z = prior_latents(1, 3, seed=4).expand(2, -1)
    assert torch.allclose(across[[0, -1]], sample(model_3d, torch.tensor([1, 7]), z), atol=1e-6)


def test_style_transfer_draws_each_source_as_every_digit(model_3d, test_split):
    images, labels = test_split
    sources = latent.first_of_each_digit(labels)
    assert labels[sources].tolist() == list(range(10))
    transferred = latent.style_transfer(model_3d, images[sources], labels[sources])
    assert transferred.shape == (10, 10, 1, 28, 28)
    mu = posterior_means(model_3d, images[sources], labels[sources])
    own_digit = transferred[torch.arange(10), labels[sources]]
    reconstructions = sample(model_3d, labels[sources], mu)
    assert torch.allclose(own_digit, reconstructions, atol=1e-6), "drawn as its own digit: its reconstruction"


def test_synthetic_export_holds_the_requested_digits_and_reloads_equal(model_3d, tmp_path):
    images, labels = export.synthetic_dataset(model_3d, per_digit=7, seed=5, batch_size=16)
    assert images.shape == (70, 28, 28) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [7] * 10
    again, _ = export.synthetic_dataset(model_3d, per_digit=7, seed=5, batch_size=1000)
    assert torch.equal(images, again), "the seed alone fixes the data, whatever the batch size"
    assert not torch.equal(images, export.synthetic_dataset(model_3d, per_digit=7, seed=6)[0])

    export.write_synthetic_dataset(images, labels, tmp_path, image_folder=True)
    from_torch = torch.load(tmp_path / "synthetic.pt", weights_only=True)
    assert torch.equal(from_torch["images"], images) and torch.equal(from_torch["labels"], labels)
    with np.load(tmp_path / "synthetic.npz") as from_numpy:
        assert (from_numpy["images"] == images.numpy()).all() and from_numpy["labels"].dtype == np.int64
        assert (from_numpy["labels"] == labels.numpy()).all()
    for digit in range(10):
        pngs = sorted((tmp_path / "synthetic" / str(digit)).glob("*.png"))
        assert len(pngs) == 7
        assert (np.asarray(Image.open(pngs[0])) == images[digit * 7].numpy()).all()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")], "no temporaries left"


def test_an_interrupted_export_leaves_nothing_that_looks_complete(tmp_path):
    target = tmp_path / "synthetic.pt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half a file")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_anomaly_scores_per_image_into_a_csv(model_3d, test_split, tmp_path):
    images, labels = test_split[0][:200], test_split[1][:200]
    nelbo = anomaly.anomaly_scores(model_3d, images, labels, "nelbo", k=4, seed=7, batch_size=64)
    iw = anomaly.anomaly_scores(model_3d, images, labels, "iw", k=4, seed=7)
    assert nelbo.shape == iw.shape == (200,) and torch.isfinite(nelbo).all() and (nelbo > 0).all()
    assert torch.equal(nelbo, anomaly.anomaly_scores(model_3d, images, labels, "nelbo", k=4, seed=7, batch_size=64))
    assert iw.mean() < nelbo.mean(), "the importance-weighted bound is the tighter one"

    path = anomaly.write_scores_csv(tmp_path / "scores.csv", nelbo, labels)
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 200 and [int(row["label"]) for row in rows] == labels.tolist()
    assert float(rows[3]["nelbo"]) == pytest.approx(nelbo[3].item(), abs=1e-4)


def test_scores_read_exported_sets_from_torch_and_numpy_files(model_3d, tmp_path):
    images, labels = export.synthetic_dataset(model_3d, per_digit=2)
    export.write_synthetic_dataset(images, labels, tmp_path)
    sets = [export.load_image_set(tmp_path / name) for name in ("synthetic.pt", "synthetic.npz")]
    scores = [anomaly.anomaly_scores(model_3d, *image_set, k=1) for image_set in sets]
    assert torch.equal(sets[0][1], labels) and torch.equal(sets[1][1], labels)
    assert torch.equal(scores[0], scores[1])


def test_anomaly_demo_tells_rotated_digits_from_real_ones(model_2d, test_split):
    images, labels = test_split[0][:1000], test_split[1][:1000]
    demo = anomaly.anomaly_demo(model_2d, images, labels, score="nelbo", k=2, seed=0)
    assert demo["images"] == 1000 and demo["mean_score_corrupted"] > demo["mean_score_real"]
    assert demo["auroc"] > 0.75, demo


def test_training_logs_the_latent_exploration_to_tensorboard(run_2d):
    events = EventAccumulator(str(run_2d), size_guidance={"images": 0}).Reload()
    exploration = {tag for tag in events.Tags()["images"] if tag.startswith("visuals/exploration/")}
    assert exploration == {
        f"visuals/exploration/{name}"
        for name in (
            "latent_map",
            *(f"latent_manifold/{digit}" for digit in range(10)),
            "interpolation_within_digit",
            "interpolation_across_digits",
            "style_transfer",
        )
    }
    style = events.Images("visuals/exploration/style_transfer")[-1]
    assert (style.width, style.height) == grid_size(11, 10)


def test_evaluate_writes_what_its_config_asks_for(run_2d, data_dir, tmp_path):
    from cvae.run.evaluate import evaluate

    overrides = [
        f"ckpt_path={run_2d / 'checkpoints' / 'best.ckpt'}",
        f"data.data_dir={data_dir}",
        *QUICK_EVALUATION,
        "trainer.limit_test_batches=1",
        "digits=007",
        "digit=3",
        "variants=4",
        "latent_map=true",
        "interpolate=true",
        "interpolation_steps=6",
        "style_transfer=true",
        "export.per_digit=3",
        "anomaly.scores_for=test",
        "anomaly.k=1",
        "anomaly.demo=true",
    ]
    metrics = evaluate(compose_config("evaluate", overrides, tmp_path))
    expected_sizes = {
        "digits": grid_size(3, 4),
        "digit_3": grid_size(4, 1),
        "style_transfer": grid_size(11, 10),
        "interpolation_within_digit": grid_size(6, 10),
        "interpolation_across_digits": grid_size(6, 10),
    }
    for name, (width, height) in expected_sizes.items():  # drawn 4x (picture_scale), a label column on the left
        with Image.open(tmp_path / f"{name}.png") as picture:
            assert picture.height == 4 * height and picture.width > 4 * width, name
    assert (tmp_path / "latent_map.png").is_file() and (tmp_path / "latent_manifold.png").is_file()
    assert torch.bincount(torch.load(tmp_path / "synthetic.pt", weights_only=True)["labels"]).tolist() == [3] * 10
    with open(tmp_path / "anomaly_scores.csv") as file:
        assert sum(1 for _ in file) == 10_000 + 1, "a row per test image, and the header"
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["anomaly_demo/auroc"] == metrics["anomaly_demo/auroc"] > 0.75


def test_evaluate_refuses_a_bad_request_before_any_work(tmp_path, capsys):
    """The request is checked before the checkpoint is even looked for (it does not exist here)."""
    from cvae.run.evaluate import evaluate
    from tests.test_failures import expect_one_line_exit

    cfg = compose_config("evaluate", ["ckpt_path=missing.ckpt", "digits=12a"], tmp_path)
    assert expect_one_line_exit(capsys, evaluate, cfg).startswith("error: digits='12a' has 'a'")
