"""LowerConvComposites: replace each fused conv chain with generated kernels (``call_tir``).

A PENNI composite becomes ``basis_conv`` (only the maps some coefficient uses) followed by
``csr_recombine`` with the chain's epilogue; a dense composite becomes ``dense_conv``. Every kernel
is generated for the layer's exact shapes and sparsity, with the target's vector width. A PENNI
layer without any nonzero coefficient computes no maps at all: its output is just the epilogue of
zero (bias, residual, ReLU) in plain Relax ops. Run after ``FuseConvEpilogues``, before legalization.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..kernels.basis_conv import basis_conv_kernel
from ..kernels.csr_recombine import csr_recombine_kernel
from ..kernels.dense_conv import dense_conv_kernel
from ..targets.base import KernelParams
from .conv_chain import ConvChain, plan_penni_layer, read_conv_chain
from .conv_patterns import PENNI_COMPOSITE
from .ir_utils import mutate_relax_functions

logger = logging.getLogger(__name__)


def _tensor(shape) -> relax.TensorType:
    return relax.TensorType(tuple(shape), "float32")


@mutator
class _CompositeLowerer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, params: KernelParams):
        super().__init__(mod)
        self.mod = mod
        self.params = params
        self.lowered = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, relax.GlobalVar):
            return call
        func = self.mod[call.op]
        if not isinstance(func, relax.Function) or func.attrs is None or "Composite" not in func.attrs:
            return call
        chain = read_conv_chain(func)
        x = call.args[chain.input_param]
        residual = None
        if chain.residual_param is not None:
            n, c, h, w = chain.out_shape
            residual = self.builder_.emit(relax.op.reshape(call.args[chain.residual_param], (n, c, h * w)))
        lower = self._lower_penni if chain.kind == PENNI_COMPOSITE else self._lower_dense
        flat = lower(chain, x, residual)
        self.lowered += 1
        return relax.op.reshape(flat, chain.out_shape)

    def _epilogue_args(self, chain: ConvChain, residual):
        args = [relax.const(chain.bias)] if chain.epilogue.bias else []
        return args + ([residual] if chain.epilogue.residual else [])

    def _lower_penni(self, chain: ConvChain, x, residual):
        plan = plan_penni_layer(chain)
        g, n_out = chain.geometry, chain.out_shape
        flat_shape = (n_out[0], n_out[1], chain.pixels)
        if plan.coefs.nnz == 0:
            return self._epilogue_only(chain, flat_shape, residual)
        basis = basis_conv_kernel(g, plan.n_maps, len(plan.channels), lanes=self.params.lanes)
        basis_gv = self.builder_.add_func(basis, "penni_basis_conv")
        maps = self.builder_.emit(relax.call_tir(
            basis_gv, [x, relax.const(plan.channels), relax.const(plan.map_ptr), relax.const(plan.map_weights)],
            _tensor((g.batch, plan.n_maps, chain.pixels))))
        csr = plan.coefs
        recombine = csr_recombine_kernel(g.batch, plan.n_maps, chain.pixels, chain.out_channels, csr.nnz,
                                         chain.epilogue, lanes=self.params.lanes)
        recombine_gv = self.builder_.add_func(recombine, "penni_csr_recombine")
        args = [maps, relax.const(csr.indptr.astype(np.int32)), relax.const(csr.indices.astype(np.int32)),
                relax.const(csr.data.astype(np.float32))]
        return self.builder_.emit(relax.call_tir(recombine_gv, args + self._epilogue_args(chain, residual),
                                                 _tensor(flat_shape)))

    def _lower_dense(self, chain: ConvChain, x, residual):
        cout = chain.out_channels
        kernel = dense_conv_kernel(chain.geometry, cout, chain.epilogue, lanes=self.params.lanes)
        gv = self.builder_.add_func(kernel, "dense_conv")
        weight = relax.const(np.ascontiguousarray(chain.weight.reshape(cout, -1)))
        flat_shape = (chain.out_shape[0], cout, chain.pixels)
        return self.builder_.emit(relax.call_tir(gv, [x, weight] + self._epilogue_args(chain, residual),
                                                 _tensor(flat_shape)))

    def _epilogue_only(self, chain: ConvChain, flat_shape, residual):
        out = relax.op.zeros(flat_shape, "float32")
        if chain.epilogue.bias:
            out = relax.op.add(out, relax.const(chain.bias.reshape(1, -1, 1)))
        if chain.epilogue.residual:
            out = relax.op.add(out, residual)
        if chain.epilogue.relu:
            out = relax.op.nn.relu(out)
        return self.builder_.emit(out)


@tvm.transform.module_pass(opt_level=0, name="LowerConvComposites")
class LowerConvComposites:
    """Lower PENNI and dense conv composites to kernels generated for the target.

    Parameters
    ----------
    params : KernelParams
        The target's kernel knobs (vector width).
    """

    def __init__(self, params: KernelParams):
        self.params = params

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        lowerer = _CompositeLowerer(mod, self.params)
        new_mod = mutate_relax_functions(mod, lowerer, skip=lambda f: f.attrs is not None and "Composite" in f.attrs)
        if lowerer.lowered == 0:
            return mod
        logger.info("LowerConvComposites: lowered %d conv chains to kernels", lowerer.lowered)
        return relax.transform.DeadCodeElimination()(new_mod)
