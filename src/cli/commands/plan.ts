import type { Command } from 'commander';
import { InputError } from '../../core/errors.js';
import { parseLayout } from '../../core/layout.js';
import {
  DEVICE_NAMES, PLAN_DTYPES, PLAN_MODES, formatPlan, plan,
  type DevicePresetName, type PlanDtype, type PlanMode, type PlanOptions,
} from '../../core/plan.js';
import { asFlagError, intOpt, numOpt, PLAN_MAX } from '../util.js';

interface PlanFlags {
  seq: string;
  heads: string;
  kvHeads?: string;
  headDim: string;
  devices: string;
  dtype?: string;
  layers?: string;
  batch?: string;
  mode: string;
  device: string;
  tflops?: string;
  linkGbps?: string;
  memoryGb?: string;
  hbmGbps?: string;
  causal: boolean;
  layout: string;
  hiddenSize?: string;
  mlpHidden?: string;
  json?: boolean;
}

/** plan() names its options as in the library; the CLI user typed flags. */
const FLAG_OF: Record<string, string> = {
  seq: '--seq', heads: '--heads', kvHeads: '--kv-heads', headDim: '--head-dim', devices: '--devices',
  dtype: '--dtype', layers: '--layers', batch: '--batch', mode: '--mode', device: '--device',
  tflops: '--tflops', linkGBps: '--link-gbps', memoryGB: '--memory-gb', hbmGBps: '--hbm-gbps',
  layout: '--layout', hiddenSize: '--hidden-size', mlpHidden: '--mlp-hidden',
};

function choice<T extends string>(flag: string, v: string, list: readonly T[]): T {
  if ((list as readonly string[]).includes(v)) return v as T;
  throw new InputError(flag, `expected one of ${list.join(', ')}, got '${v}'`);
}

export function registerPlan(program: Command): void {
  program
    .command('plan')
    .description('memory per device, time per layer and the overlap condition of a ring attention run (no computation)')
    .requiredOption('--seq <N>', 'sequence length in tokens')
    .requiredOption('--heads <H>', 'query heads')
    .option('--kv-heads <Hk>', 'key/value heads, a divisor of --heads (default: --heads)')
    .requiredOption('--head-dim <D>', 'head dimension')
    .requiredOption('--devices <P>', 'devices on the ring')
    .option('--dtype <t>', `element type: ${PLAN_DTYPES.join(', ')} (default bf16, fp32 on cpu)`)
    .option('--layers <L>', 'layers (default 1)')
    .option('--batch <B>', 'sequences per batch (default 1)')
    .option('--mode <m>', `${PLAN_MODES.join(', ')}`, 'prefill')
    .option('--device <name>', `preset: ${DEVICE_NAMES.join(', ')}`, 'h200')
    .option('--tflops <x>', 'override sustained attention TFLOP/s')
    .option('--link-gbps <x>', 'override link bandwidth, GB/s per direction')
    .option('--memory-gb <x>', 'override device memory, GB')
    .option('--hbm-gbps <x>', 'override memory bandwidth, GB/s (decode)')
    .option('--causal', 'causal mask', true)
    .option('--no-causal', 'no mask: every query sees every key')
    .option('--layout <name>', 'token layout: contiguous, zigzag or striped', 'zigzag')
    .option('--hidden-size <n>', 'model width for training activations (default heads*head-dim)')
    .option('--mlp-hidden <n>', 'feed-forward width: training also counts layer activations')
    .option('--json', 'print the plan as JSON')
    .action((f: PlanFlags) => {
      runPlan(f);
    });
}

function runPlan(f: PlanFlags): void {
  const heads = intOpt('--heads', f.heads, { min: 1, max: PLAN_MAX })!;
  const opts: PlanOptions = {
    seq: intOpt('--seq', f.seq, { min: 1, max: PLAN_MAX })!,
    heads,
    kvHeads: intOpt('--kv-heads', f.kvHeads, { min: 1, max: PLAN_MAX }) ?? heads,
    headDim: intOpt('--head-dim', f.headDim, { min: 1, max: PLAN_MAX })!,
    devices: intOpt('--devices', f.devices, { min: 1, max: PLAN_MAX })!,
    dtype: f.dtype === undefined ? undefined : choice<PlanDtype>('--dtype', f.dtype, PLAN_DTYPES),
    layers: intOpt('--layers', f.layers, { min: 1, max: PLAN_MAX }),
    batch: intOpt('--batch', f.batch, { min: 1, max: PLAN_MAX }),
    mode: choice<PlanMode>('--mode', f.mode, PLAN_MODES),
    device: choice<DevicePresetName>('--device', f.device, DEVICE_NAMES),
    tflops: numOpt('--tflops', f.tflops, { positive: true }),
    linkGBps: numOpt('--link-gbps', f.linkGbps, { positive: true }),
    memoryGB: numOpt('--memory-gb', f.memoryGb, { positive: true }),
    hbmGBps: numOpt('--hbm-gbps', f.hbmGbps, { positive: true }),
    causal: f.causal,
    layout: parseLayout(f.layout, '--layout'),
    hiddenSize: intOpt('--hidden-size', f.hiddenSize, { min: 1, max: PLAN_MAX }),
    mlpHidden: intOpt('--mlp-hidden', f.mlpHidden, { min: 1, max: PLAN_MAX }),
  };
  let p;
  try {
    p = plan(opts);
  } catch (err) {
    throw asFlagError(err, FLAG_OF);
  }
  process.stdout.write(f.json ? JSON.stringify(p, null, 2) + '\n' : formatPlan(p));
}
