"""The peer inference engines of ``bench --peers``: which there are, what each runs, and what it needs.

No engine here exploits the PENNI structure; they are the numbers a user would get without this compiler:

- ``torch-compile-*``: ``torch.compile`` (inductor) on the dense and on the two-stage network, or on the
  exported program's module of a saved file;
- ``onnxruntime-*``: onnxruntime's CPU provider on the ONNX export of each network;
- ``openvino-f32-*`` and ``openvino-bf16-*``: OpenVINO with the inference precision pinned (on CPUs with
  bf16 support it otherwise runs bf16 silently);
- ``deepsparse-pruned``: DeepSparse, the one CPU engine that turns unstructured zeros into speed, on the
  dense network magnitude-pruned to the PENNI model's per-layer sparsity (:func:`magnitude_pruned_model`).

A model given as a PyTorch module (state_dict + ``--arch``, trusted pickle) has PENNI layers to rebuild the
dense, two-stage and pruned networks from. A TorchScript or ``.pt2`` file keeps the network as saved, so its
peers run that one network (the ``*-as-saved`` rows, :class:`SavedNetwork`), and the pruned form is a row
saying why there is none.

Every ONNX engine reads the same single-file ONNX graph (:func:`export_onnx`). DeepSparse needs numpy<2
and Python <= 3.11, so it lives in its own venv (``scripts/setup_deepsparse.sh``) and its worker runs
under that venv's Python (:func:`deepsparse_python`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import PenniError

FORMS = ("dense", "two-stage", "pruned", "as-saved")
"""The networks a peer can run: dense convs (W = C·B), PENNI's exact two-stage form, magnitude-pruned dense,
or a TorchScript / ``.pt2`` file's network as saved."""
MODULE_FORMS = ("dense", "two-stage", "pruned")  # rebuilt from the PENNI layers of a PyTorch module

ONNX_OPSET = 13  # DeepSparse 1.8 reads up to this with the legacy exporter's op set
DEEPSPARSE_PYTHON_ENV = "PENNI_DEEPSPARSE_PYTHON"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_PEERS_EXTRA = "pip install 'penni-deploy[peers]'"


class PeerUnavailableError(PenniError):
    """A peer engine cannot run here: a package or venv is missing, or the network cannot be exported."""


@dataclass(frozen=True)
class PeerEngine:
    """One row family of the bench table.

    Parameters
    ----------
    name : str
        Row name; the precision is part of it where the engine may change it (``openvino-bf16-dense``).
    kind : str
        The ``engine_kind`` the worker runs (``bench/worker.py``).
    form : str
        Which network it runs, one of :data:`FORMS`.
    precision : str
        ``fp32``; ``bf16`` where the engine is asked to compute in bfloat16; ``int8`` for a network
        quantized by ``quantize_onnx`` with the bench's calibration array.
    """

    name: str
    kind: str
    form: str
    precision: str = "fp32"

    @property
    def needs_onnx(self) -> bool:
        return self.kind in ("onnxruntime", "openvino", "deepsparse")


PEER_ENGINES = (
    PeerEngine("torch-compile-dense", "torch-compile", "dense"),
    PeerEngine("torch-compile-two-stage", "torch-compile", "two-stage"),
    PeerEngine("onnxruntime-dense", "onnxruntime", "dense"),
    PeerEngine("onnxruntime-two-stage", "onnxruntime", "two-stage"),
    PeerEngine("onnxruntime-int8-dense", "onnxruntime", "dense", "int8"),
    PeerEngine("onnxruntime-int8-two-stage", "onnxruntime", "two-stage", "int8"),
    PeerEngine("openvino-f32-dense", "openvino", "dense"),
    PeerEngine("openvino-f32-two-stage", "openvino", "two-stage"),
    PeerEngine("openvino-bf16-dense", "openvino", "dense", "bf16"),
    PeerEngine("openvino-bf16-two-stage", "openvino", "two-stage", "bf16"),
    PeerEngine("torch-compile-as-saved", "torch-compile", "as-saved"),
    PeerEngine("onnxruntime-as-saved", "onnxruntime", "as-saved"),
    PeerEngine("onnxruntime-int8-as-saved", "onnxruntime", "as-saved", "int8"),
    PeerEngine("openvino-f32-as-saved", "openvino", "as-saved"),
    PeerEngine("openvino-bf16-as-saved", "openvino", "as-saved", "bf16"),
    PeerEngine("deepsparse-as-saved", "deepsparse", "as-saved"),
    PeerEngine("deepsparse-pruned", "deepsparse", "pruned"),
)


