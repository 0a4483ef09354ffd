"""The x86 CPU target (AVX-512 or AVX2), built with LLVM for the host or a named CPU."""

from .target import X86Target

__all__ = ["X86Target"]
