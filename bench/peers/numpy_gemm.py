#!/usr/bin/env python3
"""Peer figures for bench/gemm.ts: NumPy float32 matmul (OpenBLAS sgemm) on this CPU.

  numpy_gemm.py --shapes NT:4096x2048x2048,NN:512x512x512 [--reps 3] [--budget 1.5]

Each shape is op:MxNxK with op two letters, N or T, for A and B as in ra_gemm: C [M, N] =
op(A) @ op(B), A stored [K, M] when transposed, B stored [N, K] when transposed. NumPy hands a
transposed view to sgemm as a transpose flag (no copy); the output is preallocated (out=) so no
page faults are timed. FLOP = 2 M N K. Prints one JSON object.

Thread counts are fixed by the caller through OPENBLAS_NUM_THREADS / OMP_NUM_THREADS (they must
be set before NumPy loads its BLAS), so the caller runs this script once per thread count.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_common import blas_info  # noqa: E402


def best_time(fn, reps, budget):
    fn()  # warm-up
    best, total, n = float("inf"), 0.0, 0
    while n < reps or (total < budget and n < 20):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, n = min(best, dt), total + dt, n + 1
    return best


def blas_core():
    """The kernel family OpenBLAS picked at run time (DYNAMIC_ARCH builds), when it says."""
    try:
        import ctypes

        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
        for path in sorted(paths):
            lib = ctypes.CDLL(path)
            for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename"):
                fn = getattr(lib, name, None)
                if fn is not None:
                    fn.restype = ctypes.c_char_p
                    return fn().decode()
    except (OSError, AttributeError):
        pass
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budget", type=float, default=1.5, help="seconds per shape before stopping at --reps")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    results = []
    for spec in a.shapes.split(","):
        op, dims = spec.split(":")
        M, N, K = (int(x) for x in dims.split("x"))
        ta, tb = op[0] == "T", op[1] == "T"
        A = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
        B = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
        a_, b_ = (A.T if ta else A), (B.T if tb else B)
        C = np.empty((M, N), dtype=np.float32)
        t = best_time(lambda: np.matmul(a_, b_, out=C), a.reps, a.budget)
        results.append({"op": op, "M": M, "N": N, "K": K, "gflops": 2.0 * M * N * K / t / 1e9})
    print(json.dumps({
        "threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "blas": blas_info(),
        "core": blas_core(),
        "numpy": np.__version__,
        "results": results,
    }))


if __name__ == "__main__":
    main()
