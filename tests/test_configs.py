"""Every config group option composes, and the top-level knobs reach the objects they configure."""

import pytest

from cvae.trust import instantiate
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
    assert list(cfg.model.net.hidden_dims) == [512, 256]
    assert cfg.model.optimizer._partial_


def test_top_level_knobs_feed_model_data_and_optimizer(tmp_path, data_dir):
    cfg = compose_config(
        "train", ["latent_dim=7", "batch_size=64", "lr=3e-3", "seed=5", f"data.data_dir={data_dir}"], tmp_path
    )
    module, datamodule = instantiate(cfg.model), instantiate(cfg.data)
    assert module.net.latent_dim == 7
    assert datamodule.batch_size == 64 and datamodule.shuffle_seed == 5
    optimizer = module.optimizer(params=module.parameters())
    assert optimizer.defaults["lr"] == 3e-3


def test_callbacks_and_loggers_instantiate(tmp_path):
    from cvae.trust import instantiate_group as build_group

    for extra in ("mlflow", "wandb"):  # many_loggers has MLflow and W&B
        pytest.importorskip(extra, reason=f'logger={extra} is an extra: pip install -e ".[{extra}]"')
    store = f"logger.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"  # not the project's outputs/
    cfg = compose_config("train", ["logger=many_loggers", store], tmp_path)
    names = {type(obj).__name__ for obj in build_group(cfg.callbacks) + build_group(cfg.logger)}
    assert names == {
        "ModelCheckpoint",
        "SampleGrids",
        "GenerationQuality",
        "LatentExploration",
        "LatentProjector",
        "TensorBoardLogger",
        "ContinuedCSVLogger",  # Lightning's CSVLogger that keeps a resumed run's rows
        "MLFlowLogger",
        "WandbLogger",
    }


def test_run_dirs_have_sub_second_resolution():
    run_dirs = (CONF_DIR / "hydra" / "default.yaml").read_text()
    assert "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S_%f}" in run_dirs
    assert "outputs/multirun/${now:%Y-%m-%d}/${now:%H-%M-%S_%f}" in run_dirs


def test_a_target_outside_the_trusted_code_is_refused_in_one_line_unless_the_environment_trusts_it(tmp_path):
    """A config or override naming other code (here print, as os.system would be) is refused before any work;
    CVAE_TRUSTED_TARGETS, set in the user's shell, which no config can change, lets their own code in."""
    from tests.test_train import run_script

    planted = ["+callbacks.mine._target_=builtins.print", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'a'}"]
    refused = run_script("train.py", *planted, env_extra={"CVAE_TRUSTED_TARGETS": ""})
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "builtins.print" in lines[0], refused.stderr[-2000:]
    assert "CVAE_TRUSTED_TARGETS" in lines[0]

    trusted = run_script(
        "-c",
        "from omegaconf import OmegaConf; from cvae.trust import instantiate; "
        "instantiate(OmegaConf.create({'_target_': 'builtins.print', '_args_': ['built']}))",
        env_extra={"CVAE_TRUSTED_TARGETS": "builtins.print"},
    )
    assert trusted.returncode == 0 and trusted.stdout.strip() == "built", trusted.stderr[-2000:]
