"""Trace a loaded model with torch.export and import it into TVM Relax.

Every format goes through one path: ``nn.Module`` → ``torch.export`` → core-ATen decompositions →
``tvm.relax.frontend.torch.from_exported_program`` with weights as constants (the graph passes
need their values). Ops the importer cannot translate are listed by name and module path before
import, instead of surfacing as an assertion deep inside TVM.
"""

from __future__ import annotations

import logging
import warnings

import torch
import tvm

from ..errors import InputSpecError, UnsupportedModelError
from .load_model import LoadedModel, user_input_shapes
from .rebatch import rebatch_program

logger = logging.getLogger(__name__)


def resolve_input_shape(loaded: LoadedModel, input_shape: tuple[int, ...] | None,
                        batch: int | None = None) -> tuple[int, ...]:
    """The shape to compile for: ``input_shape`` if given, else the file's, with ``batch`` applied."""
    shape = tuple(input_shape) if input_shape else loaded.input_shape
    if shape is None:
        raise InputSpecError(f"{loaded.format} file records no input shape: pass --input-shape, e.g. 1,3,32,32")
    if len(shape) != 4 or any(d <= 0 for d in shape):
        raise InputSpecError(f"input shape {shape} must be 4 positive sizes N,C,H,W (e.g. 1,3,32,32)")
    if batch is not None:
        # caught here: a batch-0 trace gets all the way into TVM's TIR checks before failing
        if batch < 1:
            raise InputSpecError(f"--batch {batch} must be a positive batch size, e.g. --batch 8")
        shape = (batch,) + tuple(shape[1:])
    return shape


def export_program(loaded: LoadedModel, input_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
    """A float32 ExportedProgram of ``loaded`` for inputs of ``input_shape``."""
    example = torch.zeros(input_shape, dtype=torch.float32)
    model = loaded.model
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(model, torch.export.ExportedProgram):
                program = model if user_input_shapes(model) == [tuple(input_shape)] else \
                    rebatch_program(model, tuple(input_shape))
            elif isinstance(model, torch.jit.ScriptModule):
                program = _export_torchscript(model, example)
            else:
                program = torch.export.export(model.eval(), (example,))
    except UnsupportedModelError:
        raise
    except Exception as exc:  # torch's export errors are long; keep the first line and the cause
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"cannot trace the model for input {tuple(input_shape)}: {first}") from exc
    _check_float32(program)
    return program.run_decompositions(_decompositions())


def _convolution_as_convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups,
                                *_cudnn_flags):
    return torch.ops.aten.convolution.default(x, weight, bias, stride, padding, dilation, transposed,
                                              output_padding, groups)


def _decompositions():
    """Core-ATen decompositions, plus ``aten._convolution`` (what frozen TorchScript calls), which the
    default table keeps and the Relax importer does not know."""
    table = torch.export.default_decompositions()
    table[torch.ops.aten._convolution.default] = _convolution_as_convolution
    return table


class _ScriptWrapper(torch.nn.Module):
    """Holds a frozen ScriptModule so non-strict torch.export can trace through its interpreter."""

    def __init__(self, script: torch.jit.ScriptModule):
        super().__init__()
        self.script = script

    def forward(self, x):
        return self.script(x)


def _export_torchscript(module: torch.jit.ScriptModule, example: torch.Tensor) -> torch.export.ExportedProgram:
    # torch.export refuses ScriptModules, and its TorchScript converter trips on shape arithmetic
    # in traced CNNs (flatten). Freezing turns the parameters into graph constants; a non-strict
    # export then records the aten ops the TorchScript interpreter dispatches, weights as constants.
    frozen = torch.jit.freeze(module.eval()) if hasattr(module, "training") else module
    return torch.export.export(_ScriptWrapper(frozen), (example,), strict=False)


def _check_float32(program: torch.export.ExportedProgram) -> None:
    bad = sorted({f"{name} ({t.dtype})" for name, t in program.state_dict.items()
                  if t.is_floating_point() and t.dtype != torch.float32})
    if bad:
        raise UnsupportedModelError(f"only float32 models are supported; found {', '.join(bad[:5])}. "
                                    "Convert with model.float() before saving.")


def unsupported_ops(program: torch.export.ExportedProgram) -> list[str]:
    """``op (at module.path)`` for each graph node the Relax importer cannot translate."""
    from tvm.relax.frontend.torch.exported_program_translator import (
        ExportedProgramImporter,
    )

    supported = ExportedProgramImporter().convert_map
    found = []
    for node in program.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__name__", str(node.target)) not in supported:
            stack = node.meta.get("nn_module_stack") or {}
            where = next(reversed(stack.values()))[0] if stack else node.name
            found.append(f"{getattr(node.target, '__name__', node.target)} (at {where or '<top level>'})")
    return sorted(set(found))


def to_relax(program: torch.export.ExportedProgram) -> tvm.IRModule:
    """Import into Relax with weights as constants; refuse up front with the list of unsupported ops."""
    from tvm.relax.frontend.torch import from_exported_program

    missing = unsupported_ops(program)
    if missing:
        raise UnsupportedModelError(f"unsupported op(s): {'; '.join(missing)}")
    return from_exported_program(program, keep_params_as_input=False, run_ep_decomposition=False,
                                 unwrap_unit_return_tuple=True)
