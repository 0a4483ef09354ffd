"""LowerLinear: replace ``matmul(x, W)`` with a constant 2-D ``W`` by the target's GEMM kernel.

After ``FoldWeightExpressions`` a PyTorch Linear is ``add(bias, matmul(x, Wᵀ))`` with ``Wᵀ`` a
constant. TVM 0.27's CPU rules give such a matmul only a generic schedule (AlexNet's three Linear
layers ran 11× slower than PyTorch), so where the target's ``KernelLibrary.linear`` offers a kernel
the matmul becomes a ``call_tir`` of it, with the weights packed once at compile time. The bias add
stays a Relax op (one pass over N × out values). Targets without a kernel keep the matmul. Run with
the kernel lowering, before legalization.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels.library import KernelLibrary
from .ir_utils import const_value, is_call_to, mutate_relax_functions, static_shape

logger = logging.getLogger(__name__)


@mutator
class _LinearLowerer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, kernels: KernelLibrary):
        super().__init__(mod)
        self.kernels = kernels
        self.lowered = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not is_call_to(call, "relax.matmul"):
            return call
        x, w = call.args
        weight = const_value(w)
        x_shape = static_shape(x)
        if weight is None or weight.ndim != 2 or x_shape is None or len(x_shape) != 2:
            return call  # batched or dynamic matmuls, activations × activations: not a Linear
        if str(call.ty.dtype) != "float32" or weight.dtype != "float32":
            return call
        lowered = self.kernels.linear(int(x_shape[0]), weight)
        if lowered is None:
            return call
        func, constants = lowered
        gv = self.builder_.add_func(func, "linear")
        self.lowered += 1
        out = relax.TensorType((int(x_shape[0]), int(weight.shape[1])), "float32")
        return relax.call_tir(gv, [x] + [relax.const(c) for c in constants], out)


@tvm.transform.module_pass(opt_level=0, name="LowerLinear")
class LowerLinear:
    """Lower constant-weight 2-D matmuls (Linear layers) to the target's GEMM kernel.

    Parameters
    ----------
    kernels : KernelLibrary
        The target's kernel generators; ``kernels.linear`` returning None leaves a matmul alone.
    """

    def __init__(self, kernels: KernelLibrary):
        self.kernels = kernels

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        lowerer = _LinearLowerer(mod, self.kernels)
        new_mod = mutate_relax_functions(mod, lowerer, skip=lambda f: f.attrs is not None and "Composite" in f.attrs)
        if lowerer.lowered == 0:
            return mod
        logger.info("LowerLinear: lowered %d matmuls to kernels", lowerer.lowered)
        return new_mod
