"""The kernel table: every PrimFunc call of the compiled ``main``, in run order, with its conv layer.

``penni-deploy profile`` times the kernels the VM calls, but a kernel's name does not say which layer
it computes: identical kernels are shared by layers of the same shape, and one layer may run two
kernels (basis conv, then recombination). So the build records, for each call site, the layer whose
composite ``LowerConvComposites`` lowered into it; the manifest stores the table (``kernels``) as a
list of small dicts, in the order the VM calls them:

- ``kernel``: the symbol the VM calls (the PrimFunc's global symbol),
- ``layer``: the index into the manifest's ``layers`` (``None`` for ops between the convs),
- ``op``: ``penni`` or ``dense`` for layer kernels, else the fused op names (``max_pool2d``, ``add``,
  ``matmul_add``, ``reshape_reshape``, ...),
- ``macs``: multiply-adds per run of the model for a matmul between the convs (``None`` otherwise;
  a layer's MACs are in ``layers``),
- ``weight_bytes``: bytes of the constants the call reads (packed weights, coefficients, bias):
  what a weight-bound kernel (a Linear at batch 1) must stream from memory on every run.

A micro-batched build calls each layer's kernels once per micro-batch; every call is listed, with
its layer. The layer of each call is read right after ``LowerConvComposites`` (the composite binding's variable
survives the rewrite; every ``call_tir`` bound before it since the previous layer is that layer's),
then matched in order against the final module's calls of the same kernels. Later passes keep the
order of these opaque kernels; if they ever did not, the table says ``layer: None`` rather than guess.
A composite binding whose type the lowering changes (an int8 conv whose output only the next int8
convs read, as quantized words) does not survive; the pass names the kernel call standing for it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence

import numpy as np
import tvm
from tvm import relax, tirx

from ..passes.conv_patterns import PENNI_COMPOSITE

logger = logging.getLogger(__name__)

_LOWERING_PASS = "LowerConvComposites"


def _bindings(func: relax.Function) -> Iterator[relax.Binding]:
    body = func.body
    for block in body.blocks:
        yield from block.bindings


def _callee(mod: tvm.IRModule, value) -> tuple[relax.GlobalVar, object] | None:
    if isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar) and value.op in mod.functions:
        return value.op, mod[value.op]
    if isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir"):
        gv = value.args[0]
        return gv, mod[gv]
    return None


class KernelTableRecorder:
    """Records, around ``LowerConvComposites``, which layer each kernel call computes.

    Use :meth:`wrap` on a target's pass list, run it, then :meth:`table` on the final module.
    """

    def __init__(self):
        self._layer_of_var: dict[relax.Var, tuple[int, str]] = {}  # composite binding -> (index, kind)
        self.layer_kernels: list[tuple[str, int, str]] = []  # (PrimFunc name, layer index, kind), in order

    def wrap(self, passes: Sequence[tvm.transform.Pass]) -> list[tvm.transform.Pass]:
        """``passes`` with the recording passes around ``LowerConvComposites``."""
        wrapped = []
        for p in passes:
            if p.info.name == _LOWERING_PASS:
                wrapped += [self._before(), p, self._after(p)]
            else:
                wrapped.append(p)
        return wrapped

    def _before(self) -> tvm.transform.Pass:
        def record(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
            # Same order as ``describe_conv_layers``: composites as ``main`` binds them.
            index = 0
            for binding in _bindings(mod["main"]):
                found = _callee(mod, binding.value)
                if found and isinstance(found[1], relax.Function) and found[1].attrs is not None \
                        and "Composite" in found[1].attrs:
                    kind = "penni" if str(found[1].attrs["Composite"]) == PENNI_COMPOSITE else "dense"
                    self._layer_of_var[binding.var] = (index, kind)
                    index += 1
            return mod

        return tvm.transform.module_pass(record, opt_level=0, name="RecordConvLayers")

    def _after(self, lowering: tvm.transform.Pass) -> tvm.transform.Pass:
        def record(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
            # bindings the lowering could not keep (their type changed) and the variables standing for them
            stand_ins = getattr(lowering, "stand_ins", {})
            pending: list[str] = []
            for binding in _bindings(mod["main"]):
                found = _callee(mod, binding.value)
                if found and isinstance(found[1], tirx.PrimFunc):
                    pending.append(found[0].name_hint)
                layer = self._layer_of_var.get(stand_ins.get(binding.var, binding.var))
                if layer is not None:
                    self.layer_kernels += [(name, *layer) for name in pending]
                    pending = []
            if pending:  # the classifier's kernels (a Linear, a zero layer's epilogue): between layers, as meant
                logger.debug("kernel table: %d kernels after the last conv layer belong to no conv layer", len(pending))
            return mod

        return tvm.transform.module_pass(record, opt_level=0, name="RecordLayerKernels")

    def table(self, mod: tvm.IRModule) -> list[dict]:
        """The kernel table of the final (VM-lowered) ``mod``; see the module docstring."""
        calls = list(_primfunc_calls(mod))
        layer_names = [name for name, _, _ in self.layer_kernels]
        ours = [i for i, (gv_name, _, _) in enumerate(calls) if gv_name in set(layer_names)]
        layer_at: dict[int, tuple[int, str]] = {}
        # A micro-batched main (RepeatOverMicroBatches) runs the layers' kernels once per micro-batch.
        repeats = max(1, len(ours) // max(1, len(layer_names)))
        if [calls[i][0] for i in ours] == layer_names * repeats:
            layer_at = {i: (layer, kind) for i, (_, layer, kind) in zip(ours, self.layer_kernels * repeats)}
        elif layer_names:
            logger.warning("kernel table: the final kernel calls do not follow the lowered layers' order; "
                           "layers left unattributed")
        table = []
        for i, (gv_name, func, args) in enumerate(calls):
            symbol = str(func.attrs["global_symbol"]) if func.attrs and "global_symbol" in func.attrs else gv_name
            if i in layer_at:
                layer, kind = layer_at[i]
                table.append({"kernel": symbol, "layer": layer, "op": kind, "macs": None,
                              "weight_bytes": _constant_bytes(args)})
            else:
                table.append({"kernel": symbol, "layer": None, "op": op_kind(gv_name),
                              "macs": _matmul_macs(gv_name, args), "weight_bytes": _constant_bytes(args)})
        return table


def _primfunc_calls(mod: tvm.IRModule) -> Iterator[tuple[str, tirx.PrimFunc, list]]:
    for binding in _bindings(mod["main"]):
        found = _callee(mod, binding.value)
        if found and isinstance(found[1], tirx.PrimFunc):
            args = list(binding.value.args)
            if binding.value.op == tvm.ir.Op.get("relax.call_tir"):  # not yet rewritten: output is the binding
                args = [*binding.value.args[1].fields, binding.var]
            yield found[0].name_hint, found[1], args


def op_kind(name: str) -> str:
    """What a legalized (and fused) PrimFunc computes, from its name: ``fused_reshape1_add2`` → ``reshape_add``."""
    name = name.removeprefix("fused_")
    return "_".join(re.sub(r"\d+$", "", part) for part in name.split("_") if not part.isdigit()) or name


def _shape(expr) -> list[int] | None:
    ty = getattr(expr, "ty", None)
    shape = getattr(ty, "shape", None)
    if shape is None:
        return None
    try:
        return [int(d) for d in shape]
    except (TypeError, ValueError):
        return None


def _constant_bytes(args: list) -> int:
    total = 0
    for arg in args:
        if isinstance(arg, tvm.ir.expr.Constant):
            value = arg.value
            total += int(np.prod(value.shape, dtype=np.int64)) * np.dtype(str(value.dtype)).itemsize
    return total


def _matmul_macs(name: str, args: list) -> int | None:
    """Multiply-adds of a Linear (our ``linear`` kernel, or a legalized matmul): output elements × the
    contracted size."""
    if not ("matmul" in name or name.startswith("linear")) or len(args) < 2:
        return None
    a, out = _shape(args[0]), _shape(args[-1])
    if not a or not out:
        return None
    macs = a[-1]
    for d in out:
        macs *= d
    return macs
