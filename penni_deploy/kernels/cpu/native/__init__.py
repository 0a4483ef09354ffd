"""C micro-kernels the TIR kernels call where TVM cannot emit the instruction (``vdpbf16ps``) or the
data layout (the int8 conv's channel quads for ``vpdpbusd``).

Two ways they reach the code that calls them:

- an artifact links the C sources into its own library (``SOURCES``, passed to ``export_library``
  as addons beside the thread pool), so loading an artifact needs no compiler;
- an in-memory build (tests, tuning's local measurements) resolves the symbols from the process:
  ``load_into_process`` compiles the sources once into a cache folder with the system C compiler
  and loads the result with ``RTLD_GLOBAL``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading

from ....errors import TargetError

_HERE = os.path.dirname(__file__)
#: Linked into the library of every artifact whose kernels call them. A tuple: pass ``list(SOURCES)``
#: to ``export_library``, which appends its own object files to the addons list it is given.
SOURCES = (os.path.join(_HERE, "bf16_tile.c"), os.path.join(_HERE, "int8_conv.c"))
#: The symbol the bf16 GEMM kernels call (see bf16_tile.c).
BF16_TILE = "penni_bf16_tile"
#: The symbol the int8 conv kernels call (see int8_conv.c).
Q8_CONV_TILE = "penni_q8_conv_tile"
#: Options for the sources; they carry their own ``target`` attributes, so no -m flags are needed
#: and a library for any x86-64 CPU can hold them (they run only where the kernel calls them).
COMPILE_OPTIONS = ["-O2"]

_lock = threading.Lock()
_loaded: ctypes.CDLL | None = None


def _cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "penni-deploy", "native")


def _digest() -> str:
    h = hashlib.sha256()
    for path in SOURCES:
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(" ".join(COMPILE_OPTIONS).encode())
    return h.hexdigest()[:16]


def load_into_process() -> ctypes.CDLL:
    """Compile (once, cached by the sources' hash) and load the micro-kernels with ``RTLD_GLOBAL``."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        folder = _cache_dir()
        path = os.path.join(folder, f"penni-native-{_digest()}.so")
        if not os.path.exists(path):
            compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            if compiler is None:
                raise TargetError("building the bf16 and int8 micro-kernels need a C compiler (cc or gcc) on PATH, "
                                  "or CC set; install gcc")
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so")
            os.close(fd)
            try:
                subprocess.run([compiler, *COMPILE_OPTIONS, "-fPIC", "-shared", *SOURCES, "-o", tmp],
                               check=True, capture_output=True, text=True)
                os.replace(tmp, path)  # atomic: a concurrent process sees the old file or the whole new one
            except subprocess.CalledProcessError as exc:
                raise TargetError(f"compiling {', '.join(SOURCES)} failed:\n{exc.stderr.strip()}") from None
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        _loaded = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        return _loaded