def select_engines(names: tuple[str, ...] | None, saved: bool = False, int8: bool = False) -> tuple[PeerEngine, ...]:
    """The engines of :data:`PEER_ENGINES` called ``names``, in the table's order.

    When ``names`` is None: every engine that has a network for the model, that is the ``as-saved`` ones
    for a TorchScript or ``.pt2`` file (``saved``), the others for a module; and ``deepsparse-pruned``
    always, whose row says why a saved file has no pruned network. The int8 engines only with ``int8``
    (a bench of an int8 build, which has the calibration array they quantize with).
    """
    if names is None:
        return tuple(e for e in PEER_ENGINES if ((e.form == "as-saved") == saved or e.name == "deepsparse-pruned")
                     and (int8 or e.precision != "int8"))
    known = {engine.name for engine in PEER_ENGINES}
    unknown = sorted(set(names) - known)
    if unknown:
        raise PenniError(f"unknown peer engine(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    return tuple(engine for engine in PEER_ENGINES if engine.name in names)


def deepsparse_python() -> str:
    """The Python that runs the DeepSparse worker: ``$PENNI_DEEPSPARSE_PYTHON``, else the repo's ``.venv-deepsparse``."""
    return os.environ.get(DEEPSPARSE_PYTHON_ENV) or str(_REPO_ROOT / ".venv-deepsparse" / "bin" / "python")


def missing_reason(engine: PeerEngine) -> str | None:
    """Why ``engine`` cannot run on this machine, with the fix; None when everything it needs is present.

    Only what can be seen without loading the engine is checked here; a package that is present but
    broken is reported by its worker.
    """
    if engine.needs_onnx and engine.kind != "deepsparse" and importlib.util.find_spec("onnx") is None:
        return f"the ONNX export needs the onnx package: {_PEERS_EXTRA}"
    if engine.kind == "torch-compile":
        if not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
            return "torch.compile (inductor) needs a C++ compiler: apt-get install g++"
    elif engine.kind in ("onnxruntime", "openvino"):
        if importlib.util.find_spec(engine.kind) is None:
            return f"{engine.kind} is not installed: {_PEERS_EXTRA}"
    elif engine.kind == "deepsparse":
        if importlib.util.find_spec("onnx") is None:
            return f"the ONNX export for DeepSparse needs the onnx package: {_PEERS_EXTRA}"
        python = deepsparse_python()
        if not os.access(python, os.X_OK):
            return (f"DeepSparse's Python {python} is missing: run bash scripts/setup_deepsparse.sh "
                    f"(or point {DEEPSPARSE_PYTHON_ENV} at a Python with deepsparse==1.8.0)")
    return None


def quantize_onnx(fp32_path: str, path: str, calibration: np.ndarray, method: str = "minmax",
                  percentile: float = 99.99) -> str:
    """``fp32_path`` quantized by onnxruntime's ``quantize_static`` into ``path``: int8 weights per output
    channel, uint8 activations from ``calibration`` (run in batches of the file's batch size), QDQ
    format, which its CPU provider runs as int8 kernels. The peer of ``compile --precision int8``.
    The network is first pre-processed as onnxruntime recommends (shape inference, and its optimizer,
    which folds batch norms into the convs), so the quantizer sees what a user of it would give it."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
        from onnxruntime.quantization import quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise PeerUnavailableError(f"onnxruntime int8 needs onnxruntime.quantization ({exc}): {_PEERS_EXTRA}") from None
    prepared = path.replace(".onnx", "-prepared.onnx")
    try:
        quant_pre_process(fp32_path, prepared)
    except Exception:  # noqa: BLE001 - optional: quantize the network as exported
        prepared = fp32_path
    fp32_path = prepared
    model = onnx.load(fp32_path)
    graph_input = model.graph.input[0]
    batch = graph_input.type.tensor_type.shape.dim[0].dim_value or 1

    class Batches(CalibrationDataReader):
        def __init__(self):
            whole = len(calibration) // batch * batch or batch
            data = np.resize(calibration, (whole, *calibration.shape[1:])).astype(np.float32)
            self._batches = iter(data.reshape(-1, batch, *calibration.shape[1:]))

        def get_next(self):
            chunk = next(self._batches, None)
            return None if chunk is None else {graph_input.name: np.ascontiguousarray(chunk)}

    extra = {"CalibPercentile": percentile} if method == "percentile" else {}
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer warns on the root logger per weight
    try:
        quantize_static(fp32_path, path, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.Percentile if method == "percentile" else
                        CalibrationMethod.MinMax, extra_options=extra)
    except Exception as exc:  # noqa: BLE001 - a network the quantizer cannot take: the row says why
        raise PeerUnavailableError(f"onnxruntime's quantize_static failed: {type(exc).__name__}: {exc}") from None
    finally:
        logging.getLogger().setLevel(quiet)
    return path


def export_onnx(network: nn.Module | SavedNetwork, shape: tuple[int, ...], path: str) -> str:
    """Write ``network`` as one self-contained ONNX file for input ``shape``; returns ``path``.

    The legacy TorchScript exporter (``dynamo=False``) at opset 13: DeepSparse reads nothing newer, and the
    default dynamo exporter of torch 2.13 writes the weights to a side file. Constants are folded, so
    the two-stage network's weights arrive as plain initializers. Every ONNX engine reads this one file.
    A :class:`SavedNetwork` is exported from its ScriptModule, or from its ExportedProgram's module.
    """
    if importlib.util.find_spec("onnx") is None:
        raise PeerUnavailableError(f"the ONNX export needs the onnx package: {_PEERS_EXTRA}")
    module = network.onnx_source() if isinstance(network, SavedNetwork) else network
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice, on every call
            torch.onnx.export(module.eval(), (torch.zeros(shape),), path, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["input"], output_names=["output"], do_constant_folding=True)
    except Exception as e:  # whatever the exporter trips on makes the ONNX rows errors, not the whole bench
        first_line = (str(e).splitlines() or [""])[0]
        raise PeerUnavailableError(f"ONNX export failed: {type(e).__name__}: {first_line}") from e
    if os.path.exists(path + ".data"):
        raise PeerUnavailableError(f"the ONNX export wrote its weights beside {path}; the ONNX engines need one file")
    return path


@dataclass(frozen=True, eq=False)
class SavedNetwork:
    """A TorchScript or ``.pt2`` model as the user saved it, at one input shape: what its peers run.

    Parameters
    ----------
    saved : torch.jit.ScriptModule or torch.export.ExportedProgram
        The model as loaded from the file; a program is the one for this input shape.
    shape : tuple of int
        The input shape.
    """

    saved: torch.jit.ScriptModule | torch.export.ExportedProgram
    shape: tuple[int, ...]

    @cached_property
    def program(self) -> torch.export.ExportedProgram:
        """What ``torch.compile`` runs the module of: ``saved`` itself for a ``.pt2`` file, and for
        TorchScript the program ``compile`` converts it to (``frontend.to_relax.export_program``; made
        when first asked for, as only the torch.compile peer needs it)."""
        if isinstance(self.saved, torch.export.ExportedProgram):
            return self.saved
        from ..frontend.load_model import LoadedModel
        from ..frontend.to_relax import export_program

        return export_program(LoadedModel(self.saved, "torchscript", None, ""), self.shape)

    def eager(self) -> nn.Module:
        """The module PyTorch eager runs: the ScriptModule, or the program's module."""
        return self.saved if isinstance(self.saved, torch.jit.ScriptModule) else self.saved.module()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.eager()(x)

    def onnx_source(self) -> nn.Module:
        """What the legacy ONNX exporter traces: the ScriptModule, or the program's module in a holder
        whose ``train`` leaves it alone (the exporter switches to eval with it, which an exported module
        refuses; its graph was fixed in eval mode when it was exported)."""
        if isinstance(self.saved, torch.jit.ScriptModule):
            return self.saved
        return _FixedModeModule(self.saved.module())


class _FixedModeModule(nn.Module):
    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def train(self, mode: bool = True) -> _FixedModeModule:
        self.training = mode  # not passed down: the exported graph's train/eval ops are already fixed
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def saved_network(model: torch.jit.ScriptModule | torch.export.ExportedProgram,
                  shape: tuple[int, ...]) -> SavedNetwork:
    """The :class:`SavedNetwork` of a TorchScript module or a ``.pt2`` program for input ``shape``.

    A program exported for another shape is exported again from its module for ``shape``, as ``compile``
    does; that fails (``UnsupportedModelError``) where the saved graph fixed the batch size. The program
    is kept as exported, not decomposed: the legacy ONNX exporter knows ``batch_norm`` but not the core-ATen
    op it decomposes to.
    """
    from ..errors import UnsupportedModelError
    from ..frontend.load_model import user_input_shapes

    if isinstance(model, torch.jit.ScriptModule):
        return SavedNetwork(model, tuple(shape))
    exported = user_input_shapes(model)
    if exported != [tuple(shape)]:
        try:
            model = torch.export.export(model.module(), (torch.zeros(shape),))
        except Exception as e:  # torch's first line, the cause chained, and what to do about it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UnsupportedModelError(
                f"cannot trace the model for input {tuple(shape)}: {first}; the .pt2 file was exported for input "
                f"{exported[0]}: bench it with --batch {exported[0][0]}, or export it with a dynamic batch "
                "dimension") from e
    return SavedNetwork(model, tuple(shape))


