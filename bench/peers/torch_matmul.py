#!/usr/bin/env python3
"""Peer figures for bench/gpu-gemm.ts: torch.matmul (cuBLAS) on one GPU at the same shapes.

  torch_matmul.py --shapes 8192x2048x2048,32768x512x2048 [--reps 10] [--dtypes bf16,fp32]

Each shape is MxNxK of y = x @ w.T with x [M, K] and w [N, K] (nn.Linear's layout; cuBLAS gets
the transpose as a flag, no copy). bf16: bf16 in and out (fp32 accumulation inside cuBLAS).
fp32: TF32 disabled (allow_tf32 = False, matmul precision 'highest'), so it runs true fp32.
Inputs are random normal (not zeros: zeros draw less power and run faster). Time: median of
`reps` CUDA-event-timed calls after two warm-ups, out= preallocated. FLOP = 2 M N K.
Prints one `JSON {...}` line per (shape, dtype), and one `JSON {"error": ...}` line when torch or
CUDA is missing, exiting 0 either way so the caller's table still prints.
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", required=True)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--dtypes", default="bf16,fp32")
    a = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        print("JSON " + json.dumps({"error": f"torch not importable: {e}"}), flush=True)
        return
    if not torch.cuda.is_available():
        print("JSON " + json.dumps({"error": "torch sees no CUDA device"}), flush=True)
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    dev = torch.device("cuda")
    print(
        "JSON "
        + json.dumps({"info": f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, cuBLAS via torch.matmul"}),
        flush=True,
    )

    from torch_common import timed

    for shape in a.shapes.split(","):
        M, N, K = (int(v) for v in shape.split("x"))
        for dt in a.dtypes.split(","):
            dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dt]
            row = {"M": M, "N": N, "K": K, "dtype": dt}
            try:
                g = torch.Generator(device=dev).manual_seed(0)
                x = torch.randn(M, K, device=dev, dtype=dtype, generator=g)
                w = torch.randn(N, K, device=dev, dtype=dtype, generator=g) * (K ** -0.5)
                y = torch.empty(M, N, device=dev, dtype=dtype)
                ms = timed(lambda: torch.matmul(x, w.t(), out=y), a.reps, warmup=2)
                row.update(ms=ms, tflops=2 * M * N * K / ms / 1e9)
                del x, w, y
            except Exception as e:  # out of memory, unsupported dtype: report and go on
                row["error"] = str(e).splitlines()[0][:200]
            torch.cuda.empty_cache()
            print("JSON " + json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
