"""CPU backend: Numba kernels, one scalar rule per optimizer and one generic parallel loop."""
