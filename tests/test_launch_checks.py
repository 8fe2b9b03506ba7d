"""Every launch refused before any work: one `error:` line, exit status 1, nothing written (not even the dated run
dir), torch never imported (so the refusal takes about a second), and no code from a config or a file run.

The launches run as users type them (train.py and evaluate.py with Hydra), all in one Python process started
once (each is a second of Hydra, not ten of torch), which reports per launch whether torch had been imported."""

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# runs each launch of a JSON list as `python <script> <args>` would, in this one process: its exit status, stderr,
# and whether torch was imported by then
DRIVER = r"""
import contextlib, io, json, runpy, sys
from hydra.core.global_hydra import GlobalHydra
results = []
for script, args in json.loads(sys.argv[1]):
    sys.argv = [script, *args]
    stderr = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(stderr):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
        except BaseException as error:
            code, stderr = f"raised {error!r}", io.StringIO(stderr.getvalue() + repr(error))
    GlobalHydra.instance().clear()
    results.append({"code": code, "stderr": stderr.getvalue(), "torch": "torch" in sys.modules})
print(json.dumps(results))
"""


class Payload:
    """Unpickled (torch.load with weights_only=False), it creates `proof`: what a crafted file would run."""

    def __init__(self, proof: Path):
        self.proof = proof

    def __reduce__(self):
        return (os.system, (f"touch {self.proof}",))


LOADER = "pytorch_lightning.LightningModule.load_from_checkpoint"  # a trusted package's method that unpickles


def payload_files(root: Path) -> dict[str, str]:
    """A pickle that runs code, and config files that would feed it to LOADER: an experiment and a callbacks group
    file on a search path, a job_logging file (a formatter's `()`)."""
    pickled = root / "payload.ckpt"
    pickled.write_bytes(pickle.dumps(Payload(root / "code_ran")))
    loader = {"_target_": LOADER, "checkpoint_path": str(pickled), "weights_only": False}
    configs = root / "configs"
    for group, text in {
        "experiment/evil.yaml": "# @package _global_\ncallbacks:\n  evil: " + json.dumps(loader),
        "callbacks/evil.yaml": "evil: " + json.dumps(loader),
        "hydra/job_logging/evil.yaml": "version: 1\nformatters:\n  evil: "
        + json.dumps({"()": LOADER, "checkpoint_path": str(pickled), "weights_only": False})
        + "\nhandlers: {}\nroot: {level: INFO}\n",
    }.items():
        (configs / group).parent.mkdir(parents=True, exist_ok=True)
        (configs / group).write_text(text + "\n")
    return {"pickled": str(pickled), "searchpath": f"hydra.searchpath=[file://{configs}]"}


