import { BackendError, InputError, RingAttnError } from '../core/errors.js';
import type { InputOptions } from '../core/inputs.js';
import type { Layout } from '../core/layout.js';
import type { F32Tensor } from '../core/tensor.js';
import type { CudaDType } from './convert.js';
import { cudaAvailable } from './check.js';
import { rankEnv } from './control.js';
import { launch } from './launch.js';

/**
 * The CUDA side of the CLI commands (`attend`, `demo` with `--backend cuda`): dtype parsing,
 * launching this very command once per GPU, and the whole-tensor run. Loaded lazily by the
 * commands, so a CPU user never loads the CUDA bindings.
 */

export function parseDtype(s: string | undefined, arg = '--dtype'): CudaDType {
  const map: Record<string, CudaDType> = { bf16: 'bfloat16', bfloat16: 'bfloat16', fp16: 'float16', float16: 'float16', fp32: 'float32', float32: 'float32' };
  const d = map[(s ?? 'bf16').toLowerCase()];
  if (!d) throw new InputError(arg, `expected bf16, fp16 or fp32, got '${s}'`);
  return d;
}

/** Relative error limits against float64 on the original fp32 inputs, by GPU dtype. */
export function verifyTolerance(dtype: CudaDType): { out: number; lse: number } {
  return dtype === 'float32' ? { out: 1e-4, lse: 1e-4 } : dtype === 'float16' ? { out: 1e-2, lse: 1e-2 } : { out: 3e-2, lse: 3e-2 };
}

/**
 * Ranks a GPU command takes without --devices: inside a launched job its world size; else one a
 * GPU of this machine, at most 4 (1 without a usable driver: that rank then says why).
 */
export function defaultGpuRanks(): number {
  const env = rankEnv();
  if (env) return env.world;
  const cuda = cudaAvailable();
  return Math.max(1, Math.min(4, cuda.ok ? cuda.devices : 0));
}

/** Is this process one rank of a launched job? */
export function inLaunchedRank(): boolean {
  return rankEnv() !== null;
}

/**
 * Outside a launched job: start `nproc` copies of this command (same arguments) as ranks and
 * wait; throws with the failing rank's error. Returns false inside a rank (run the work here).
 */
export async function launchSelfIfNeeded(nproc: number): Promise<boolean> {
  if (nproc <= 1 || inLaunchedRank()) return false;
  // One rank a local GPU: say so here rather than from N ranks failing to open theirs.
  const cuda = cudaAvailable();
  if (!cuda.ok) throw new BackendError(cuda.reason);
  if (nproc > cuda.devices) throw new InputError('--devices', `expected at most ${cuda.devices} (the GPUs of this machine; across machines, start one rank a GPU with torchrun), got ${nproc}`);
  const command = [process.execPath, ...process.execArgv, process.argv[1], ...process.argv.slice(2)];
  const r = await launch({ nproc, command });
  if (r.code !== 0) throw new RingAttnError(`rank ${r.failedRank} failed: ${(r.message ?? '').replace(/^rank \d+: /, '')}`);
  return true;
}

export interface AttendCudaOptions extends InputOptions {
  devices?: number;
  layout: Layout;
  dtype: CudaDType;
}

export interface AttendCudaResult {
  out: F32Tensor;
  lse: F32Tensor;
  dq?: F32Tensor;
  dk?: F32Tensor;
  dv?: F32Tensor;
  info: string;
}

/** One GPU, or (inside a launched rank) the ring; null on ranks other than 0. */
export async function attendCuda(q: F32Tensor, k: F32Tensor, v: F32Tensor, o: AttendCudaOptions): Promise<AttendCudaResult | null> {
  const env = rankEnv();
  if (!o.devices || o.devices === 1 || !env) {
    const { attentionCuda } = await import('./index.js');
    const r = await attentionCuda(q, k, v, { causal: o.causal, window: o.window, sinks: o.sinks, segments: o.segments, scale: o.scale, dtype: o.dtype, gradOut: o.gradOut, allowNonfinite: o.allowNonfinite, device: env?.localRank ?? 0 });
    return { ...r, info: `1 GPU (${r.stats.device}), ${r.stats.kernel}, forward ${r.stats.forwardMs.toFixed(2)} ms` };
  }
  const { ringAttentionCudaWhole } = await import('./ring.js');
  const r = await ringAttentionCudaWhole(q, k, v, { devices: o.devices, layout: o.layout, dtype: o.dtype, causal: o.causal, window: o.window, sinks: o.sinks, segments: o.segments, scale: o.scale, gradOut: o.gradOut });
  if (!r) return null;
  const s = r.stats;
  return { ...r, info: `ring of ${s.devices} GPUs, ${o.layout}, ${s.kernel}, forward ${s.forwardMs.toFixed(2)} ms${o.gradOut ? `, backward ${s.backwardMs.toFixed(2)} ms` : ''}, transfers ${(100 * s.overlap).toFixed(0)} % overlapped` };
}
