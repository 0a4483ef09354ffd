"""Where an int8 conv can hand the next one its output already quantized (``plan.quantize.Int8Handoff``).

An int8 conv quantizes its float32 input before it multiplies; when that input is the output of
another int8 conv, the producer's epilogue can write it quantized instead, as the channel-quad words
the consumer reads (four output channels of a register block are one quad): the consumer skips the
conversion and reads a quarter of the bytes. ``plan_int8_handoffs`` decides, from the dataflow of
the module's Relax functions before ``LowerConvComposites`` rewrites them, which producers do that:

- every use of the producer's output that is the input of an int8 conv reads the words, provided
  all those consumers quantize their input alike (they do when one calibrated tensor feeds them);
- with ``residual_words``, an int8 conv adding those words as its residual (a ResNet block's
  shortcut) reads them too, dequantized: the block input is then held in 8 bits on the shortcut
  as well (the rounding of the next conv's input, at most half its step), as int8 engines do;
- the producer still writes float32 when anything else reads the output too (a pooling, the
  function's result, a float32 layer, a shortcut's slicing): then it writes both.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from dataclasses import dataclass, field

import tvm
from tvm import relax

from ..plan.quantize import InputQuantization, Int8Handoff


@dataclass
class _Uses:
    int8_inputs: list[relax.Call] = field(default_factory=list)  # int8 convs reading it as their input
    int8_residuals: list[relax.Call] = field(default_factory=list)  # int8 convs adding it as their residual
    other: bool = False  # read by anything else


#: ``int8_layer(call)``: for a call of a conv composite that runs in int8, ``(index of its input
#: argument, index of its residual argument or None, its input quantization)``; else None.
Int8Layer = Callable[[relax.Call], "tuple[int, int | None, InputQuantization] | None"]


def plan_int8_handoffs(mod: tvm.IRModule, int8_layer: Int8Layer, residual_words: bool = True,
                       ) -> dict[relax.Call, Int8Handoff]:
    """The handoff of every int8 conv call that reads or writes words (the others keep the default).
    Keys are the calls of the unrewritten module."""
    handoffs: dict[relax.Call, Int8Handoff] = {}
    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or (func.attrs is not None and "Composite" in func.attrs):
            continue
        producer_of: dict[relax.Var, relax.Call] = {}
        uses: dict[relax.Var, _Uses] = {}
        body = func.body
        for block in body.blocks:
            for binding in block.bindings:
                value = binding.value
                conv = int8_layer(value) if isinstance(value, relax.Call) else None
                if conv is not None:
                    producer_of[binding.var] = value
                    input_index, residual_index, _ = conv
                    for i, arg in enumerate(value.args):
                        if i == input_index and isinstance(arg, relax.Var):
                            uses.setdefault(arg, _Uses()).int8_inputs.append(value)
                        elif i == residual_index and residual_words and isinstance(arg, relax.Var):
                            uses.setdefault(arg, _Uses()).int8_residuals.append(value)
                        else:
                            _mark_other(arg, uses)
                else:
                    _mark_other(value, uses)
        _mark_other(body.body, uses)
        for var, producer in producer_of.items():
            use = uses.get(var)
            if use is None or not use.int8_inputs:
                continue
            quants = {int8_layer(consumer)[2] for consumer in use.int8_inputs}
            if len(quants) != 1:  # consumers quantizing differently: each quantizes the float32 itself
                continue
            quant = quants.pop()
            _update(handoffs, producer, float_out=use.other, out=quant)
            for consumer in use.int8_inputs:
                _update(handoffs, consumer, quads_in=True)
            for consumer in use.int8_residuals:
                _update(handoffs, consumer, residual=quant)
    return handoffs


def _update(handoffs: dict[relax.Call, Int8Handoff], call: relax.Call, **changes) -> None:
    handoffs[call] = dataclasses.replace(handoffs.get(call, Int8Handoff()), **changes)


def _mark_other(expr: relax.Expr, uses: dict[relax.Var, _Uses]) -> None:
    for var in relax.analysis.free_vars(expr):
        uses.setdefault(var, _Uses()).other = True
