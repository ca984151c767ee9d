"""PyTorch FlexAttention on the cases of bench/gpu-masks.ts, for its "of none" in the same run.

One S x S block, bf16, [B=1, H, S, D] queries and [1, Hk, S, D] keys and values (enable_gqa), the
query and key positions of each case as bench/gpu-masks.ts's MASK_CASES builds them, and one mask
function for every case (causal: key position <= query position; window w > 0: query - key < w),
reading the positions and (causal, w) from tensors that are rewritten between cases, so that
torch.compile builds the forward and backward once. create_block_mask (128 x 128 tiles) marks
each tile empty, partial or full: the kernel skips the empty ones and runs the mask function on the
partial ones only. FLOPs as bench/gpu-masks.ts: 4 x visible pairs x H x D forward, 2.5x that
backward (the fwd+bwd time less the forward's), median of `reps` CUDA-event-timed calls after
settling (torch_common.timed). One JSON line per case ({case, fwdMs, fwdTflops, bwdMs, bwdTflops}
or {case, error}).
Usage: [FLEX_H=32 FLEX_HK=8 FLEX_D=128] python3 bench/peers/torch_flex_masks.py [S=16384] [reps=5] [cases=none,all,diagonal,zigzag,edge,unseen]
"""
import json
import os
import sys

import torch

from torch_common import timed

H, HK, D = (int(os.environ.get(k, v)) for k, v in (("FLEX_H", 32), ("FLEX_HK", 8), ("FLEX_D", 128)))
S = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
keys = (sys.argv[3] if len(sys.argv) > 3 else "none,all,diagonal,zigzag,edge,unseen").split(",")


def ar(a, n):
    return torch.arange(a, a + n, dtype=torch.int32)


# (causal, window, query positions, key positions), as MASK_CASES in bench/gpu-masks.ts
CASES = {
    "none": (False, 0, ar(0, S), ar(0, S)),
    "all": (True, 0, ar(S, S), ar(0, S)),
    "diagonal": (True, 0, ar(0, S), ar(0, S)),
    "zigzag": (True, 0, torch.cat([ar(0, S // 2), ar(3 * S // 2, S // 2)]), ar(S // 2, S)),
    "edge": (True, S // 2, ar(S, S), ar(0, S)),
    "unseen": (True, 0, ar(0, S), ar(S, S)),
}

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError as e:
    for key in keys:
        print("JSON " + json.dumps(dict(case=key, error=f"FlexAttention unavailable: {e}")), flush=True)
    sys.exit(0)

print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}; FlexAttention (torch.compile); bf16 H={H} Hk={HK} D={D}; one {S} x {S} block")
dev = "cuda"
qpos = torch.zeros(S, dtype=torch.int32, device=dev)
kpos = torch.zeros(S, dtype=torch.int32, device=dev)
params = torch.zeros(2, dtype=torch.int32, device=dev)  # causal (0/1), window (0: none)


def mask_mod(b, h, qi, ki):
    d = qpos[qi] - kpos[ki]
    return ((params[0] == 0) | (d >= 0)) & ((params[1] == 0) | (d < params[1]))


flex = torch.compile(flex_attention, dynamic=False)
torch.manual_seed(0)
q = torch.randn(1, H, S, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(1, HK, S, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(1, HK, S, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
do = torch.randn_like(q)
print("case       visible  fwd ms   TF/s   bwd ms   TF/s")
for key in keys:
    try:
        if key not in CASES:
            raise ValueError(f"unknown case '{key}': expected one of {', '.join(CASES)}")
        causal, window, qp, kp = CASES[key]
        qpos.copy_(qp)
        kpos.copy_(kp)
        params.copy_(torch.tensor([int(causal), window], dtype=torch.int32))
        # visible pairs, counted as bench/gpu-masks.ts's `seen` does (kp is sorted)
        hi = torch.searchsorted(kp, qp, right=True)
        lo = torch.searchsorted(kp, qp - window, right=True) if window > 0 else torch.zeros_like(hi)
        pairs = int((hi - lo).sum()) if causal else S * S
        if pairs == 0:
            print(f"{key:10} {0:7.3f}  (no visible pair: skipped)")
            print("JSON " + json.dumps(dict(case=key, error="no visible pair: skipped")), flush=True)
            continue
        bm = create_block_mask(mask_mod, None, None, S, S, device=dev, BLOCK_SIZE=128)
        fwd = timed(lambda: flex(q, k, v, block_mask=bm, enable_gqa=True), reps)

        def both():
            o = flex(q, k, v, block_mask=bm, enable_gqa=True)
            torch.autograd.grad(o, (q, k, v), do)

        bwd = timed(both, reps) - fwd
        flops = 4 * pairs * H * D
        row = dict(case=key, visible=pairs / (S * S), fwdMs=fwd, fwdTflops=flops / fwd / 1e9, bwdMs=bwd, bwdTflops=2.5 * flops / bwd / 1e9)
        print(f"{key:10} {row['visible']:7.3f}  {fwd:7.3f}  {row['fwdTflops']:5.0f}  {bwd:7.3f}  {row['bwdTflops']:5.0f}")
    except Exception as e:  # a case that fails (compile, memory) is a row with its error, not the end
        row = dict(case=key, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        print(f"{key:10} unavailable: {row['error']}")
    print("JSON " + json.dumps(row), flush=True)
