"""Shared by the PyTorch peers: CUDA-event timing (the peers are ours)."""
import torch


def timed(fn, reps, warmup=1, queue=1):
    """Median ms of a call of fn over `reps` CUDA-event-timed intervals of `queue` calls enqueued
    back to back (the interval's time / queue), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
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
