"""Build CUDA code on a machine without an NVIDIA driver.

TVM keeps its CUDA module (the object that holds compiled GPU binaries in a library) in
``libtvm_runtime_cuda.so``, which links ``libcuda.so.1``, the driver. Without a driver that library
does not load and a CUDA build silently degrades to a module holding CUDA *source*, compiled at
load time on the deploy machine. To embed real cubins instead, the build process loads a tiny
stand-in ``libcuda.so.1`` that only defines the nine driver entry points TVM links (each answers
``CUDA_ERROR_NO_DEVICE``), then loads TVM's CUDA runtime. The stand-in is compiled once with the C
compiler (which ``export_library`` needs anyway) into a cache folder; it is used only while
compiling and never ships: the deploy machine uses its real driver.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import subprocess

from ...errors import TargetError

logger = logging.getLogger(__name__)

_STANDIN_SOURCE = r"""
typedef int CUresult;  /* every call fails as if no GPU were present */
enum { NO_DEVICE = 100 };
CUresult cuDeviceGetName(char *name, int len, int dev) { return NO_DEVICE; }
CUresult cuFuncSetAttribute(void *f, int attr, int value) { return NO_DEVICE; }
CUresult cuGetErrorName(CUresult e, const char **s) { *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
CUresult cuGetErrorString(CUresult e, const char **s) { *s = "no CUDA driver (penni-deploy build-time stand-in)"; return 0; }
CUresult cuLaunchKernelEx(const void *config, void *f, void **params, void **extra) { return NO_DEVICE; }
CUresult cuModuleGetFunction(void **f, void *m, const char *name) { return NO_DEVICE; }
CUresult cuModuleLoadData(void **m, const void *image) { return NO_DEVICE; }
CUresult cuModuleUnload(void *m) { return NO_DEVICE; }
CUresult cuTensorMapEncodeTiled(void *t, int a, unsigned b, void *c, const void *d, const void *e,
                                const void *f, const void *g, int h, int i, int j, int k) { return NO_DEVICE; }
"""


def _cuda_runtime_loaded() -> bool:
    with open("/proc/self/maps") as maps:
        return "libtvm_runtime_cuda" in maps.read()


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "penni-deploy", "libcuda-standin")


def _build_standin() -> str:
    folder = _cache_dir()
    path = os.path.join(folder, "libcuda.so.1")
    if os.path.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    source = os.path.join(folder, "standin.c")
    with open(source, "w") as f:
        f.write(_STANDIN_SOURCE)
    tmp = path + f".{os.getpid()}.tmp"
    try:
        subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", tmp, source],
                       check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise TargetError(f"cannot build the CUDA driver stand-in with the C compiler 'cc': {detail}") from None
    os.replace(tmp, path)
    return path


def ensure_cuda_codegen_runtime() -> str:
    """Make TVM's CUDA runtime library available in this process; returns ``driver`` or ``stand-in``."""
    import tvm

    if _cuda_runtime_loaded():
        return "driver"
    if ctypes.util.find_library("cuda") is not None:
        mode = "driver"
    else:
        ctypes.CDLL(_build_standin(), mode=ctypes.RTLD_GLOBAL)
        mode = "stand-in"
    library = os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so")
    try:
        ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise TargetError(f"cannot load TVM's CUDA runtime ({library}): {exc}; is apache-tvm built with CUDA?") from None
    logger.info("loaded TVM's CUDA runtime with the %s libcuda", mode)
    return mode
