"""Build one layer with one kernel config and time it, here or on a remote device over TVM RPC.

The layer is built exactly as inside the whole model (same generator, same lowering passes, same
constants: the real coefficient arrays), as a tiny Relax program ``main(x[, residual])``. Timing
uses TVM's ``time_evaluator`` (median of repeats, each long enough to beat timer noise).
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..errors import PenniError
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


class RpcError(PenniError):
    """The RPC tracker or device cannot be used: unreachable, no server with the key, none free, or gone."""


class RpcRunner:
    """Times builds on a device leased from a TVM RPC tracker (``python -m tvm.exec.rpc_tracker`` and
    ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`` on each device).

    TVM's client waits without limit in two places, which this class bounds: connecting to a tracker
    that refuses connections (retried for 60 s), and a request for a key no free server has (queued
    until one registers, possibly forever). A server that goes away mid-run is reported, not
    recorded as one failed candidate after another.

    Parameters
    ----------
    tracker : str
        ``HOST:PORT`` of the tracker.
    key : str
        The key the device's server registered with.
    timing : TimingOptions
        Repeats per measurement.
    session_timeout : int
        Seconds the server keeps one session (it ends it after that; a new one is then requested).
    request_timeout : float
        Seconds to wait for a free server with ``key``.
    connect_timeout : float
        Seconds to wait for the tracker to answer.
    """

    name = "rpc"

    def __init__(self, tracker: str, key: str, timing: TimingOptions = TimingOptions(), session_timeout: int = 600,
                 request_timeout: float = 60.0, connect_timeout: float = 10.0):
        host, _, port = tracker.rpartition(":")
        if not host or not port.isdigit():
            raise PenniError(f"--rpc-tracker {tracker!r} must be HOST:PORT, e.g. 127.0.0.1:9190")
        self.host, self.port, self.key = host, int(port), key
        self.timing = timing
        self.session_timeout = session_timeout
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self._session = None
        self._uploads = 0

    @property
    def _where(self) -> str:
        return f"the RPC tracker {self.host}:{self.port}"

    def _connect_tracker(self):
        """A tracker session, after checking with a bounded wait that a tracker answers there."""
        from tvm import rpc
        from tvm.rpc import base

        try:
            with socket.create_connection((self.host, self.port), timeout=self.connect_timeout) as probe:
                probe.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
                magic = struct.unpack("<i", base.recvall(probe, 4))[0]
        except (OSError, RuntimeError) as exc:
            raise RpcError(f"cannot reach {self._where} ({exc}); start it (python -m tvm.exec.rpc_tracker --host "
                           f"{self.host} --port {self.port}) or fix --rpc-tracker") from None
        if magic != base.RPC_TRACKER_MAGIC:
            raise RpcError(f"{self.host}:{self.port} answers, but is not a TVM RPC tracker; fix --rpc-tracker")
        tracker = rpc.connect_tracker(self.host, self.port)
        tracker._sock.settimeout(self.connect_timeout)  # TVM's tracker socket has no timeout of its own
        return tracker

    def registered_keys(self, tracker) -> set[str]:
        """Keys of the servers registered with the tracker (busy or free)."""
        try:
            info = tracker.summary()
        except (OSError, RuntimeError) as exc:
            raise RpcError(f"{self._where} did not answer a summary request ({exc})") from None
        return {item["key"].split(":", 1)[-1] for item in info.get("server_info", [])}

    def check(self) -> None:
        """Fail now, with the fix, when the tracker is unreachable or has no server with the key (before
        any tuning, and before MetaSchedule's RPC runner, which would wait for one forever)."""
        tracker = self._connect_tracker()
        try:
            self._check_key(tracker)
        finally:
            tracker.close()

    def _check_key(self, tracker) -> None:
        keys = self.registered_keys(tracker)
        if self.key not in keys:
            raise RpcError(f"no RPC server is registered with key {self.key!r} at {self._where} (registered: "
                           f"{', '.join(sorted(keys)) or 'none'}); start one (python -m tvm.exec.rpc_server "
                           f"--tracker {self.host}:{self.port} --key {self.key}) or fix --rpc-key")

    def _request(self):
        tracker = self._connect_tracker()
        try:
            self._check_key(tracker)
            # the tracker queues a request until a server with the key is free: bound that wait
            tracker._sock.settimeout(self.request_timeout)
            try:
                return tracker.request(self.key, priority=1, session_timeout=self.session_timeout, max_retry=1)
            except Exception as exc:  # noqa: BLE001 - TVM raises RuntimeError, socket errors, FFI errors
                raise RpcError(f"no server with key {self.key!r} became free within {self.request_timeout:g} s at "
                               f"{self._where} ({_first_line(exc)}); wait for the running jobs or add a server") \
                    from None
        finally:
            tracker.close()

    def _remote(self):
        if self._session is None:
            self._session = self._request()
        return self._session

    def _alive(self) -> bool:
        """Whether the server still answers on the current session."""
        try:
            self._session.listdir(".")  # one round trip (``device.exist`` answers from a cache)
            return True
        except Exception:  # noqa: BLE001 - any failure here means the session is gone
            return False

    def run(self, executable: relax.Executable, inputs: list[np.ndarray], device: str = "cpu") -> float:
        try:
            return self._run_remote(executable, inputs, device)
        except Exception as exc:
            if self._session is None or self._alive():
                raise  # the candidate failed, not the server: the tuner records it and goes on
            self._session = None
            lost = _first_line(exc)
        # a session the server ended (session_timeout) or a restarted server: one new lease, one retry
        try:
            return self._run_remote(executable, inputs, device)
        except RpcError as exc:
            raise RpcError(f"the RPC server with key {self.key!r} went away during measurement ({lost}), and "
                           f"no other is available: {exc}. The measurements taken so far are saved; rerun the "
                           "same command to resume") from None
        except Exception as exc:
            if self._session is not None and self._alive():
                raise
            raise RpcError(f"the RPC server with key {self.key!r} went away during measurement ({lost}; again on a "
                           f"new session: {_first_line(exc)}); the measurements taken so far are saved, restart "
                           "the server and rerun the same command to resume") from None

    def _run_remote(self, executable: relax.Executable, inputs: list[np.ndarray], device: str) -> float:
        remote = self._remote()
        # A fresh name per build: the server keeps earlier libraries loaded, and overwriting a
        # loaded shared object crashes it.
        self._uploads += 1
        name = f"penni-layer-{os.getpid()}-{self._uploads}.so"
        with tempfile.TemporaryDirectory(prefix="penni-rpc-") as tmp:
            path = os.path.join(tmp, name)
            if device == "cpu":  # bf16 kernels call a C micro-kernel the library must carry
                from ..kernels.cpu.native import SOURCES

                executable.export_library(path, addons=list(SOURCES), options=["-O2"])
            else:
                executable.export_library(path)
            remote.upload(path)
        module = remote.load_module(name)
        dev = remote.device(device, 0)
        vm = relax.VirtualMachine(module, dev)
        args = [tvm.runtime.tensor(a, dev) for a in inputs]
        timer = vm.time_evaluator("main", dev, repeat=self.timing.repeat, min_repeat_ms=self.timing.min_repeat_ms)
        return float(np.median(timer(*args).results) * 1e3)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
