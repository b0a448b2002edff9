"""Run fusedopt's CUDA kernels on the CPU: a g++ build of kernels/*.cu and a runtime for it.

See kernels/README.md ("How the CUDA path is verified without a GPU").
"""

from .runtime import HostRuntime, cupy_type

__all__ = ["HostRuntime", "cupy_type"]
