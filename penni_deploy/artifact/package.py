"""Write an artifact file atomically: a zip of ``manifest.json`` and ``model.so``.

The library is exported with the system C compiler, hashed, and the zip is written next to the
destination then renamed over it, so a failed compile never leaves a file at ``-o``. The file gets
the permissions the umask gives any new file (0644 under the usual 022), so whoever deploys it can
read it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import zipfile
from dataclasses import replace

from ..errors import ArtifactError, OutputPathError
from ..paths import check_output_file
from .fatbin import embedded_architectures
from .manifest import LIBRARY_NAME, MANIFEST_NAME, Manifest


#: Compiled into every CPU artifact's library: the thread pool its kernels run on (see the file).
THREAD_POOL_SOURCE = os.path.join(os.path.dirname(__file__), "thread_pool.cc")


def export_library(executable, lib_path: str, *, cpu: bool, native: bool = False) -> None:
    """Link ``executable`` into the shared library ``lib_path``; a CPU library gets our thread pool,
    and with ``native`` the C micro-kernels its kernels call (``kernels/cpu/native``)."""
    if cpu:  # the options reach only our sources: TVM's kernels arrive as compiled objects
        addons = [THREAD_POOL_SOURCE]
        if native:
            from ..kernels.cpu.native import SOURCES

            addons += SOURCES  # a fresh list per call: export_library appends to it
        executable.export_library(lib_path, addons=addons, options=["-O2", "-pthread", "-ldl"])
    else:
        executable.export_library(lib_path)


def write_artifact(path: str, executable, manifest: Manifest) -> Manifest:
    """Export ``executable`` and write it with ``manifest`` (library fields filled in) to ``path``."""
    path = check_output_file(path, "-o", create_folders=True)
    out_dir = os.path.dirname(path)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the folder of -o {path}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="penni-export-") as tmp:
        lib_path = os.path.join(tmp, LIBRARY_NAME)
        export_library(executable, lib_path, cpu=manifest.target.get("device") != "cuda",
                       native=manifest.target.get("precision", "fp32") != "fp32")
        with open(lib_path, "rb") as f:
            library = f.read()
    library_info = {"file": LIBRARY_NAME, "sha256": hashlib.sha256(library).hexdigest(), "bytes": len(library)}
    if manifest.target.get("device") == "cuda":
        gpu_code = embedded_architectures(library)
        if not gpu_code:
            raise ArtifactError("the CUDA library holds no compiled GPU code (no fatbinary); refusing to write it")
        library_info["gpu_code"] = gpu_code
    manifest = replace(manifest, library=library_info)
    write_zip_atomically(path, [(MANIFEST_NAME, manifest.to_json().encode("utf-8")), (LIBRARY_NAME, library)],
                         what="-o")
    return manifest


def write_zip_atomically(path: str, entries: list[tuple[str, bytes]], *, mode: int | None = None,
                         what: str = "the artifact") -> None:
    """Write a deflated zip of ``entries`` to ``path``: next to it first, then renamed over it, so a
    failure never leaves a half-written file. The file gets ``mode``, or what the umask gives a new
    file (not mkstemp's 0600, unreadable by a deploying account)."""
    tmp_zip = os.path.join(os.path.dirname(path), f".penni-{secrets.token_hex(8)}.partial")
    try:
        fd = os.open(tmp_zip, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OutputPathError(f"cannot write {what} {path}: {exc}") from None
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in entries:
                archive.writestr(name, data)
        if mode is not None:
            os.chmod(tmp_zip, mode)
        os.replace(tmp_zip, path)
    except BaseException:
        if os.path.exists(tmp_zip):
            os.unlink(tmp_zip)
        raise
