"""PyTorch SDPA on one GPU at the shapes of bench/gpu-ring.ts, for comparison in the same run.

Backends: FLASH_ATTENTION (FA2) and CUDNN_ATTENTION, bf16, [B=1, H, S, D] with GQA expanded
to H heads (the flash backend takes equal heads). Forward and backward (backward = the
fwd+bwd time less the forward), median of `reps` CUDA-event-timed runs. FLOPs as bench/gpu.ts:
forward 4*S^2*H*D (halved for causal), backward 2.5x. One JSON line per row.
SDPA_QUEUE=K times K calls back to back per interval and reports a call's share (as bench/gpu.ts
--queue=K does for ours).
Usage: [SDPA_H=32 SDPA_HK=8 SDPA_D=128 SDPA_QUEUE=1] python3 bench/peers/torch_sdpa.py [reps=5] [S,S,...=16384,32768,65536]
"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import os

from torch_common import timed

H, HK, D, QUEUE = (int(os.environ.get(k, v)) for k, v in (("SDPA_H", 32), ("SDPA_HK", 8), ("SDPA_D", 128), ("SDPA_QUEUE", 1)))
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
sizes = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "16384,32768,65536").split(",")]


print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, cuDNN {torch.backends.cudnn.version()}; bf16 H={H} Hk={HK} D={D} queue={QUEUE}")
print("backend  S      causal  fwd ms   TF/s   bwd ms   TF/s")
for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
    for S in sizes:
        for causal in (False, True):
            torch.manual_seed(0)
            q = torch.randn(1, H, S, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            k = torch.randn(1, HK, S, D, device="cuda", dtype=torch.bfloat16).repeat_interleave(H // HK, dim=1).requires_grad_(True)
            v = torch.randn(1, HK, S, D, device="cuda", dtype=torch.bfloat16).repeat_interleave(H // HK, dim=1).requires_grad_(True)
            do = torch.randn_like(q)
            flops = 4 * S * S * H * D / (2 if causal else 1)
            try:
                with sdpa_kernel([backend]):
                    fwd = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), reps, queue=QUEUE)

                    def both():
                        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                        torch.autograd.grad(o, (q, k, v), do)

                    bwd = timed(both, reps, queue=QUEUE) - fwd
                row = dict(backend=name, S=S, causal=causal, fwdMs=fwd, fwdTflops=flops / fwd / 1e9, bwdMs=bwd, bwdTflops=2.5 * flops / bwd / 1e9)
                print(f"{name:8} {S:<6} {str(causal):6}  {fwd:7.2f}  {row['fwdTflops']:5.0f}  {bwd:7.2f}  {row['bwdTflops']:5.0f}")
            except RuntimeError as e:
                row = dict(backend=name, S=S, causal=causal, error=str(e).splitlines()[0])
                print(f"{name:8} {S:<6} {str(causal):6}  unavailable: {row['error']}")
            print("JSON " + json.dumps(row), flush=True)
            del q, k, v, do
            torch.cuda.empty_cache()
