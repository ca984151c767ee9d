"""cuDNN SDPA forward (bf16, H=32, D=128, one sequence) called back to back for a few seconds:
the peer's side of bench/gpu-clocks.sh. Prints TFLOP/s of the whole loop.
   python3 bench/peers/torch_cudnn_loop.py [S=32768] [causal=0] [seconds=5]"""
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

S = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
causal = len(sys.argv) > 2 and sys.argv[2] == "1"
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
H, D = 32, 128
q, k, v = (torch.randn(1, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
flops = 4 * S * S * H * D / (2 if causal else 1)
with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
    for _ in range(3):
        F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    n, t0 = 0, time.time()
    start.record()
    while time.time() - t0 < seconds:
        for _ in range(10):
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        n += 10
        torch.cuda.synchronize()
    end.record()
    torch.cuda.synchronize()
ms = start.elapsed_time(end) / n
print(f"cudnn S={S} causal={causal}: {n} calls, {ms:.2f} ms a call, {flops / ms / 1e9:.0f} TFLOP/s")