_NOT_A_MODULE = ("needs the PENNI layers of a PyTorch module, which TorchScript and .pt2 files do not keep: "
                 "bench a state_dict (with --arch) or a pickled module; this file's network is in the as-saved rows")
_NOT_SAVED = ("only a TorchScript or .pt2 file has an as-saved network; "
              "this module runs as its dense and two-stage forms")


def peer_networks(model, shape: tuple[int, ...] | None = None
                  ) -> tuple[dict[str, nn.Module | SavedNetwork | str], dict[str, float]]:
    """The network of each form in :data:`FORMS` for ``model``, or why there is none; and the pruned sparsity.

    ``model`` is what ``load_model`` gives, or a :class:`SavedNetwork`. From a PyTorch module the dense,
    two-stage and pruned networks are rebuilt from its PENNI layers, as for PyTorch eager. A TorchScript
    module or ``.pt2`` program is the network as saved, at input ``shape`` (which it then needs).

    Returns
    -------
    (dict, dict)
        Form to ``nn.Module`` / :class:`SavedNetwork` or to the reason it is missing; each pruned layer's
        fraction of zeros.
    """
    from ..models.dense_copy import has_penni_layers, to_dense_model, to_two_stage_model

    if isinstance(model, (torch.jit.ScriptModule, torch.export.ExportedProgram)):
        if shape is None:
            raise ValueError("a TorchScript or .pt2 model's network needs the input shape")
        model = saved_network(model, shape)
    if isinstance(model, SavedNetwork):
        return {**dict.fromkeys(MODULE_FORMS, _NOT_A_MODULE), "as-saved": model}, {}
    if not has_penni_layers(model):
        reason = "the model has no PENNI layers, so it has no two-stage or pruned form"
        return {"dense": model.eval(), "two-stage": reason, "pruned": reason, "as-saved": _NOT_SAVED}, {}
    pruned, sparsity = magnitude_pruned_model(model)
    networks = {"dense": to_dense_model(model), "two-stage": to_two_stage_model(model), "pruned": pruned}
    return {**networks, "as-saved": _NOT_SAVED}, sparsity


