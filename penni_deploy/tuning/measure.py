"""Build one layer with one kernel config and time it, here or on a remote device over TVM RPC.

The layer is built exactly as inside the whole model (same generator, same lowering passes, same
constants: the real coefficient arrays), as a tiny Relax program ``main(x[, residual])``. Timing
uses TVM's ``time_evaluator`` (median of repeats, each long enough to beat timer noise).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..kernels.config import KernelConfig
from ..plan.layers import ConvChain, PenniLayerPlan
from ..passes.lower_conv_composites import (
    conv_chain_as_ops,
    emit_dense_conv,
    emit_penni_layer,
)


def layer_module(chain: ConvChain, kernels, config: KernelConfig | None = None,
                 plan: PenniLayerPlan | None = None, *, as_tvm_ops: bool = False) -> tvm.IRModule:
    """A Relax module running just this conv chain: a PENNI layer with ``config``, or a dense
    conv (our kernel, or ``as_tvm_ops``: plain Relax conv2d ops for MetaSchedule)."""
    g = chain.geometry
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((g.batch, g.in_channels, g.height, g.width), "float32"))
    params = [x]
    residual = None
    if chain.epilogue.residual:
        residual = relax.Var("residual", relax.TensorType(chain.out_shape, "float32"))
        params.append(residual)
    with bb.function("main", params):
        with bb.dataflow():
            if as_tvm_ops:
                out = bb.emit(conv_chain_as_ops(chain, x, residual))
            else:
                flat = (chain.out_shape[0], chain.out_shape[1], chain.pixels)
                epilogue_args = [relax.const(chain.bias)] if chain.epilogue.bias else []
                if residual is not None:
                    epilogue_args.append(bb.emit(relax.op.reshape(residual, flat)))
                if plan is not None:
                    out = emit_penni_layer(bb, kernels, plan, config, x, epilogue_args)
                else:
                    out = emit_dense_conv(bb, kernels, chain, x, epilogue_args)
                out = bb.emit(relax.op.reshape(out, chain.out_shape))
            result = bb.emit_output(out)
        bb.emit_func_output(result)
    return bb.get()


def layer_inputs(chain: ConvChain, seed: int = 0) -> list[np.ndarray]:
    g = chain.geometry
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((g.batch, g.in_channels, g.height, g.width)).astype(np.float32)]
    if chain.epilogue.residual:
        arrays.append(rng.standard_normal(chain.out_shape).astype(np.float32))
    return arrays


@dataclass(frozen=True)
class TimingOptions:
    repeat: int = 5
    min_repeat_ms: int = 40


class LocalRunner:
    """Times builds on this machine."""

    name = "local"

    def __init__(self, timing: TimingOptions = TimingOptions()):
        self.timing = timing

    def run(self, executable: relax.Executable, inputs: list[np.ndarray], device: str = "cpu") -> float:
        dev = tvm.device(device, 0)
        vm = relax.VirtualMachine(executable, dev)
        args = [tvm.runtime.tensor(a, dev) for a in inputs]
        timer = vm.time_evaluator("main", dev, repeat=self.timing.repeat, min_repeat_ms=self.timing.min_repeat_ms)
        return float(np.median(timer(*args).results) * 1e3)


class RpcRunner:
    """Times builds on a device leased from a TVM RPC tracker (``python -m tvm.exec.rpc_tracker`` and
    ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`` on each device)."""

    name = "rpc"

    def __init__(self, tracker: str, key: str, timing: TimingOptions = TimingOptions(), session_timeout: int = 600):
        from ..errors import PenniError

        host, _, port = tracker.rpartition(":")
        if not host or not port.isdigit():
            raise PenniError(f"--rpc-tracker {tracker!r} must be HOST:PORT, e.g. 127.0.0.1:9190")
        self.host, self.port, self.key = host, int(port), key
        self.timing = timing
        self.session_timeout = session_timeout
        self._session = None
        self._uploads = 0

    def _remote(self):
        from tvm import rpc

        from ..errors import PenniError

        if self._session is None:
            try:
                tracker = rpc.connect_tracker(self.host, self.port)
                self._session = tracker.request(self.key, priority=1, session_timeout=self.session_timeout)
            except (RuntimeError, OSError, tvm.error.TVMError) as exc:
                raise PenniError(f"cannot get a device with key {self.key!r} from the RPC tracker "
                                 f"{self.host}:{self.port}: {exc}; check the tracker is running and a server "
                                 "registered with that key (python -m tvm.exec.rpc_server --tracker ... --key ...)") \
                    from None
        return self._session

    def run(self, executable: relax.Executable, inputs: list[np.ndarray], device: str = "cpu") -> float:
        remote = self._remote()
        # A fresh name per build: the server keeps earlier libraries loaded, and overwriting a
        # loaded shared object crashes it.
        self._uploads += 1
        name = f"penni-layer-{os.getpid()}-{self._uploads}.so"
        with tempfile.TemporaryDirectory(prefix="penni-rpc-") as tmp:
            path = os.path.join(tmp, name)
            executable.export_library(path)
            remote.upload(path)
        module = remote.load_module(name)
        dev = remote.device(device, 0)
        vm = relax.VirtualMachine(module, dev)
        args = [tvm.runtime.tensor(a, dev) for a in inputs]
        timer = vm.time_evaluator("main", dev, repeat=self.timing.repeat, min_repeat_ms=self.timing.min_repeat_ms)
        return float(np.median(timer(*args).results) * 1e3)
