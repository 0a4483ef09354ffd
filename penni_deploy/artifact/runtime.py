"""Load and run an artifact with the TVM runtime alone (no torch, no compiler).

``load(path)`` checks the file before trusting it: a readable zip, a manifest of a known format
version, a library whose sha256 matches the manifest, the same TVM version, and a device that can
run the target (e.g. an AVX-512 build on a CPU without AVX-512 is refused with the fix).
With a trusted key (``trusted_key=`` or ``$PENNI_TRUSTED_KEY``) it also requires a valid signature
(``signing.py``), checked on the bytes it then loads, before any native code is loaded.
``verify_artifact(path)`` makes the same checks without loading the library's native code, and
reports (instead of refusing) what would stop it from running on this machine.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ArtifactError, InputSpecError
from ..machine import cpu_flags
from . import threads as thread_count
from .manifest import LIBRARY_NAME, MANIFEST_NAME, Manifest


def read_manifest(path: str) -> Manifest:
    """The manifest of artifact ``path``, without loading the library."""
    manifest, _ = _read(path, with_library=False)
    return manifest


@dataclass(frozen=True)
class ArtifactReport:
    """What ``verify_artifact`` found in a file that passed every integrity check.

    Parameters
    ----------
    manifest : Manifest
        The manifest (its format version and fields checked).
    library_bytes : int
        Size of the library, read in full: its CRC and sha256 match.
    problems : list of str
        Why ``load`` would refuse it on this machine (another TVM version, no such device, a CPU
        without the ISA); empty when it would load.
    """

    manifest: Manifest
    library_bytes: int
    problems: list[str]


def verify_artifact(path: str | os.PathLike[str], device: str | None = None) -> ArtifactReport:
    """Check ``path`` as ``load`` does, without loading its native code; raises ``ArtifactError``
    for a damaged or malformed file, and reports what this machine lacks to run it."""
    path = os.fspath(path)
    manifest, library = _read(path, with_library=True)
    return ArtifactReport(manifest, len(library), _runtime_problems(manifest, device))


def _read(path: str, with_library: bool, trusted_key=None) -> tuple[Manifest, bytes | None]:
    """Manifest and library of ``path``, checked; with a ``trusted_key`` (a PEM public key path;
    ``$PENNI_TRUSTED_KEY`` when None) also its signature, over the very bytes returned."""
    from .signing import SIGNATURE_NAME, resolve_trusted_key, verify_signature

    trusted_key = resolve_trusted_key(trusted_key) if with_library else None
    if not os.path.isfile(path):
        raise ArtifactError(f"no such artifact: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if MANIFEST_NAME not in names:
                raise ArtifactError(f"{path} has no {MANIFEST_NAME} (not a penni-deploy artifact, or damaged); "
                                    "recompile it")
            manifest_bytes = archive.read(MANIFEST_NAME)
            manifest = Manifest.from_json(manifest_bytes.decode("utf-8"))
            library_name = manifest.library["file"]
            library = None
            if with_library:
                if library_name not in names:
                    raise ArtifactError(f"{path} lacks its library {library_name!r}, which its manifest names "
                                        "(damaged or edited); recompile it")
                library = archive.read(library_name)
            signature = archive.read(SIGNATURE_NAME) if trusted_key and SIGNATURE_NAME in names else None
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not a readable penni-deploy artifact (corrupt or truncated: {exc}); "
                            "recompile it") from None
    if library is not None and hashlib.sha256(library).hexdigest() != manifest.library.get("sha256"):
        raise ArtifactError(f"{path}: the library does not match the sha256 in its manifest (tampered or damaged); "
                            "recompile it")
    if trusted_key:
        verify_signature(path, names, manifest_bytes, library_name, library, signature, trusted_key)
    return manifest, library


def _check_runtime(manifest: Manifest, device: str | None) -> str:
    problems = _runtime_problems(manifest, device)
    if problems:
        raise ArtifactError(problems[0])
    return manifest.target.get("device", "cpu")


def _runtime_problems(manifest: Manifest, device: str | None) -> list[str]:
    """Why this machine cannot run the artifact (each with its fix); empty when it can."""
    import tvm

    problems = []
    built, running = manifest.tvm_version, tvm.__version__
    if built != running:
        problems.append(f"artifact was built with TVM {built} but this runtime is TVM {running}; "
                        f"recompile it with this TVM or install apache-tvm=={built}")
    want = manifest.target.get("device", "cpu")
    if device is not None and device != want:
        problems.append(f"artifact was compiled for target {manifest.target.get('name')} (device {want}), "
                        f"not for device {device}; recompile with --target matching the device")
    elif want == "cuda":
        try:
            _check_gpu(manifest)
        except ArtifactError as exc:
            problems.append(str(exc))
    elif want == "cpu":
        missing = _missing_cpu_features(manifest.target)
        if missing:
            problems.append(f"artifact was built for CPU {manifest.target.get('mcpu')} "
                            f"({manifest.target.get('isa')}, {manifest.target.get('precision', 'fp32')}) but this "
                            f"CPU lacks {', '.join(missing)}; recompile for this machine (penni-deploy compile "
                            "without --mcpu" + (", with --precision fp32" if "avx512_bf16" in missing else "") + ")")
    return problems


def _load_cuda_runtime() -> None:
    """Load TVM's CUDA runtime sidecar when ``import tvm`` did not.

    The full wheel loads ``libtvm_runtime_cuda.so`` while registering its CUDA backend, which needs
    the compiler library; a runtime-only install (``libtvm_runtime.so`` alone, the deployment case)
    never registers it, and then no CUDA device exists. Loading the sidecar registers the device.
    """
    import ctypes

    from tvm.base import _LOADED_LIBS

    if "tvm_runtime_cuda" in _LOADED_LIBS or "tvm_runtime" not in _LOADED_LIBS:
        return
    sidecar = os.path.join(os.path.dirname(os.path.realpath(_LOADED_LIBS["tvm_runtime"]._name)),
                           "libtvm_runtime_cuda.so")
    if os.path.exists(sidecar):
        try:
            _LOADED_LIBS["tvm_runtime_cuda"] = ctypes.CDLL(sidecar, mode=ctypes.RTLD_LOCAL)
        except OSError:  # no libcuda.so.1: reported below as "no CUDA device"
            pass


def _check_gpu(manifest: Manifest) -> None:
    import tvm

    code = manifest.library.get("gpu_code", [])
    device = tvm.cuda(0)
    if not device.exist:
        _load_cuda_runtime()
        device = tvm.cuda(0)
    if not device.exist:
        raise ArtifactError(f"this artifact runs on NVIDIA GPUs (code for {', '.join(code)}), but no CUDA device is "
                            "available here (no GPU, or no NVIDIA driver); run it on a GPU machine or recompile "
                            "with --target x86")
    capability = int(str(device.compute_version).replace(".", ""))
    if not gpu_code_runs_on(code, capability):
        raise ArtifactError(f"this GPU has compute capability {capability / 10:.1f}, but the artifact holds code for "
                            f"{', '.join(code)} only; recompile with --arch sm_{capability}")


def gpu_code_runs_on(code: list[str], capability: int) -> bool:
    """Whether embedded ``code`` (``sm_80``, ``compute_90``) can run on a GPU of ``capability`` (e.g. 86):
    SASS of the same major version and no newer minor, or PTX no newer than it (the driver compiles it)."""
    for name in code:
        kind, number = name.split("_")
        arch = int(number.rstrip("af"))
        if kind == "sm" and arch // 10 == capability // 10 and arch <= capability:
            return True
        if kind == "compute" and arch <= capability:
            return True
    return False


def _missing_cpu_features(target: dict[str, Any], flags: list[str] | None = None) -> list[str]:
    """CPU features the artifact's ISA needs that this CPU (or ``flags``) lacks."""
    needed = {"avx512": ["avx512f"], "avx2": ["avx2", "fma"]}.get(target.get("isa", ""), [])
    needed = needed + {"bf16": ["avx512_bf16"], "int8": ["avx512bw", "avx512vl", "avx512_vnni"]}.get(target.get("precision"), [])
    if flags is None:
        flags = cpu_flags()
    if flags is None:
        return []
    return [feature for feature in needed if feature not in flags]


