"""CPU threads: fusedopt's Numba pool beside torch's OpenMP pool (placeholder, measured next)."""

from __future__ import annotations


def configure() -> dict:
    """What fusedopt.torch set for its thread pool (nothing yet)."""
    return {}
