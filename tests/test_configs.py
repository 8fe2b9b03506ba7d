"""Every config group option composes, and the top-level knobs reach the objects they configure."""

import pytest
from hydra.utils import instantiate

from tests.conftest import CONF_DIR, compose_config

GROUP_OPTIONS = [
    (group.name, option.stem)
    for group in sorted(CONF_DIR.iterdir())
    if group.is_dir() and group.name not in ("hydra", "paths")
    for option in sorted(group.glob("*.yaml"))
]


EVALUATE_ONLY_GROUPS = ("quality", "explore")  # evaluate.py's options (train.py's callback reuses quality/fid)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_group_option_composes(group, option, tmp_path):
    config_name = "evaluate" if group in EVALUATE_ONLY_GROUPS else "train"
    overrides = ["ckpt_path=some.ckpt"] if config_name == "evaluate" else []
    cfg = compose_config(config_name, [*overrides, f"{group}={option}"], tmp_path)
    assert cfg.task_name == config_name


@pytest.mark.parametrize("config_name", ["train", "evaluate"])
def test_primary_configs_compose(config_name, tmp_path):
    overrides = ["ckpt_path=some.ckpt"] if config_name == "evaluate" else []
    cfg = compose_config(config_name, overrides, tmp_path)
    assert cfg.task_name == config_name


def test_reference_defaults(tmp_path):
    cfg = compose_config("train", [], tmp_path)
    assert (cfg.latent_dim, cfg.batch_size, cfg.lr, cfg.trainer.max_epochs) == (2, 128, 1e-3, 50)
    assert list(cfg.model.hidden_dims) == [512, 256]
    assert cfg.model.optimizer._partial_


def test_top_level_knobs_feed_model_data_and_optimizer(tmp_path, data_dir):
    cfg = compose_config(
        "train", ["latent_dim=7", "batch_size=64", "lr=3e-3", "seed=5", f"data.data_dir={data_dir}"], tmp_path
    )
    module, datamodule = instantiate(cfg.model), instantiate(cfg.data)
    assert module.model.latent_dim == 7 and module.hparams.latent_dim == 7
    assert datamodule.batch_size == 64 and datamodule.shuffle_seed == 5
    optimizer = module.optimizer(params=module.parameters())
    assert optimizer.defaults["lr"] == 3e-3


def test_callbacks_and_loggers_instantiate(tmp_path):
    from cvae.run.train import instantiate_group

    for extra in ("mlflow", "wandb"):  # many_loggers has MLflow and W&B
        pytest.importorskip(extra, reason=f'logger={extra} is an extra: pip install -e ".[{extra}]"')
    store = f"logger.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"  # not the project's outputs/
    cfg = compose_config("train", ["logger=many_loggers", store], tmp_path)
    names = {type(obj).__name__ for obj in instantiate_group(cfg.callbacks) + instantiate_group(cfg.logger)}
    assert names == {
        "ModelCheckpoint",
        "SampleGrids",
        "GenerationQuality",
        "LatentExploration",
        "LatentProjector",
        "TensorBoardLogger",
        "CSVLogger",
        "MLFlowLogger",
        "WandbLogger",
    }


def test_run_dirs_have_sub_second_resolution():
    run_dirs = (CONF_DIR / "hydra" / "default.yaml").read_text()
    assert "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S_%f}" in run_dirs
    assert "outputs/multirun/${now:%Y-%m-%d}/${now:%H-%M-%S_%f}" in run_dirs