@torch.no_grad()
def magnitude_pruned_model(model: nn.Module) -> tuple[nn.Module, dict[str, float]]:
    """The dense network, each PENNI conv's weight pruned by magnitude to that layer's coefficient sparsity.

    DeepSparse speeds up unstructured zeros, not PENNI's factored form, so it gets the network a
    magnitude pruner would give at the same sparsity. For every ``PenniConv2d`` the dense weight
    ``W = C·B`` is rebuilt (as in ``to_dense_model``), ``s = 1 - coefficient density of C`` is that layer's
    fraction of zeros, and the ``round(s * W.numel())`` entries of smallest ``|W|`` are set to zero. Other
    layers (1×1 convs, BatchNorm, Linear) stay as they are. There is no retraining: the pruned network
    matches the PENNI model's sparsity and cost, not its accuracy.

    Returns
    -------
    (nn.Module, dict)
        The pruned copy, and each pruned layer's path with its fraction of zero weights.
    """
    from ..models.dense_copy import to_dense_model
    from ..models.penni_conv import PenniConv2d

    sparsity = {name: 1.0 - m.coefficient_density() for name, m in model.named_modules()
                if isinstance(m, PenniConv2d)}
    if not sparsity:
        raise PeerUnavailableError("the pruned network is made from PENNI layers, and this model has none")
    pruned = to_dense_model(model)  # a deep copy, PenniConv2d -> nn.Conv2d at the same paths
    achieved = {}
    for name, target in sparsity.items():
        weight = pruned.get_submodule(name).weight  # (Cout, Cin, kh, kw)
        flat = weight.view(-1)
        k = round(target * flat.numel())
        if k:
            flat[flat.abs().argsort(stable=True)[:k]] = 0.0
        achieved[name] = float((flat == 0).sum()) / flat.numel()
    return pruned.eval(), achieved
