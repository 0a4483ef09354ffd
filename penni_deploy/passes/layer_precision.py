"""Layers kept in float32 in a reduced-precision build (``compile --precision bf16 --fp32-layers``).

A bf16 build rounds every dense layer's operands; on some networks a few early layers make most of
the output's error (``benchmarks/bf16_error_sources.py``). This marks the chosen composites, by the
``#N`` the reports and ``profile`` number them, so the kernel library builds their float32 kernels.
"""

from __future__ import annotations

import tvm

from ..errors import InputSpecError
from .conv_chain import with_precision
from .layer_report import composite_vars_in_order


def parse_layer_numbers(spec: str) -> tuple[int, ...]:
    """``"0-3,7"`` -> ``(0, 1, 2, 3, 7)``: layer numbers and inclusive ranges, comma-separated."""
    numbers: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        try:
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
        except ValueError:
            raise InputSpecError(f"--fp32-layers {spec!r}: {part!r} is not a layer number or range such as 0-9; "
                                 "the numbers are the #N of `compile --report` and `profile`") from None
        if first < 0 or last < first:
            raise InputSpecError(f"--fp32-layers {spec!r}: {part!r} is not an ascending range of layer numbers")
        numbers.update(range(first, last + 1))
    return tuple(sorted(numbers))


def keep_layers_fp32(mod: tvm.IRModule, numbers: tuple[int, ...]) -> tvm.IRModule:
    """``mod`` with conv layers ``numbers`` (execution order, as reported) marked float32."""
    gvars = composite_vars_in_order(mod)
    beyond = [n for n in numbers if n >= len(gvars)]
    if beyond:
        raise InputSpecError(f"--fp32-layers names layer {beyond[0]}, but the model has {len(gvars)} conv layers "
                             f"(#0-#{len(gvars) - 1}; see `compile --report`)")
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for n in numbers:
        out[gvars[n]] = with_precision(mod[gvars[n]], "fp32")
    return out