class CompiledModel:
    """A loaded artifact; call it on an array of the compiled input shape.

    Parameters
    ----------
    path : str
        The artifact file.
    device : str, optional
        ``cpu`` or ``cuda``; defaults to the artifact's own device.
    threads : int, optional
        CPU threads per run; defaults to ``TVM_NUM_THREADS`` if set, else every core this process may
        run on (affinity mask and cgroup quota; see ``artifact.threads``).
    trusted_key : str or os.PathLike, optional
        An EC P-256 public key (PEM): refuse the artifact unless it is signed with its private half.
        Default: ``$PENNI_TRUSTED_KEY`` when set, else no signature is required.
    """

    def __init__(self, path: str, device: str | None = None, threads: int | None = None, trusted_key=None):
        self.threads = thread_count.resolve_threads(threads)
        thread_count.prepare_pool(self.threads)  # before import tvm can start a pool
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self.path = path
        self.manifest, library = _read(path, with_library=True, trusted_key=trusted_key)
        device_kind = _check_runtime(self.manifest, device)
        with tempfile.TemporaryDirectory(prefix="penni-load-") as tmp:
            lib_path = os.path.join(tmp, LIBRARY_NAME)
            with open(lib_path, "wb") as f:
                f.write(library)
            del library  # the file holds it now; a weight-heavy model should not sit in memory twice
            try:
                lib = tvm.runtime.load_module(lib_path)
            except Exception as exc:
                raise ArtifactError(f"cannot load the library in {path}: {exc}") from None
            # Our pool when the library has one; otherwise TVM's, configured on each call.
            self._pool = thread_count.install_pool(lib_path, self.threads) if device_kind == "cpu" else None
            release_embedded_executable(lib_path)
        self.device = tvm.device(device_kind, 0)
        if not self.device.exist:
            raise ArtifactError(f"no {device_kind} device is available to run {path}")
        self._vm = VirtualMachine(lib, self.device)
        # A Relax VM keeps its call frames in itself: two threads calling one VM corrupt each other's
        # registers. Each further calling thread gets its own VM over the same loaded library.
        self._lib, self._make_vm = lib, VirtualMachine
        self._vms = threading.local()
        self._vms.vm = self._vm
        self._tvm = tvm
        spec = self.manifest.inputs[0]
        self.input_shape, self.input_dtype = tuple(spec.shape), spec.dtype

    def __call__(self, x: Any) -> np.ndarray:
        """Run on ``x`` (NumPy array or torch tensor of the compiled shape and dtype)."""
        array = _as_numpy(x)
        if array.dtype != np.dtype(self.input_dtype):
            raise InputSpecError(f"input dtype is {array.dtype} but the model was compiled for {self.input_dtype}; "
                                 f"convert it, e.g. x.astype(np.{self.input_dtype})")
        if tuple(array.shape) != self.input_shape:
            raise InputSpecError(f"input shape is {tuple(array.shape)} but the model was compiled for "
                                 f"{self.input_shape}; recompile with --input-shape "
                                 f"{','.join(map(str, array.shape))} or reshape the input")
        self._use_threads()
        main, staging, staged = self._thread_entry()
        if staging is None:  # a GPU: the input has to be copied to it anyway
            return main(self._tvm.runtime.tensor(np.ascontiguousarray(array), self.device)).numpy()
        # On the CPU, copy into this thread's aligned input tensor and hand the output back without a
        # copy: a fresh TVM tensor and .numpy() took ~40 µs a call, a fifth of a CIFAR ResNet20's.
        np.copyto(staged, array)
        out = np.from_dlpack(main(staging))
        if np.may_share_memory(out, staged):  # an output that is the input, reused by the next call
            out = out.copy()
        return out

    @property
    def thread_pool(self) -> str:
        """``penni`` when the kernels run on the library's own pool, else ``tvm``."""
        return "penni" if self._pool is not None else "tvm"

    @property
    def running_threads(self) -> int:
        """Threads the pool that runs the kernels uses now (what ``threads`` reached)."""
        if self._pool is not None:
            return int(self._pool.penni_pool_threads())
        self._use_threads()
        return thread_count.runtime_threads()

    def _thread_vm(self):
        vm = getattr(self._vms, "vm", None)
        if vm is None:
            vm = self._vms.vm = self._make_vm(self._lib, self.device)
        return vm

    def _thread_entry(self):
        """This thread's ``main``, and on the CPU its input tensor (64-byte aligned, as TVM's kernels
        require) with a NumPy view of it; made once per thread."""
        entry = getattr(self._vms, "entry", None)
        if entry is None:
            main = self._thread_vm()["main"]
            staging = staged = None
            if self.device.dlpack_device_type() == 1:  # kDLCPU
                staging = self._tvm.runtime.empty(self.input_shape, self.input_dtype, self.device)
                staged = np.from_dlpack(staging)
            entry = self._vms.entry = (main, staging, staged)
        return entry

    def _use_threads(self) -> None:
        if self._pool is None:
            thread_count.use_threads(self.threads)

    def benchmark_callable(self):
        """A zero-argument function running one inference on a fixed device-resident input."""
        x = self._tvm.runtime.tensor(np.zeros(self.input_shape, self.input_dtype), self.device)
        main = self._thread_vm()["main"]

        def run():
            self._use_threads()
            main(x)
            self.device.sync()

        return run


