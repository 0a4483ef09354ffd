"""Load whole pickled modules (``torch.save(model)`` files) through an allow-list of globals.

The reference PENNI implementation releases its final models as pickled ``nn.Module`` objects. Unpickling
runs whatever callables the file names, so this loader resolves only an explicit table of names: the
reference's classes map to this project's own (``DecomposedConv2D`` -> :class:`PenniConv2d` in its dense
form, ``VGG16`` -> :class:`VGG16`, ``ResNet``/``BasicBlock`` -> :class:`ResNet56`/:class:`BasicBlock`), plus
common ``torch.nn`` layers and torch's tensor-rebuild helpers. Nothing is imported by name: any other
global is refused before it is resolved, so it never runs. A BUILD that would set attributes on one of the
allowed globals themselves (monkey-patching ``nn.Conv2d.forward``, say) is refused as well.

ResNet56 pickles hold their option-A shortcuts as ``LambdaLayer`` objects whose lambdas were pickled by
dill (code objects); they are refused with advice to use a state_dict and ``--arch resnet56``.
"""

from __future__ import annotations

import _compat_pickle
import collections
import logging
import os
import pickle
import types
import warnings
import zipfile
from typing import Any

import torch
from torch import nn

from penni_deploy.errors import ModelLoadError
from penni_deploy.models import (
    VGG16,
    BasicBlock,
    OptionAShortcut,
    PenniConv2d,
    ResNet18,
    ResNet56,
)

logger = logging.getLogger(__name__)

_LAMBDA_LAYER = ("models.resnet_s", "LambdaLayer")

# The reference's classes, by the (module, name) its pickles use, and the classes that stand in for them.
_REFERENCE_CLASSES: dict[tuple[str, str], type] = {
    ("decompose.decomConv", "DecomposedConv2D"): PenniConv2d,
    ("models.vgg16", "VGG16"): VGG16,
    ("models.resnet_s", "ResNet"): ResNet56,
    ("models.resnet_s", "BasicBlock"): BasicBlock,
}

_TORCH_NN_CLASSES: tuple[type, ...] = (
    nn.Conv2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Linear,
    nn.ReLU,
    nn.ReLU6,
    nn.Sequential,
    nn.ModuleList,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Identity,
    nn.Flatten,
    nn.Dropout,
)

_OWN_CLASSES: tuple[type, ...] = (PenniConv2d, VGG16, ResNet18, ResNet56, BasicBlock, OptionAShortcut)

# Data a pickled module or tensor needs. Storage classes (torch.FloatStorage, ...) are resolved by
# torch.load itself, before this table is consulted.
_DATA_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): nn.Parameter,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch", "float32"): torch.float32,
    ("torch", "float16"): torch.float16,
    ("torch", "float64"): torch.float64,
    ("torch", "int64"): torch.int64,
}

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **_DATA_GLOBALS,
    **{(cls.__module__, cls.__qualname__): cls for cls in _TORCH_NN_CLASSES + _OWN_CLASSES},
    **_REFERENCE_CLASSES,
}


def _python2_name(module: str, name: str) -> tuple[str, str]:
    """Undo the Python-2 names that protocol-2 pickles use (``__builtin__.set``), as pickle itself does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class RestrictedUnpickler(pickle._Unpickler):
    """An Unpickler whose ``find_class`` resolves only :data:`ALLOWED_GLOBALS`.

    It is the pure-Python unpickler because the C one offers no hook to vet BUILD.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        module, name = _python2_name(module, name)
        if (module, name) == _LAMBDA_LAYER:
            raise ModelLoadError(
                "refused global models.resnet_s.LambdaLayer: the reference ResNet56 pickles its option-A "
                "shortcuts as lambdas serialised by dill, which is code and cannot be loaded safely. Save a "
                "state_dict instead (torch.save(model.state_dict(), path)) and load it with --arch resnet56."
            )
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ModelLoadError(
                f"refused global {module}.{name}: only known PENNI reference classes, this project's models and "
                "common torch.nn layers are accepted in a pickled model"
            ) from None

    def _load_build(self) -> None:
        target = self.stack[-2]  # stack: ..., target, state
        if isinstance(target, (type, types.FunctionType, types.BuiltinFunctionType)) or any(
            target is allowed for allowed in ALLOWED_GLOBALS.values()
        ):
            name = getattr(target, "__qualname__", repr(target))
            raise ModelLoadError(f"refused to set attributes on the global {name}: a model pickle never does that")
        super().load_build()

    dispatch[pickle.BUILD[0]] = _load_build


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load needs of a pickle module: Unpickler for the model, load for legacy-format headers.
RESTRICTED_PICKLE = types.SimpleNamespace(
    __name__="penni_deploy_restricted_pickle",
    Unpickler=RestrictedUnpickler,
    load=_restricted_load,
    UnpicklingError=pickle.UnpicklingError,
)


def load_pickled_module(path: str | os.PathLike[str]) -> nn.Module:
    """Load a whole pickled ``nn.Module`` file through the allow-list, onto the CPU.

    Parameters
    ----------
    path : str or path-like
        A ``torch.save(model)`` file (zip or legacy format).

    Returns
    -------
    nn.Module
        The model in eval mode; reference classes come back as this project's equivalents.

    Raises
    ------
    ModelLoadError
        Missing or unreadable file, a refused global, a TorchScript archive, or a file without a module.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError(f"no such model file: {path}")
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        # torch.load would hand it to torch.jit.load, which this loader does not vet.
        raise ModelLoadError(f"{path} is a TorchScript archive, not a pickled nn.Module")
    try:
        with warnings.catch_warnings():
            # Legacy-format files carry each class's source; ours differ from the reference's by design.
            warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=RESTRICTED_PICKLE)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    except Exception as exc:  # corrupt file, wrong format, ... : torch's own message says which
        raise ModelLoadError(f"cannot load {path} as a pickled model: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, nn.Module):
        hint = " (a state_dict? load it with --arch)" if isinstance(obj, dict) else ""
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not an nn.Module{hint}")
    try:
        obj.eval()
    except Exception as exc:  # a module whose pickled state lacks what nn.Module needs
        raise ModelLoadError(f"{path} holds a malformed {type(obj).__name__}: {exc}") from exc
    logger.info("loaded pickled %s from %s", type(obj).__name__, path)
    return obj


def _is_torchscript(path: str) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())
