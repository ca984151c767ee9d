"""PyTorch SDPA decode at the shapes of bench/gpu-decode.ts, for comparison in the same run.

One query token per sequence against a cache of n tokens: q [B, H, 1, D], k and v [B, Hk, n, D],
bf16, H=32, Hk=8, D=128, no mask (the query sits at the cache's end, so it sees every key;
is_causal would align the query with the first key). Backends FLASH_ATTENTION and
CUDNN_ATTENTION. GQA through enable_gqa=True where the backend takes it; otherwise k and v are
expanded to H heads (4x the bytes; skipped when that does not fit) and the row says so.
Time per step: median over `reps` blocks of back-to-back calls, CUDA events, after warm-up.
Bandwidth counts the Hk-head cache bytes (what a GQA-aware kernel must read).
One "JSON {...}" line per row (bench/gpu-decode.ts --torch=<file> reads them).
Usage: python3 bench/peers/torch_decode.py [reps=30] [contexts=32768,131072,1048576] [batches=1,8] [D=128]
With DECODE_PROFILE=<backend> (flash or cudnn), each shape runs that backend once more, after its
timing, between cudaProfilerStart/Stop (for `ncu --profile-from-start off`).
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, HK = 32, 8
D = int(sys.argv[4]) if len(sys.argv) > 4 else 128
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
contexts = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "32768,131072,1048576").split(",")]
batches = [int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else "1,8").split(",")]
profile = os.environ.get("DECODE_PROFILE", "")


def timed(fn):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    torch.cuda.synchronize()
    inner = max(1, min(200, int(2.0 / max(a.elapsed_time(b), 1e-3)) + 1))
    ts = []
    for _ in range(reps):
        a.record()
        for _ in range(inner):
            fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / inner)
    ts.sort()
    return ts[len(ts) // 2]


def fits(nbytes):
    free, _ = torch.cuda.mem_get_info()
    return nbytes < free * 0.9


print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, cuDNN {torch.backends.cudnn.version()}; bf16 H={H} Hk={HK} D={D}, one query token")
print("backend  context  batch  ms        TB/s   gqa")
gqa_note = None
for n in contexts:
    for B in batches:
        kv_bytes = 2 * B * HK * n * D * 2
        if not fits(kv_bytes + (1 << 30)):
            for name in ("flash", "cudnn"):
                row = dict(backend=name, context=n, batch=B, d=D, error=f"cache of {kv_bytes / 1e9:.1f} GB does not fit")
                print(f"{name:8} {n:<8} {B:<6} skipped: {row['error']}")
                print("JSON " + json.dumps(row), flush=True)
            continue
        torch.manual_seed(0)
        q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, HK, n, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, HK, n, D, device="cuda", dtype=torch.bfloat16)
        for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
            row = dict(backend=name, context=n, batch=B, d=D)
            try:
                with sdpa_kernel([backend]):
                    try:
                        ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
                        row["gqa"] = "enable_gqa"
                    except RuntimeError as e:
                        if not fits(4 * kv_bytes + (1 << 30)):
                            raise RuntimeError(f"no GQA support ({str(e).splitlines()[0][:80]}) and the expanded cache does not fit")
                        ke, ve = k.repeat_interleave(H // HK, dim=1), v.repeat_interleave(H // HK, dim=1)
                        ms = timed(lambda: F.scaled_dot_product_attention(q, ke, ve))
                        row["gqa"] = "expanded to H heads (4x bytes)"
                        del ke, ve
                if profile == name and row["gqa"] == "enable_gqa":
                    torch.cuda.synchronize()
                    torch.cuda.profiler.start()
                    F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                    torch.cuda.synchronize()
                    torch.cuda.profiler.stop()
                row.update(ms=ms, tbs=kv_bytes / (ms * 1e-3) / 1e12)
                print(f"{name:8} {n:<8} {B:<6} {ms:8.4f}  {row['tbs']:5.2f}  {row['gqa']}")
            except RuntimeError as e:
                row["error"] = str(e).splitlines()[0][:200]
                print(f"{name:8} {n:<8} {B:<6} unavailable: {row['error']}")
            print("JSON " + json.dumps(row), flush=True)
            torch.cuda.empty_cache()
        del q, k, v
        torch.cuda.empty_cache()
