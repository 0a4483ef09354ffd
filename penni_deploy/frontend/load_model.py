"""Load a model file in any accepted format, safely by default.

Accepted:

- TorchScript archive (``torch.jit.save``): loaded with ``torch.jit.load`` (TorchScript code runs in
  the TorchScript interpreter, not as arbitrary Python), then converted to an ExportedProgram.
- torch.export archive (``.pt2``, ``torch.export.save``).
- state_dict checkpoint (``torch.save(model.state_dict())``) plus ``--arch``: read with
  ``torch.load(weights_only=True)``, which cannot run code.
- Whole pickled ``nn.Module`` (``torch.save(model)``, the reference PENNI releases): a pickle can
  run arbitrary code while loading, so it is refused unless ``trust_pickle=True``, and even then it
  goes through an allow-list unpickler (``safe_unpickle``) mapping known classes to ours.

A file's format is recognized from its content, not its name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..data.input_record import INPUT_SHAPE_EXTRA, PREPROCESSING_EXTRA, Preprocessing
from ..errors import ModelLoadError

logger = logging.getLogger(__name__)

#: Input shape of the CIFAR-10 networks (the zoo's per-architecture shapes are ``models.INPUT_SHAPES``).
ZOO_INPUT_SHAPE = (1, 3, 32, 32)

# Keys under which training scripts commonly nest the state_dict in a checkpoint dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready for export: an ``nn.Module`` or an ``ExportedProgram``.

    ``input_shape`` is the shape recorded in the file, if any; ``source_sha256`` fingerprints the file;
    ``preprocessing`` is the mean and std of [0, 1] pixels the file records (``compress`` writes it), if any.
    """

    model: nn.Module | torch.export.ExportedProgram
    format: str  # torchscript | pt2 | state_dict | pickle | module
    input_shape: tuple[int, ...] | None
    source_sha256: str
    source_path: str | None = None
    preprocessing: Preprocessing | None = None


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def detect_format(path: str) -> str:
    """``torchscript``, ``pt2`` or ``torch_save`` (a pickle: state_dict or whole module)."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":  # legacy (pre-1.6) torch.save pickle
            return "torch_save"
        raise ModelLoadError(
            f"{path} is not a model file penni-deploy can read (not a zip archive nor a torch pickle; "
            "it may be corrupt or truncated). Save the model with torch.jit.save, torch.export.save or torch.save.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelLoadError(f"{path} is a corrupt or truncated archive ({exc}); re-save the model") from None
    if bad is not None:
        raise ModelLoadError(f"{path} is corrupt: member {bad} fails its checksum; re-save the model")
    tails = {name.split("/", 1)[-1] for name in names}
    if "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "archive_format" in tails or "models/model.json" in tails or "serialized_exported_program.json" in tails:
        return "pt2"
    if "data.pkl" in tails:
        return "torch_save"
    raise ModelLoadError(f"{path} is a zip archive but not a TorchScript, torch.export or torch.save file")


def load_model(path: str | os.PathLike[str], *, arch: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Load ``path`` (see the module docstring for formats). ``arch`` names the zoo architecture
    of a state_dict checkpoint; ``trust_pickle`` allows whole pickled modules (allow-listed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelLoadError(f"no such model file: {path}")
    sha = file_sha256(path)
    fmt = detect_format(path)
    if fmt == "torchscript":
        return _load_torchscript(path, sha)
    if fmt == "pt2":
        return _load_pt2(path, sha)
    return _load_torch_save(path, sha, arch, trust_pickle)


def _read_preprocessing(text: str, path: str) -> Preprocessing | None:
    """The recorded preprocessing, or None when the file records none (or a malformed one: nothing is guessed)."""
    if not text:
        return None
    try:
        return Preprocessing.from_json(text)
    except ValueError as exc:
        logger.warning("ignoring malformed %s in %s (%s)", PREPROCESSING_EXTRA, path, exc)
        return None


def _load_torchscript(path: str, sha: str) -> LoadedModel:
    extra = {INPUT_SHAPE_EXTRA: "", PREPROCESSING_EXTRA: ""}
    try:
        module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError/ValueError variants for damaged archives
        raise ModelLoadError(f"cannot load TorchScript archive {path}: {_first_line(exc)}") from None
    shape = None
    if extra[INPUT_SHAPE_EXTRA]:
        try:
            shape = tuple(int(v) for v in json.loads(extra[INPUT_SHAPE_EXTRA]))
        except (ValueError, TypeError):
            logger.warning("ignoring malformed %s in %s", INPUT_SHAPE_EXTRA, path)
    return LoadedModel(module.eval(), "torchscript", shape, sha, path,
                       _read_preprocessing(extra[PREPROCESSING_EXTRA], path))


def _load_pt2(path: str, sha: str) -> LoadedModel:
    extra = {PREPROCESSING_EXTRA: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as exc:
        raise ModelLoadError(f"cannot load torch.export archive {path}: {_first_line(exc)}") from None
    shapes = user_input_shapes(program)
    if len(shapes) != 1:
        raise ModelLoadError(f"{path} takes {len(shapes)} inputs; penni-deploy compiles single-input CNNs")
    shape = shapes[0]
    if shape and not isinstance(shape[0], int):  # a dynamic batch: compile for 1 unless --batch says
        shape = (1,) + tuple(shape[1:])
    if not all(isinstance(d, int) for d in shape):
        shape = None  # other dynamic sizes: --input-shape must give them
    return LoadedModel(program, "pt2", shape, sha, path, _read_preprocessing(extra[PREPROCESSING_EXTRA], path))


def user_input_shapes(program: torch.export.ExportedProgram) -> list[tuple[int, ...]]:
    """Shapes of the inputs ``program`` was exported for (its weights excluded)."""
    user_inputs = {spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"}
    return [tuple(node.meta["val"].shape) for node in program.graph.nodes
            if node.op == "placeholder" and node.name in user_inputs]


def _load_torch_save(path: str, sha: str, arch: str | None, trust_pickle: bool) -> LoadedModel:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses any global beyond tensors and containers: this is a pickled object.
        if not trust_pickle:
            raise ModelLoadError(
                f"{path} is a pickled Python object (e.g. a whole nn.Module), and unpickling can run arbitrary "
                "code. If you trust the file, pass --trust-pickle (it is then loaded through an allow-list of "
                "known PENNI/torch.nn classes); otherwise save a state_dict and pass --arch.") from None
        from ..models import ARCHITECTURES, INPUT_SHAPES
        from .safe_unpickle import load_pickled_module

        module = load_pickled_module(path)
        # Zoo networks (ours, or the reference's mapped onto ours) have a known input shape.
        arch = next((name for name, cls in ARCHITECTURES.items() if type(module) is cls), None)
        shape = INPUT_SHAPES[arch] if arch else None
        return LoadedModel(module, "pickle", shape, sha, path)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path} with torch.load: {_first_line(exc)} (corrupt or truncated?)") from None
    state_dict = _find_state_dict(obj)
    if state_dict is None:
        raise ModelLoadError(f"{path} holds a {type(obj).__name__} without tensors; expected a state_dict")
    if arch is None:
        from ..models import ARCHITECTURES

        raise ModelLoadError(f"{path} is a state_dict checkpoint: pass --arch ({', '.join(sorted(ARCHITECTURES))}) "
                             "to say which network it belongs to")
    from ..models import INPUT_SHAPES, build_model

    model = build_model(arch, state_dict)
    return LoadedModel(model, "state_dict", INPUT_SHAPES[arch.lower()], sha, path)


def _find_state_dict(obj) -> Mapping[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in _STATE_DICT_KEYS:
            if key in obj:
                return _find_state_dict(obj[key])
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
