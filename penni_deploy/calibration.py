"""Calibration for ``compile --precision int8``: the range of every conv layer's input.

The graph-rewritten module (each conv chain a composite function) is built once more in float32 for
this machine with ``main`` also returning each composite's input; the calibration images run through
it in batches, and each layer keeps the range ``plan.quantize.observed_range`` makes of what it saw.
``annotate_input_ranges`` writes the ranges onto the composites, where the kernel lowering reads them
(``ConvChain.input_range``), so the int8 build quantizes each layer with its own scale.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from .errors import InputSpecError
from .passes.conv_chain import read_conv_chain, with_input_range
from .passes.ir_utils import static_shape
from .plan.quantize import DEFAULT_PERCENTILE, ActivationRange, observed_range

#: Values per layer kept for the ``percentile`` method (a uniform sample of all it saw).
PERCENTILE_SAMPLE = 1 << 22


def _is_composite(func) -> bool:
    return isinstance(func, relax.Function) and func.attrs is not None and "Composite" in func.attrs


def composite_calls(mod: tvm.IRModule) -> list[tuple[str, relax.Expr]]:
    """``(composite name, input expression)`` of every conv composite call in ``main``, in order."""
    calls = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar) and _is_composite(mod[value.op]):
                chain = read_conv_chain(mod[value.op])
                calls.append((value.op.name_hint, value.args[chain.input_param]))
    return calls


def with_layer_inputs(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[str]]:
    """``mod`` whose ``main`` returns ``(output, input of layer 0, input of layer 1, ...)``, and the
    layers' composite names in that order."""
    mod = relax.transform.ToNonDataflow()(mod)  # the inputs become visible outside their block
    main = mod["main"]
    calls = composite_calls(mod)
    outputs = relax.Tuple([main.body.body] + [expr for _, expr in calls])
    body = relax.BlockBuilder().normalize(relax.SeqExpr(main.body.blocks, outputs))
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    out["main"] = relax.Function(main.params, body, attrs=main.attrs)
    return relax.transform.Normalize()(out), [name for name, _ in calls]


def load_calibration(path: str, input_shape: tuple[int, ...]) -> np.ndarray:
    """Read ``--calibration X.npy``: a float32 N×C×H×W array of preprocessed inputs of the model's shape."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputSpecError(f"cannot read the calibration array {path}: {exc}; save one with numpy.save") from None
    return check_calibration(data, input_shape, path)


def check_calibration(data: np.ndarray, input_shape: tuple[int, ...], path: str = "(in memory)") -> np.ndarray:
    """``data`` as contiguous float32, or an error naming what is wrong with it as a calibration set."""
    data = np.asarray(data)
    if data.ndim != 4 or tuple(data.shape[1:]) != tuple(input_shape[1:]):
        raise InputSpecError(f"calibration array {path} has shape {tuple(data.shape)}; it must be N×"
                             f"{'×'.join(map(str, input_shape[1:]))} (preprocessed inputs of the compiled shape)")
    if data.shape[0] == 0:
        raise InputSpecError(f"calibration array {path} holds no images")
    if not np.issubdtype(data.dtype, np.floating):
        raise InputSpecError(f"calibration array {path} is {data.dtype}; it must be float32 preprocessed inputs")
    if not np.all(np.isfinite(data)):
        raise InputSpecError(f"calibration array {path} holds NaN or infinite values")
    return np.ascontiguousarray(data, dtype=np.float32)


def calibrate(mod: tvm.IRModule, data: np.ndarray, *, method: str = "minmax",
              percentile: float = DEFAULT_PERCENTILE, progress: Callable[[str], None] | None = None,
              seed: int = 0) -> dict[str, ActivationRange]:
    """The input range of every conv composite of ``mod`` over the calibration images ``data``."""
    from .targets.x86 import X86Target

    batch = int(static_shape(mod["main"].params[0])[0])
    probe, names = with_layer_inputs(mod)
    if not names:
        return {}
    target = X86Target()  # runs here, whatever the build is for
    executable = target.build(probe)
    dev = tvm.cpu(0)
    vm = relax.VirtualMachine(executable, dev)
    rng = np.random.default_rng(seed)
    low = {n: 0.0 for n in names}
    high = {n: 0.0 for n in names}
    samples: dict[str, list[np.ndarray]] = {n: [] for n in names}
    chunks = -(-len(data) // batch)
    per_chunk = max(1, PERCENTILE_SAMPLE // chunks)
    for k in range(chunks):
        images = data[k * batch:(k + 1) * batch]
        if len(images) < batch:  # pad the last batch with its own images (min and max unchanged)
            images = np.concatenate([images] * (-(-batch // len(images))))[:batch]
        outputs = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(images), dev))
        for name, tensor in zip(names, list(outputs)[1:]):
            values = tensor.numpy().ravel()
            low[name] = min(low[name], float(values.min()))
            high[name] = max(high[name], float(values.max()))
            if method == "percentile":
                take = min(per_chunk, values.size)
                samples[name].append(rng.choice(values, size=take, replace=False) if take < values.size else values)
        if progress and (k + 1) % max(1, chunks // 4) == 0:
            progress(f"calibration: {min((k + 1) * batch, len(data))}/{len(data)} images")
    ranges = {}
    for name in names:
        if method == "percentile":
            clipped = observed_range(samples[name], "percentile", percentile)
            ranges[name] = ActivationRange(max(clipped.low, low[name]), min(clipped.high, high[name]))
        else:
            ranges[name] = ActivationRange(low[name], high[name])
    return ranges


def annotate_input_ranges(mod: tvm.IRModule, ranges: dict[str, ActivationRange]) -> tvm.IRModule:
    """``mod`` with each composite named in ``ranges`` carrying its calibrated input range."""
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if gv.name_hint in ranges and _is_composite(func):
            out[gv] = with_input_range(func, ranges[gv.name_hint])
    return out