# (script, overrides, what the error line says): each a route a tester found to end in a traceback, in minutes of
# work, or in exit 0 with a silently wrong run, refused by the schema (cvae/run/schema.py) or by what the trust
# boundary checks of a config file (cvae/trust.py). What a component checks itself when it is built (a network's
# widths, the data's loader, a callback's counts) is refused after the imports: tests/test_failures.py
CASES = {
    "latent_dim_abc": ("train.py", ["latent_dim=abc"], "latent_dim='abc' is not allowed"),
    "latent_dim_huge": ("train.py", ["latent_dim=2000000000"], "latent_dim=2000000000 is not allowed"),
    "lr_inf": ("train.py", ["lr=inf"], "lr=inf is not allowed: it must be a finite number > 0"),
    "val_every_0": ("train.py", ["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0"),
    "limit_negative": ("train.py", ["trainer.limit_train_batches=-1"], "trainer.limit_train_batches=-1"),
    "limit_nan": ("train.py", ["trainer.limit_train_batches=nan"], "trainer.limit_train_batches=nan"),
    "limit_fraction_above_1": ("train.py", ["trainer.limit_val_batches=1.5"], "trainer.limit_val_batches=1.5"),
    "no_validation": ("train.py", ["trainer.limit_val_batches=0"], "trainer.limit_val_batches=0 is not allowed"),
    "no_training": ("train.py", ["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0 is not allowed"),
    "no_nodes": ("train.py", ["trainer.num_nodes=0"], "trainer.num_nodes=0 is not allowed"),
    "auto_maybe": ("train.py", ["resume.auto=maybe"], "resume.auto='maybe' is not allowed: it must be true or false"),
    "devices_twice": ("train.py", ["trainer.devices=[0,0]"], "distinct device indices"),
    "unset_env": ("train.py", ["lr=${oc.env:UNSET_VARIABLE_OF_CVAE}"], "lr cannot be resolved"),
    "misspelt_key": ("train.py", ["+latentdim=3"], "latentdim is not a key of this config"),
    "env_set_git": (
        "train.py",
        ["++hydra.job.env_set.GIT_CONFIG_COUNT=1", "++hydra.job.env_set.GIT_CONFIG_KEY_0=core.fsmonitor"],
        "hydra.job.env_set.GIT_CONFIG_COUNT may not be set by a config",
    ),
    "interpolation_bomb": (
        "train.py",
        ["+data.bomb0=xxxxxxxxxx"]
        + [f"+data.bomb{level}=" + "".join(f"${{data.bomb{level - 1}}}" for _ in range(10)) for level in range(1, 9)],
        "expands to about",
    ),
    "loader_in_callbacks": ("train.py", [f"+callbacks.evil._target_={LOADER}"], f"_target_={LOADER} is not on"),
    "package_missing": (
        "train.py",
        ["+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor"],
        "needs the lightning package, which is not installed",
    ),
    "evaluate_bare": ("evaluate.py", [], "ckpt_path is required"),
    "evaluate_fid_count": ("evaluate.py", ["quality.num_samples=1000000000"], "quality.num_samples=1000000000"),
    "evaluate_iw": ("evaluate.py", ["quality.iw_samples=1000000000"], "quality.iw_samples=1000000000"),
    "evaluate_per_digit": ("evaluate.py", ["samples_per_digit=1000000000"], "samples_per_digit=1000000000"),
    "evaluate_variants": ("evaluate.py", ["variants=1000000000"], "variants=1000000000"),
    "evaluate_picture_scale": ("evaluate.py", ["picture_scale=100000"], "picture_scale=100000 is not allowed"),
    "evaluate_digits_underscore": ("evaluate.py", ["digits=1_000"], "digits='1_000' has '_'"),
}
# evaluate's cases need a checkpoint path that exists (the file's content is never read: the checks come first)
NEEDS_CHECKPOINT = {
    name for name, (script, _, _) in CASES.items() if script == "evaluate.py" and name != "evaluate_bare"
}
# the payload routes, each fed the same pickle (their overrides are made in the fixture, from its files)
PAYLOAD_CASES = ("payload_experiment", "payload_group", "payload_sampler")


@pytest.fixture(scope="module")
def launches(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("launches")
    files = payload_files(root)
    ckpt = root / "some.ckpt"
    ckpt.write_bytes(b"never read")
    loader_args = [f"+sampler.checkpoint_path={files['pickled']}", "+sampler.weights_only=false"]
    cases = {
        **CASES,
        "payload_experiment": ("train.py", [files["searchpath"], "experiment=evil"], f"_target_={LOADER} is not"),
        "payload_group": ("train.py", [files["searchpath"], "callbacks=evil"], f"_target_={LOADER} is not"),
        "payload_sampler": (
            "evaluate.py",
            [f"ckpt_path={ckpt}", f"sampler._target_={LOADER}", *loader_args],
            f"_target_={LOADER} is not",
        ),
    }
    launched = [
        (script, [*args, *([f"ckpt_path={ckpt}"] if name in NEEDS_CHECKPOINT else []), f"hydra.run.dir={root / name}"])
        for name, (script, args, _) in cases.items()
    ]
    env = {**os.environ, "CVAE_TRUSTED_TARGETS": ""}
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(launched)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = dict(zip(cases, json.loads(result.stdout.strip().splitlines()[-1])))
    return {
        name: {**reports[name], "said": said, "dir": root / name, "root": root} for name, (_, _, said) in cases.items()
    }


@pytest.mark.parametrize("name", [*CASES, *PAYLOAD_CASES])
def test_a_refused_launch_is_one_line_before_torch_and_leaves_nothing(name, launches):
    if name == "package_missing" and importlib.util.find_spec("lightning") is not None:
        pytest.skip("the lightning package is installed here (the project uses pytorch_lightning)")
    launch = launches[name]
    lines = launch["stderr"].strip().splitlines()
    assert launch["code"] == 1, launch["stderr"][-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and launch["said"] in lines[0], lines
    assert not launch["torch"], "torch was imported before the error was said"
    assert not launch["dir"].exists(), "the refused launch left its run dir behind"
    assert not (launch["root"] / "code_ran").exists(), "the payload ran"
