/**
 * The worker side of a CPU rank group: what a rank program can do. It owns this rank's ring
 * buffers (allocated once per plan and shared with the other ranks), runs ring attention on
 * shards it is given, and offers small collectives over shared memory.
 */
import { performance } from 'node:perf_hooks';
import type { Tracer } from '../core/device.js';
import type { AttentionKernel } from '../core/kernel.js';
import type { TraceEvent } from '../core/trace.js';
import { ringForward } from '../ring/forward.js';
import { ringBackward } from '../ring/backward.js';
import { CpuBlock } from './block.js';
import { CpuRankDevice, type AttnParams, type RankShard } from './device.js';
import { ringPlan, type RingPlan } from './ring-plan.js';
import { raiseAbort, type InjectedFailure } from './flags.js';
import type { DecodeCall, Gemm, Linear, RankContext } from '../core/group.js';
import type { MaskSpec } from '../core/mask.js';
import type { AttnParams as Params } from '../core/kernel.js';
import { CpuTransport, seqBase, type NativePull } from './transport.js';
import { SharedFlags } from './flags.js';
import { loadNative } from './build.js';
import { gemm as cGemm } from './gemm.js';
import { decodeAttention } from './decode.js';

/** Flags after the transport's: [base + r] collective posted by r, [base + P + r] collective read by r. */
const COLL = 0, COLL_READ = 1;
export const groupFlagCount = (P: number, transportFlags: number) => transportFlags + 2 * P;

/** Bytes of each rank's mailbox for collectives; larger messages go in pieces. */
export const MAILBOX_BYTES = 1 << 20;

/** Plain loops: the fallback linear layer. */
export const naiveLinear: Linear = (x, w, bias, rows, inDim, outDim, y) => {
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outDim; o++) {
      let s = bias ? bias[o] : 0;
      const xo = r * inDim;
      const wo = o * inDim;
      for (let i = 0; i < inDim; i++) s += x[xo + i] * w[wo + i];
      y[r * outDim + o] = s;
    }
  }
};

/** Plain loops: the fallback GEMM. */
export const naiveGemm: Gemm = (tA, tB, M, N, K, A, B, beta, C) => {
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let p = 0; p < K; p++) s += (tA ? A[p * M + i] : A[i * K + p]) * (tB ? B[j * K + p] : B[p * N + j]);
      C[i * N + j] = beta ? C[i * N + j] + s : s;
    }
  }
};

function nativePull(): NativePull | null {
  const n = loadNative();
  if (!('lib' in n)) return null;
  const lib = n.lib;
  const start = lib.func('void* ra_pull_start(uint8_t* dst, const uint8_t* src, const int64_t* ranges, int nseg, int32_t* flags, int readyIdx, int want, int abortIdx)');
  const wait = lib.func('int ra_pull_wait(void* handle, _Out_ int64_t* times)');
  const now = lib.func('int64_t ra_now_ns()');
  return {
    start: (...a) => start(...a),
    wait: (h, times) => wait(h, times) as number,
    nowNs: () => BigInt(now() as number | bigint),
  };
}

export interface RingRunResult {
  o: Float32Array;
  lse: Float32Array;
  dq?: Float32Array;
  dk?: Float32Array;
  dv?: Float32Array;
}

interface RingState {
  plan: RingPlan;
  device: CpuRankDevice;
  transport: CpuTransport;
  dk: Float32Array;
  dv: Float32Array;
}

export class CpuRank implements RankContext {
  readonly events: TraceEvent[] = [];
  readonly trace: Tracer;
  /** Ring buffers per key (one per distinct plan, e.g. per sliding window of a model's layers). */
  private rings = new Map<string, RingState>();
  /** y = x·wᵀ + b; the native GEMM when it is available. */
  linear: Linear = naiveLinear;
  /** C = op(A)·op(B) + beta·C; the native GEMM when it is available. */
  gemm: Gemm = naiveGemm;
  private epoch = 0;
  private collEpoch = 0;
  private readonly native = nativePull();
  /** Set by the group worker: every rank's mailbox. */
  mailboxes: Float32Array[] = [];
  /** Test hook: fail at this compute step. */
  fail?: InjectedFailure;
  private computeSteps = 0;
  private readonly sig: SharedFlags;