#: The symbol under which TVM embeds the serialized executable (weights included) in a library.
_EMBEDDED_BLOB = "__tvm_ffi__library_bin"


def release_embedded_executable(lib_path: str) -> bool:
    """Drop the resident pages of ``lib_path``'s embedded executable once TVM has parsed it.

    Loading copies the blob (a uint64 size, then the bytes) into TVM's own tensors, but its pages
    stay resident while the library is mapped: AlexNet's 232 MB of weights took twice that. The
    blob is read-only data of a file mapping, so ``MADV_DONTNEED`` only forgets the pages: should
    anything read them again, they fault back in from the file. Returns whether pages were dropped.
    """
    import ctypes
    import mmap

    try:
        handle = ctypes.CDLL(lib_path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # TVM's handle, not a new load
        start = ctypes.addressof(ctypes.c_char.in_dll(handle, _EMBEDDED_BLOB))
        size = 8 + ctypes.c_uint64.from_address(start).value
        libc = ctypes.CDLL(None, use_errno=True)
    except (OSError, ValueError, AttributeError):
        return False  # not a TVM library layout we know: keep the pages, lose nothing but memory
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, (start + size) // page * page  # whole pages inside the blob
    if last <= first:
        return False
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released = libc.madvise(first, last - first, mmap.MADV_DONTNEED) == 0
    # The library's bytes, read from the zip and freed, may sit in the C heap (glibc raises its mmap
    # threshold after large frees); give them back too.
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    return released


def _as_numpy(x: Any) -> np.ndarray:
    if type(x).__module__.split(".")[0] == "torch":  # a torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise InputSpecError(f"input must be a NumPy array or torch tensor, not {type(x).__name__}")
    return x


def load(path: str | os.PathLike[str], device: str | None = None, threads: int | None = None,
         trusted_key=None) -> CompiledModel:
    """Load a ``.penni`` artifact; the result is callable on NumPy arrays and torch tensors.

    ``threads`` defaults to every core the process may use (or ``TVM_NUM_THREADS`` when set). With
    ``trusted_key`` (a PEM public key path; default ``$PENNI_TRUSTED_KEY``) only an artifact signed by
    that key is loaded.
    """
    return CompiledModel(os.fspath(path), device, threads, trusted_key)
