"""Shared by the PyTorch peers: CUDA-event timing (the peers are ours)."""
import torch


def timed(fn, reps, warmup=1):
    """Median ms of `reps` CUDA-event-timed calls of fn after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]
