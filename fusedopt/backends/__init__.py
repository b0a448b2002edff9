"""The backends that run a step: cpu (Numba), cuda (CuPy and NVRTC) and unfused (array
expressions, the baseline)."""