  constructor(
    readonly rank: number,
    readonly ranks: number,
    readonly flags: Int32Array,
    private readonly transportFlags: number,
    readonly kernel: AttentionKernel,
    runStart: number,
    /** Share buffers with every rank (through the main thread); resolves to each rank's. */
    readonly exchange: (name: string, bufs: SharedArrayBuffer[]) => Promise<SharedArrayBuffer[][]>,
    /** Tell the main thread one compute step is done (progress bars). */
    progress: () => void,
  ) {
    this.sig = new SharedFlags(flags, rank);
    const origin = performance.timeOrigin;
    // The native GEMM (or its TypeScript fallback) for the model's linear layers.
    this.gemm = (transA, transB, M, N, K, A, B, beta, C) => cGemm({ transA, transB, M, N, K, A, B, beta, C, kernel: kernel.name === 'ts' ? 'ts' : 'auto' });
    this.linear = (x, w, bias, rows, inDim, outDim, y) => {
      if (bias) for (let r = 0; r < rows; r++) y.set(bias, r * outDim);
      this.gemm(false, true, rows, outDim, inDim, x, w, bias ? 1 : 0, y);
    };
    this.trace = {
      now: () => origin + performance.now() - runStart,
      event: (e) => {
        this.events.push(e);
        if (e.kind !== 'compute') return;
        progress();
        if (this.fail && e.step === this.fail.step && (!this.fail.phase || e.phase === this.fail.phase) && this.computeSteps++ === 0) {
          if (this.fail.mode === 'exit') {
            // A worker that dies: the others must notice. (Its copy threads are joined first, as
            // a failing rank's are: they write into this worker's buffers.)
            this.abortAndDrain();
            process.exit(3);
          }
          throw new Error(`injected failure at ${e.phase} step ${this.fail.step}`);
        }
      },
    };
  }

  /**
   * After a failure: raise the group's abort flag (waking every rank) and join this rank's copy
   * threads still in flight, so that none outlives the buffers it writes into.
   */
  abortAndDrain(): void {
    raiseAbort(this.flags);
    for (const st of this.rings.values()) st.transport.drain();
  }

  /** Bytes this rank holds in ring buffers, shards and accumulators. */
  get bytesHeld(): number {
    let n = this.mailboxes[this.rank]?.byteLength ?? 0;
    for (const st of this.rings.values()) n += st.device.bytesHeld() + st.transport.bytesHeld;
    return n;
  }

  get bytesIn(): number {
    let n = 0;
    for (const st of this.rings.values()) n += st.transport.bytesIn;
    return n;
  }

  decodeAttend(a: DecodeCall): void {
    decodeAttention({
      q: a.q, qPos: a.qPos, caches: [{ k: a.k, v: a.v, pos: a.kPos, n: a.n }], H: a.H, Hk: a.Hk, D: a.D, causal: a.causal,
      window: a.window, sinks: a.sinks, scale: a.scale, o: a.o, lse: a.lse, kvSorted: true, threads: a.threads ?? 1,
      kernel: this.kernel.name === 'ts' ? 'ts' : 'auto',
    });
  }

  resetRings(): void {
    this.rings.clear();
  }

  /** Drop one plan's ring buffers (after its last run: a worker kept for later calls holds none). */
  releaseRing(key = 'default'): void {
    this.rings.delete(key);
  }

  async prepareRingFor(key: string, shards: { pos: Int32Array; seg?: Int32Array }[], params: Params, mask: MaskSpec, backward: boolean): Promise<void> {
    if (this.rings.has(key)) return;
    await this.prepareRing(ringPlan(shards, params, mask, backward), params, shards[this.rank].pos.length, key);
  }

