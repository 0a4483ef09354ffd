"""The CUDA target. Importing it needs no GPU, driver or nvcc; building needs nvcc."""

from .target import CudaTarget

__all__ = ["CudaTarget"]
