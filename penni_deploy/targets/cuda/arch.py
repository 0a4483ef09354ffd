"""Which NVIDIA architectures an artifact is built for, and which ones CUDA 13 can build at all."""

from __future__ import annotations

import re

from ...errors import TargetError

#: nvcc 13 builds compute capability 7.5 and newer only.
MIN_COMPUTE_CAPABILITY = 75

#: Default build: machine code (SASS) for every architecture from Turing to Hopper, plus PTX of the
#: newest, which the driver JIT-compiles on GPUs newer than any of these.
DEFAULT_SASS = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90")
DEFAULT_PTX = "compute_90"

_SM = re.compile(r"^sm_(\d+)([af]?)$")


def resolve_archs(arch: str | None) -> tuple[tuple[str, ...], str]:
    """``(sass_archs, ptx_arch)`` for ``--arch`` (``sm_80``, a TVM tag such as ``nvidia/nvidia-a100``,
    or None for the default multi-architecture build)."""
    if arch is None:
        return DEFAULT_SASS, DEFAULT_PTX
    sm = arch
    if "/" in arch:  # a TVM target tag
        import tvm

        try:
            sm = str(tvm.target.Target(arch).attrs["arch"])
        except Exception as exc:  # unknown tag
            raise TargetError(f"unknown CUDA target tag {arch!r} ({exc}); use e.g. nvidia/nvidia-a100 or sm_80") from None
    match = _SM.match(sm)
    if not match:
        raise TargetError(f"--arch {arch!r} is not a CUDA architecture; use sm_75 ... sm_90 (or sm_90a), "
                          "or a TVM tag such as nvidia/nvidia-a100")
    capability = int(match.group(1))
    if capability < MIN_COMPUTE_CAPABILITY:
        raise TargetError(
            f"{sm} (compute capability {capability // 10}.{capability % 10}) cannot be targeted: CUDA 13's nvcc "
            "supports compute capability 7.5 (sm_75) and newer only. GPUs such as the Pascal Titan X of the "
            "PENNI paper (sm_61) need an older CUDA toolkit; build for sm_75 or newer")
    return (sm,), f"compute_{match.group(1)}{match.group(2)}"


def codegen_arch(sass: tuple[str, ...]) -> str:
    """The architecture TVM generates CUDA C for: the oldest in the build, so the source suits all."""
    return min(sass, key=lambda a: int(_SM.match(a).group(1)))
