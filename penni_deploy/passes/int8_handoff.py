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
- with ``residual_words``, an option-A shortcut (the block input subsampled by strided slices
  and zero-padded with channels) that only an int8 conv's residual reads is taken from the words
  as well: the same slices and pads on the words (``SlicedWords``), whole channel quads padded
  with the code of zero; its float32 ops are dropped;
- the producer still writes float32 when anything else reads the output too (a pooling, the
  function's result, a float32 layer): then it writes both.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from dataclasses import dataclass, field

import tvm
from tvm import relax

from ..plan.quantize import InputQuantization, Int8Handoff


@dataclass(frozen=True, eq=False)
class SlicedWords:
    """A shortcut an int8 conv adds as its residual, read from ``source``'s words: ``ops`` (strided
    slices of the two spatial axes, zero pads of whole channel quads and of the spatial axes), in
    order from ``source``, the output of an int8 conv writing words; ``bindings``: the variables
    the ops were bound to, the last one the shortcut the conv reads."""

    source: relax.Var
    ops: tuple[relax.Call, ...]
    bindings: tuple[relax.Var, ...]


@dataclass
class Int8HandoffPlan:
    """``layers``: the handoff of every int8 conv call that reads or writes words (the others keep
    the default), keyed by the calls of the unrewritten module. ``sliced``: the shortcuts read
    from words, keyed by the variable the conv reads."""

    layers: dict[relax.Call, Int8Handoff] = field(default_factory=dict)
    sliced: dict[relax.Var, SlicedWords] = field(default_factory=dict)

    def dropped(self) -> set[relax.Var]:
        """The bindings of the shortcuts read from words: their float32 ops are not emitted."""
        return {var for chain in self.sliced.values() for var in chain.bindings}


@dataclass
class _Uses:
    int8_inputs: list[relax.Call] = field(default_factory=list)  # int8 convs reading it as their input
    int8_residuals: list[relax.Call] = field(default_factory=list)  # int8 convs adding it as their residual
    other: bool = False  # read by anything else


#: ``int8_layer(call)``: for a call of a conv composite that runs in int8, ``(index of its input
#: argument, index of its residual argument or None, its input quantization)``; else None.
Int8Layer = Callable[[relax.Call], "tuple[int, int | None, InputQuantization] | None"]


def plan_int8_handoffs(mod: tvm.IRModule, int8_layer: Int8Layer, residual_words: bool = True) -> Int8HandoffPlan:
    """Which int8 convs read and write words, and which shortcuts are read from words."""
    plan = Int8HandoffPlan()
    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or (func.attrs is not None and "Composite" in func.attrs):
            continue
        producer_of: dict[relax.Var, relax.Call] = {}
        uses: dict[relax.Var, _Uses] = {}
        chains: dict[relax.Var, SlicedWords] = {}  # every shortcut op's binding: the ops up to it
        chain_reads: dict[relax.Var, int] = {}  # shortcut ops reading a variable
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
                elif residual_words and _is_shortcut_op(value):
                    source = value.args[0]
                    prior = chains.get(source, SlicedWords(source, (), ()))
                    chains[binding.var] = SlicedWords(prior.source, prior.ops + (value,), prior.bindings + (binding.var,))
                    chain_reads[source] = chain_reads.get(source, 0) + 1
                else:
                    _mark_other(value, uses)
        _mark_other(body.body, uses)
        # shortcuts whose words a producer could hand over; the others need its float32
        candidates: dict[relax.Var, list[SlicedWords]] = {}
        for var, chain in chains.items():
            if var not in uses and chain_reads.get(var, 0) > 0:
                continue  # only read by the next shortcut op: part of a longer chain
            use = uses.get(var, _Uses())
            inner_single = all(chain_reads.get(v, 0) == 1 and v not in uses for v in chain.bindings[:-1])
            if (use.int8_residuals and not use.int8_inputs and not use.other and chain_reads.get(var, 0) == 0
                    and inner_single and int(chain.source.ty.shape[1]) % 4 == 0):  # whole quads to shift
                candidates.setdefault(chain.source, []).append(chain)
            else:
                uses.setdefault(chain.source, _Uses()).other = True
        for var, producer in producer_of.items():
            use = uses.get(var)
            if use is None or not use.int8_inputs:
                continue
            quants = {int8_layer(consumer)[2] for consumer in use.int8_inputs}
            if len(quants) != 1:  # consumers quantizing differently: each quantizes the float32 itself
                continue
            quant = quants.pop()
            _update(plan.layers, producer, float_out=use.other, out=quant)
            for consumer in use.int8_inputs:
                _update(plan.layers, consumer, quads_in=True)
            for consumer in use.int8_residuals:
                _update(plan.layers, consumer, residual=quant)
            for chain in candidates.get(var, []):
                plan.sliced[chain.bindings[-1]] = chain
                for consumer in uses[chain.bindings[-1]].int8_residuals:
                    _update(plan.layers, consumer, residual=quant)
    return plan


def _is_shortcut_op(value: relax.Expr) -> bool:
    """A strided slice of the spatial axes or a zero pad of an NCHW float32 tensor, channel
    pads in whole quads: the ops of an option-A shortcut, which words can replay exactly."""
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op) or not value.args:
        return False
    data = value.args[0]
    ty = data.ty if isinstance(data, relax.Var) else None
    if not isinstance(ty, relax.TensorType) or ty.dtype != "float32" or ty.ndim != 4:
        return False
    if value.op.name == "relax.strided_slice":
        return all(int(axis.value) in (2, 3) for axis in value.args[1])
    if value.op.name == "relax.nn.pad":
        attrs = value.attrs
        widths = [int(w) for w in attrs.pad_width]
        return (attrs.pad_mode == "constant" and float(attrs.pad_value) == 0.0 and widths[:2] == [0, 0]
                and widths[2] % 4 == 0)
    return False


def _update(handoffs: dict[relax.Call, Int8Handoff], call: relax.Call, **changes) -> None:
    handoffs[call] = dataclasses.replace(handoffs.get(call, Int8Handoff()), **changes)


def _mark_other(expr: relax.Expr, uses: dict[relax.Var, _Uses]) -> None:
    for var in relax.analysis.free_vars(expr):
        uses.setdefault(var, _Uses()).other = True
