"""The CPU kernels' per-row and per-tile arrays (accumulators, held taps) stay out of TVM's workspace
pool: a ``TVMBackendAllocWorkspace`` call inside a row loop was a free-list walk per CSR row and kept
the accumulators in memory (``tir_helpers.RegisterRows``). Checked on the generated LLVM IR, where
each call site is one ``call`` through the ``__TVMBackendAllocWorkspace`` pointer."""

import re

import numpy as np
import pytest
import scipy.sparse
import tvm

from penni_deploy.kernels.cpu import basis_narrow_kernel, csr_recombine_kernel, gemm_conv_kernel
from penni_deploy.kernels.cpu.csr_recombine import ell_recombine_kernel, unrolled_recombine_kernel
from penni_deploy.kernels.cpu.fused_layer import fused_penni_kernel
from penni_deploy.plan import Epilogue
from penni_deploy.plan.geometry import ConvGeometry


def workspace_allocations(func, target) -> list[int]:
    """Bytes of each TVMBackendAllocWorkspace call site in ``func`` compiled for ``target``."""
    ir = tvm.compile(tvm.IRModule({"main": func}), target=target).mod.inspect_source("ll")
    sizes = []
    for name in set(re.findall(r"(%\w+) = load ptr, ptr @__TVMBackendAllocWorkspace", ir)):
        sizes += [int(n) for n in re.findall(rf"call \w+ {re.escape(name)}\(i32 \d+, i32 %\w+, i64 (\d+),", ir)]
    return sizes


@pytest.mark.parametrize("pixels", [4, 16, 64, 1024])
def test_csr_rows_accumulate_without_workspace_calls(pixels, cpu_target):
    func = csr_recombine_kernel(1, 256, pixels, 64, 500, Epilogue(bias=True, relu=True), offsets=True)
    assert workspace_allocations(func, cpu_target.tvm_target) == []


def test_gemm_tile_accumulates_without_workspace_calls(cpu_target):
    # an 8×48 tile is 1.5 KiB: as one buffer it would be over TVM's 1 KiB stack limit; the one
    # allocation left is the task's activation panel (64 × 48 floats)
    func = gemm_conv_kernel(ConvGeometry(1, 64, 14, 14, 1, 1), 128, Epilogue(bias=True))
    assert workspace_allocations(func, cpu_target.tvm_target) == [64 * 48 * 4]


@pytest.mark.parametrize("size", [2, 4, 8])
def test_narrow_basis_conv_holds_taps_without_workspace_calls(size, cpu_target):
    geom = ConvGeometry(1, 32, size, size, 3, 3, (1, 1), (1, 1, 1, 1))
    func = basis_narrow_kernel(geom, 32 * 5, 32)
    assert workspace_allocations(func, cpu_target.tvm_target) == []


def widest_float_vector(func, target) -> int:
    """Lanes of the widest ``<N x float>`` value in ``func``'s LLVM IR."""
    ir = tvm.compile(tvm.IRModule({"main": func}), target=target).mod.inspect_source("ll")
    return max(int(n) for n in re.findall(r"<(\d+) x float>", ir))


@pytest.mark.parametrize("pixels", [49, 33, 98], ids=lambda p: f"P{p}")
def test_odd_pixel_blocks_stay_in_whole_vectors(pixels, cpu_target):
    # a 49-wide accumulator as one <49 x float> was split into single lanes on every nonzero (3× slower
    # on ResNet50's 7×7 layers); vector_pieces keeps each piece one register wide
    lanes = cpu_target.kernels.lanes
    epilogue = Epilogue(bias=True, relu=True)
    csr = scipy.sparse.random(32, 160, density=0.05, format="csr", random_state=0, dtype=np.float32)
    kernels = {
        "csr": csr_recombine_kernel(1, 160, pixels, 32, csr.nnz, epilogue, lanes=lanes, offsets=True),
        "ell": ell_recombine_kernel(1, 160, pixels, 32, 9, epilogue, lanes=lanes),
        "unrolled": unrolled_recombine_kernel(1, 160, pixels, csr, epilogue, lanes=lanes),
    }
    if pixels == 49:  # the fused layer's 7-row tile of a 7×7 map
        geom = ConvGeometry(1, 32, 7, 7, 3, 3, (1, 1), (1, 1, 1, 1))
        kernels["fused"] = fused_penni_kernel(geom, 160, 32, 32, csr.nnz, epilogue, lanes=lanes, tile_rows=8)
    for name, func in kernels.items():
        assert widest_float_vector(func, cpu_target.tvm_target) <= lanes, name
