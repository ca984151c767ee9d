#!/usr/bin/env python3
"""A list-scheduling model of the attention kernels' last wave (kernels/NOTES.md session 31).

Items (query tile x head for the forwards, key tile x KV head for the backwards) are handed out
in the kernels' order (orderTile in src/cuda/kernels/common.cuh: heads interleaved in groups of
g, each head's tiles heavier end first, or lighter end first) to whichever of SMS SMs frees first,
as the persistent forward's counter and the hardware's CTA scheduler both do. An item costs
A + B x its visible tiles (us; the per-item trace's fit, run 102), times 1 +- NOISE. Prints the
share of the SMs' time spent idle after their last item, for each group size.

    python3 bench/tail-model.py [S=16384] [H=32] [MASK=edge|causal|unmasked] [SMS=132]

Masks, one S x S block in 128-row tiles: causal (the diagonal: tile t sees t + 1 tiles), edge
(keys a block behind the queries under a window of S/2: tile t sees S/256 - t tiles, the later
half nothing), unmasked.
"""
import heapq
import random
import sys


def order_tile(L, g, nx, ny):
    """common.cuh's orderTile: the (tile, head) of linear index L."""
    if g <= 1:
        return L % nx, L // nx
    y0 = L // (g * nx) * g
    gs = min(g, ny - y0)
    r = L - y0 * nx
    return r // gs, y0 + r % gs


def idle_tail(lengths, heads, g, heavy_first, sms, a=5.0, b=1.6, noise=0.05, seed=1):
    rnd = random.Random(seed)
    nx = len(lengths)
    last_heavier = lengths[-1] >= lengths[0]
    free = [(0.0, i) for i in range(sms)]
    for L in range(nx * heads):
        x, _ = order_tile(L, g, nx, heads)
        # the kernels map x to the heavier end first; the old order always took the last tiles first
        t = (nx - 1 - x if last_heavier else x) if heavy_first else nx - 1 - x
        if lengths[t] == 0:
            continue  # items that see nothing are skipped
        start, sm = heapq.heappop(free)
        heapq.heappush(free, (start + (a + b * lengths[t]) * (1 + noise * rnd.uniform(-1, 1)), sm))
    end = max(t for t, _ in free)
    return sum(end - t for t, _ in free) / (end * sms)


def main():
    S = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
    H = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    mask = sys.argv[3] if len(sys.argv) > 3 else 'edge'
    sms = int(sys.argv[4]) if len(sys.argv) > 4 else 132
    nx = S // 128
    lengths = {
        'causal': [t + 1 for t in range(nx)],
        'edge': [max(0, nx // 2 - t) for t in range(nx)],
        'unmasked': [nx] * nx,
    }[mask]
    print(f'S={S} H={H} {mask}, {sms} SMs: idle after the last item, share of SM time (mean of 3 seeds)')
    print('g   heavier end first   last tiles first (the order before session 31)')
    for g in range(1, min(H, 8) + 1):
        hf = sum(idle_tail(lengths, H, g, True, sms, seed=s) for s in range(3)) / 3
        old = sum(idle_tail(lengths, H, g, False, sms, seed=s) for s in range(3)) / 3
        print(f'{g}   {100 * hf:6.2f}%             {100 * old:6.2f}%{"   (does not divide H)" if H % g else ""}')


if __name__ == '__main__':
    main()
