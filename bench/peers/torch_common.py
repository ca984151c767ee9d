"""Shared by the PyTorch peers: CUDA-event timing (the peers are ours)."""
import math
import os
import sys
import time

import torch


def settle_seconds():
    """RINGATTN_BENCH_SETTLE_MS (default 2000) in seconds: how long each timed pass first runs
    untimed, back to back, as bench/gpu-block.ts settles ours (the GPU's clock under its power cap
    takes about a second to reach a heavy pass's steady value)."""
    raw = os.environ.get("RINGATTN_BENCH_SETTLE_MS", "")
    try:
        ms = 2000.0 if raw == "" else float(raw)
    except ValueError:
        ms = math.nan
    if not (math.isfinite(ms) and ms >= 0):
        sys.exit(f"RINGATTN_BENCH_SETTLE_MS: expected milliseconds >= 0, got '{raw}'")
    return ms / 1000


def timed(fn, reps, warmup=1, queue=1):
    """Median ms of a call of fn over `reps` CUDA-event-timed intervals of `queue` calls enqueued
    back to back (the interval's time / queue), after `warmup` untimed calls and then untimed calls
    for settle_seconds() of wall time."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0, until = time.time(), settle_seconds()
    i = 0
    while time.time() - t0 < until:
        fn()
        i += 1
        if i % 4 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(queue):
            fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / queue)
    ts.sort()
    return ts[len(ts) // 2]
