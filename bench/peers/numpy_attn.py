#!/usr/bin/env python3
"""Peer figures for bench/cpu.ts: sgemm and NumPy float32 attention on this CPU.

Prints one JSON object. Thread counts are fixed by the caller through OPENBLAS_NUM_THREADS /
OMP_NUM_THREADS (they must be set before NumPy loads its BLAS), so the caller runs this script
once per thread count.

  sgemm      C = A @ B, N x N float32: 2 N^3 FLOP
  naive      per head: S = Q K^T * scale, softmax over the full S x S matrix, O = P V
  blockwise  FlashAttention-style: per head and query block, a loop over key blocks of sgemm
             calls with an online softmax (running max, sum and rescaled accumulator)
Attention FLOP: 4 * S^2 * H * D (no mask), the convention of bench/cpu.ts.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_common import blas_info  # noqa: E402


def best_time(fn, reps, min_total=0.5):
    fn()  # warm-up
    best = float("inf")
    total = 0.0
    n = 0
    while n < reps or total < min_total:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best = min(best, dt)
        total += dt
        n += 1
        if n >= 50:
            break
    return best


def naive(q, k, v, scale):
    S, H, D = q.shape
    o = np.empty_like(q)
    for h in range(H):
        s = (q[:, h, :] @ k[:, h, :].T) * scale
        s -= s.max(axis=1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=1, keepdims=True)
        o[:, h, :] = s @ v[:, h, :]
    return o


def blockwise(q, k, v, scale, bq, bk):
    S, H, D = q.shape
    o = np.empty_like(q)
    for h in range(H):
        qh = np.ascontiguousarray(q[:, h, :]) * np.float32(scale)
        kh = np.ascontiguousarray(k[:, h, :])
        vh = np.ascontiguousarray(v[:, h, :])
        for q0 in range(0, S, bq):
            qb = qh[q0 : q0 + bq]
            n = qb.shape[0]
            m = np.full((n, 1), -np.inf, dtype=np.float32)
            l = np.zeros((n, 1), dtype=np.float32)
            acc = np.zeros((n, D), dtype=np.float32)
            for k0 in range(0, S, bk):
                s = qb @ kh[k0 : k0 + bk].T
                m_new = np.maximum(m, s.max(axis=1, keepdims=True))
                s -= m_new
                np.exp(s, out=s)
                corr = np.exp(m - m_new)
                l = l * corr + s.sum(axis=1, keepdims=True)
                acc *= corr
                acc += s @ vh[k0 : k0 + bk]
                m = m_new
            o[q0 : q0 + bq, h, :] = acc / l
    return o


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--S", type=int, default=4096)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--N", type=int, default=2048, help="sgemm size")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    reps = 2 if a.quick else 4
    rng = np.random.default_rng(0)
    A = rng.standard_normal((a.N, a.N), dtype=np.float32)
    B = rng.standard_normal((a.N, a.N), dtype=np.float32)
    t = best_time(lambda: A @ B, reps * 2)
    out = {
        "threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "blas": blas_info(),
        "numpy": np.__version__,
        "sgemm_gflops": 2 * a.N**3 / t / 1e9,
    }
    S, H, D = a.S, a.H, a.D
    q = rng.standard_normal((S, H, D), dtype=np.float32)
    k = rng.standard_normal((S, H, D), dtype=np.float32)
    v = rng.standard_normal((S, H, D), dtype=np.float32)
    scale = 1.0 / np.sqrt(D)
    flop = 4.0 * S * S * H * D
    ref = naive(q, k, v, scale)
    out["naive_gflops"] = flop / best_time(lambda: naive(q, k, v, scale), reps, 0) / 1e9
    best = None
    for bq, bk in [(256, 512), (512, 512), (512, 1024), (1024, 1024)]:
        got = blockwise(q, k, v, scale, bq, bk)
        err = float(np.abs(got - ref).max() / np.abs(ref).max())
        assert err < 1e-4, f"blockwise differs from naive: {err}"
        g = flop / best_time(lambda: blockwise(q, k, v, scale, bq, bk), reps, 0) / 1e9
        if best is None or g > best[0]:
            best = (g, bq, bk)
    out["blockwise_gflops"], out["blockwise_bq"], out["blockwise_bk"] = best
    out["shape"] = {"S": S, "H": H, "D": D}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
