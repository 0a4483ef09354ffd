"""RepeatOverMicroBatches: run a network built for m images over a batch of k·m, micro-batch by micro-batch.

``main`` is compiled for the micro-batch (see ``plan.micro_batch``); this pass turns it into the
``main`` a user calls with the whole batch: the input is sliced into k micro-batches along axis 0,
each goes through a copy of the original body, and the k outputs are concatenated. The copies call
the same kernels with the same constant objects, so weights are stored once (the VM's constant pool
holds each object once), and static memory planning reuses the first copy's buffers for the next.

Run after the kernel lowering (``LowerConvComposites``, ``LowerLinear``): its weight constants are
then shared by the copies; lowering each copy itself would make new constants per call site. The
slices and the concatenation are plain Relax ops, legalized and scheduled with the rest.
"""

from __future__ import annotations

import tvm
from tvm import relax


@tvm.transform.module_pass(opt_level=0, name="RepeatOverMicroBatches")
class RepeatOverMicroBatches:
    """Make ``main`` take ``repeats`` times its input batch and run its body once per micro-batch.

    Parameters
    ----------
    repeats : int
        k, the micro-batches per call (1: the module is returned unchanged).
    """

    def __init__(self, repeats: int):
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, not {repeats}")
        self.repeats = repeats

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if self.repeats == 1:
            return mod
        main_gv = mod.get_global_var("main")
        main = mod[main_gv]
        if len(main.params) != 1:
            raise ValueError("micro-batching needs a main with one input tensor")
        x = main.params[0]
        shape = [int(d) for d in x.ty.shape]
        images = shape[0]
        out_ty = main.ret_ty
        if not isinstance(out_ty, relax.TensorType) or out_ty.shape is None:
            raise ValueError("micro-batching needs a main that returns one tensor")

        # The original body becomes a private function, called once per micro-batch, then inlined.
        body_fn = relax.Function(main.params, main.body, main.ret_ty, main.is_pure, main.attrs)
        body_fn = body_fn.without_attr("global_symbol")
        builder = relax.BlockBuilder(mod)
        body_gv = builder.add_func(body_fn, "micro_batch_body")

        whole = relax.Var(x.name, relax.TensorType([images * self.repeats, *shape[1:]], x.ty.dtype))
        with builder.function("micro_batched_main", [whole]):
            with builder.dataflow():
                outputs = []
                for j in range(self.repeats):
                    part = builder.emit(relax.op.strided_slice(whole, axes=[0], begin=[j * images],
                                                               end=[(j + 1) * images]))
                    outputs.append(builder.emit(relax.Call(body_gv, [part])))
                result = builder.emit_output(relax.op.concat(outputs, axis=0))
            builder.emit_func_output(result)
        built = builder.get()
        new_gv = built.get_global_var("micro_batched_main")
        functions = {gv: f for gv, f in built.functions.items() if gv != new_gv}
        functions[main_gv] = built[new_gv].with_attrs(main.attrs) if main.attrs else built[new_gv]
        new_mod = tvm.IRModule(functions, attrs=built.attrs)
        new_mod = relax.transform.InlinePrivateFunctions()(new_mod)
        return relax.transform.DeadCodeElimination(["main"])(new_mod)
