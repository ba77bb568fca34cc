"""Shared benchmark helpers: the machine's measured matmul peak."""

from __future__ import annotations

import time

import torch


def matmul_peak_flops(n: int = 1536, reps: int = 20, dtype=torch.float32) -> float:
    """Best sustained FLOP/s of an n x n x n matmul over `reps` runs (after warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
