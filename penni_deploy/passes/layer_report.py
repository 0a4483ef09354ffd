"""Per-layer facts of a fused module: what each conv chain costs dense and as compiled.

Read from the composites ``FuseConvEpilogues`` made, through the same ``plan_penni_layer`` that
``LowerConvComposites`` uses, so the report is what gets built. MACs are per image.
"""

from __future__ import annotations

import tvm
from tvm import relax

from ..plan.layers import PENNI_COMPOSITE, dense_as_penni, plan_penni_layer
from .conv_chain import read_conv_chain


def composite_vars_in_order(mod: tvm.IRModule) -> list[relax.GlobalVar]:
    """The conv composites ``main`` calls, in execution order: what layer ``#N`` of the reports is."""
    gvars = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, relax.GlobalVar):
            func = mod[expr.op]
            if isinstance(func, relax.Function) and func.attrs is not None and "Composite" in func.attrs:
                gvars.append(expr.op)

    relax.analysis.post_order_visit(mod["main"], visit)
    return gvars


def _composite_calls_in_order(mod: tvm.IRModule) -> list[relax.Function]:
    return [mod[gv] for gv in composite_vars_in_order(mod)]


def describe_conv_layers(mod: tvm.IRModule, chooser=None) -> list[dict]:
    """One JSON-able dict per conv chain of ``main``, in execution order; with the ``chooser`` the
    build uses, each layer also says how it is computed and why (cost model, tuned, ...)."""
    layers = []
    for index, func in enumerate(_composite_calls_in_order(mod)):
        chain = read_conv_chain(func)
        g = chain.geometry
        cout, pixels = chain.out_channels, chain.pixels
        taps = g.kernel_h * g.kernel_w
        entry = {
            "index": index,
            "input": [g.batch, g.in_channels, g.height, g.width],
            "output": list(chain.out_shape),
            "kernel": [g.kernel_h, g.kernel_w],
            "stride": list(g.stride),
            "padding": list(g.padding),
            "dilation": list(g.dilation),
            "epilogue": chain.epilogue.describe(),
        }
        if chain.kind == PENNI_COMPOSITE:
            plan = plan_penni_layer(chain)
            nnz = plan.coefs.nnz
            kernels = "basis_conv + csr_recombine" if nnz else "epilogue only (all coefficients zero)"
            macs_compiled = pixels * (plan.n_maps * taps + nnz)
            if chooser is not None and nnz:
                config = chooser.penni(plan)
                coef_first = plan.coef_first() if config.order == "coef_first" else None
                if coef_first is not None:
                    macs_compiled = g.height * g.width * nnz + pixels * coef_first.n_rows * taps
                kernels = f"{config.describe()} ({_source(chooser, plan=plan)})"
            entry.update(
                kind="penni", bases=plan.num_bases,
                coef_density=nnz / max(1, cout * g.in_channels * plan.num_bases),
                maps_computed=plan.n_maps, maps_total=g.in_channels * plan.num_bases,
                macs_dense=pixels * cout * g.in_channels * taps,
                macs_compiled=macs_compiled, kernels=kernels + chain.epilogue.describe())
        else:
            macs = pixels * cout * g.in_channels * taps
            kernels, density, compiled = "dense_conv", 1.0, macs
            if chooser is not None:
                impl = chooser.dense(chain)
                source = _source(chooser, chain=chain)
                kernels = {"hand": "dense_conv", "sparse": "sparse"}.get(impl, "TVM conv2d, MetaSchedule")
                if impl == "sparse":  # mostly-zero weights, in exact PENNI form (plan.layers.dense_as_penni)
                    plan = plan_penni_layer(dense_as_penni(chain))
                    density = plan.coefs.nnz / max(1, macs // max(1, pixels))
                    compiled = pixels * (plan.n_maps * taps + plan.coefs.nnz)
                    if plan.coefs.nnz:
                        kernels += f" {chooser.penni(plan).describe()}"
                kernels += f" ({source})"
            entry.update(kind="dense", bases=None, coef_density=density, maps_computed=None, maps_total=None,
                         macs_dense=macs, macs_compiled=compiled, kernels=kernels + chain.epilogue.describe())
        if chain.precision is not None:  # kept out of the build's reduced precision (--fp32-layers)
            entry["precision"] = chain.precision
            entry["kernels"] += f" [{chain.precision}]"
        layers.append(entry)
    return layers


def _source(chooser, plan=None, chain=None) -> str:
    from ..tuning.workload import dense_workload_key, penni_workload_key

    key = penni_workload_key(plan) if plan is not None else dense_workload_key(chain)
    note = chooser.log.get(key, {})
    return note.get("source", "?") + (f" {note['ms']:.3f} ms" if "ms" in note else "")


def format_layer_table(layers: list[dict]) -> str:
    """A fixed-width table of ``describe_conv_layers`` output for people."""
    header = f"{'#':>3} {'kind':5} {'in (C×H×W)':>13} {'out':>13} {'k/s':>5} {'d':>2} {'density':>8} " \
             f"{'MACs dense':>11} {'compiled':>10} {'ratio':>6}  kernels"
    rows = [header, "-" * len(header)]
    for layer in layers:
        _, c, h, w = layer["input"]
        _, co, ho, wo = layer["output"]
        ks = f"{layer['kernel'][0]}/{layer['stride'][0]}"
        d = "-" if layer["bases"] is None else str(layer["bases"])
        ratio = layer["macs_dense"] / max(1, layer["macs_compiled"])
        rows.append(f"{layer['index']:>3} {layer['kind']:5} {f'{c}×{h}×{w}':>13} {f'{co}×{ho}×{wo}':>13} {ks:>5} "
                    f"{d:>2} {layer['coef_density']:>7.1%} {layer['macs_dense']:>11,} {layer['macs_compiled']:>10,} "
                    f"{ratio:>5.1f}×  {layer['kernels']}")
    dense = sum(layer["macs_dense"] for layer in layers)
    compiled = sum(layer["macs_compiled"] for layer in layers)
    rows.append(f"conv MACs per image: dense {dense:,}, compiled {compiled:,} ({dense / max(1, compiled):.1f}× fewer)")
    return "\n".join(rows)
