"""PyTorch SDPA (bf16, H=32, D=128, one sequence) called back to back for a few seconds: the
peer's side of bench/gpu-clocks.sh. The cuDNN backend's forward by default; flash (FlashAttention-2)
with backend=flash; pass=bwd repeats the backward alone (one forward, its graph kept, then
torch.autograd.grad after torch.autograd.grad: nothing accumulates). Prints TFLOP/s
of the whole loop (backward counted as 2.5x the forward's FLOPs, as bench/gpu.ts counts).
   python3 bench/peers/torch_sdpa_loop.py [S=32768] [causal=0] [seconds=5] [backend=cudnn|flash] [pass=fwd|bwd]"""
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

S = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
causal = len(sys.argv) > 2 and sys.argv[2] == "1"
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
backend = sys.argv[4] if len(sys.argv) > 4 else "cudnn"
which = sys.argv[5] if len(sys.argv) > 5 else "fwd"
backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
if backend not in backends:
    sys.exit(f"backend: expected cudnn or flash, got {backend}")
if which not in ("fwd", "bwd"):
    sys.exit(f"pass: expected fwd or bwd, got {which}")
H, D = 32, 128
q, k, v = (torch.randn(1, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=which == "bwd") for _ in range(3))
flops = 4 * S * S * H * D / (2 if causal else 1) * (2.5 if which == "bwd" else 1)
with sdpa_kernel([backends[backend]]):
    if which == "bwd":
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        dO = torch.randn_like(out)
        call = lambda: torch.autograd.grad(out, (q, k, v), dO, retain_graph=True)
    else:
        call = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    n, t0 = 0, time.time()
    start.record()
    while time.time() - t0 < seconds:
        for _ in range(10):
            call()
        n += 10
        torch.cuda.synchronize()
    end.record()
    torch.cuda.synchronize()
ms = start.elapsed_time(end) / n
print(f"{backend} {which} S={S} causal={causal}: {n} calls, {ms:.2f} ms a call, {flops / ms / 1e9:.0f} TFLOP/s")