  /** Allocate and share the ring buffers for a plan (once per key; every rank calls it together). */
  async prepareRing(plan: RingPlan, params: AttnParams, shardRows: number, key = 'default'): Promise<void> {
    const row = params.Hk * params.D;
    const dkSab = new SharedArrayBuffer(Math.max(1, shardRows) * row * 4);
    const dvSab = new SharedArrayBuffer(Math.max(1, shardRows) * row * 4);
    const empty: RankShard = { q: new Float32Array(0), k: new Float32Array(0), v: new Float32Array(0), pos: new Int32Array(0) };
    const device = new CpuRankDevice(this.rank, empty, params, this.kernel, plan.layout, plan.sinkRows[this.rank], plan.sinkLayout, new Float32Array(dkSab), new Float32Array(dvSab));
    const own = [device.blocks[0].sab, device.blocks[1].sab, dkSab, dvSab, ...(device.sinks ? [device.sinks[0].sab, device.sinks[1].sab] : [])];
    const all = await this.exchange(`ring:${key}`, own);
    const transport = new CpuTransport(
      this.rank,
      this.flags,
      {
        blocks: all.map((b) => [new CpuBlock(b[0], plan.layout), new CpuBlock(b[1], plan.layout)] as [CpuBlock, CpuBlock]),
        dk: all.map((b) => new Float32Array(b[2])),
        dv: all.map((b) => new Float32Array(b[3])),
        counts: plan.counts,
        segments: plan.segments,
        sinkRows: plan.sinkRows,
        sinks: plan.sinkLayout ? all.map((b) => [new CpuBlock(b[4], plan.sinkLayout!), new CpuBlock(b[5], plan.sinkLayout!)] as [CpuBlock, CpuBlock]) : null,
      },
      this.trace,
      this.native,
    );
    this.rings.set(key, { plan, device, transport, dk: new Float32Array(dkSab), dv: new Float32Array(dvSab) });
  }

  /**
   * Ring attention of this rank's shard (forward, and backward when the shard has dO). Every
   * rank calls it together with shards of the prepared plan. Returns this rank's results; dk/dv
   * are views of shared buffers valid until the next call.
   */
  ringAttention(shard: RankShard, params: AttnParams, key = 'default'): RingRunResult {
    const st = this.rings.get(key);
    if (!st) throw new Error(`ringAttention before prepareRing('${key}')`);
    const e = ++this.epoch;
    st.device.setShard(shard, params);
    st.transport.begin(e, st.plan.schedule);
    ringForward(st.device, st.transport, st.plan.schedule, this.trace, seqBase(e, this.ranks));
    if (!shard.dO) return { o: st.device.o, lse: st.device.lse };
    st.dk.fill(0);
    st.dv.fill(0);
    st.transport.beginBackward();
    ringBackward(st.device, st.transport, st.plan.schedule, this.trace, seqBase(e, this.ranks) + this.ranks);
    const n = shard.pos.length * params.Hk * params.D;
    return { o: st.device.o, lse: st.device.lse, dq: st.device.dq, dk: st.dk.subarray(0, n), dv: st.dv.subarray(0, n) };
  }

  private waitFlag(idx: number, want: number): void {
    this.sig.wait(idx, want);
  }

  private post(idx: number, value: number): void {
    this.sig.post(idx, value);
  }

  private collFlag(kind: number, r: number): number {
    return this.transportFlags + kind * this.ranks + r;
  }

  /** Every rank's `data` (same length on every rank), in rank order. */
  allGather(data: Float32Array): Float32Array[] {
    const out = Array.from({ length: this.ranks }, () => new Float32Array(data.length));
    const piece = MAILBOX_BYTES / 4;
    for (let off = 0; off < data.length || off === 0; off += piece) {
      const len = Math.min(piece, data.length - off);
      const e = ++this.collEpoch;
      // Our mailbox is free once every rank has read the previous collective.
      for (let q = 0; q < this.ranks; q++) this.waitFlag(this.collFlag(COLL_READ, q), e - 1);
      this.mailboxes[this.rank].set(data.subarray(off, off + len));
      this.post(this.collFlag(COLL, this.rank), e);
      for (let q = 0; q < this.ranks; q++) {
        this.waitFlag(this.collFlag(COLL, q), e);
        out[q].set(this.mailboxes[q].subarray(0, len), off);
      }
      this.post(this.collFlag(COLL_READ, this.rank), e);
      if (data.length === 0) break;
    }
    return out;
  }

  /** Sum `data` over all ranks, in place (the same order on every rank, so identical results). */
  allReduceSum(data: Float32Array): void {
    const parts = this.allGather(data);
    data.fill(0);
    for (const p of parts) for (let i = 0; i < data.length; i++) data[i] += p[i];
  }

  /** Wait until every rank has reached this point. */
  barrier(): void {
    this.allGather(new Float32Array(0));
  }
}
