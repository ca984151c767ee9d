import type { Command } from 'commander';
import { RingAttnError } from '../../core/errors.js';
import { intOpt } from '../util.js';

interface LaunchFlags {
  nproc: string;
  masterAddr: string;
  masterPort?: string;
  grace: string;
}

/**
 * `ringattn launch --nproc N <command ...>`: N ranks of one host with torchrun's variables
 * (src/cuda/launch.ts). Put `--` before a command whose own options could be taken for ours.
 */
export function registerLaunch(program: Command): void {
  program
    .command('launch')
    .description("run a command as N ranks (one per GPU) with torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; the first failing rank ends all")
    .requiredOption('--nproc <N>', 'number of ranks (processes)')
    .option('--master-addr <host>', 'address rank 0 listens on for the rendezvous', '127.0.0.1')
    .option('--master-port <port>', 'port of the rendezvous (default: a free one)')
    .option('--grace <ms>', 'after a failure, how long the other ranks get to stop by themselves', '5000')
    .argument('<command...>', 'the program and its arguments (use -- before it if it has options)')
    .allowUnknownOption()
    .action(async (command: string[], f: LaunchFlags) => {
      // Ranks of one host: a process each (one a GPU, in the usual job); 1024 is far past any host.
      const nproc = intOpt('--nproc', f.nproc, { min: 1, max: 1024 })!;
      const port = intOpt('--master-port', f.masterPort, { min: 1, max: 65535 });
      const { launch } = await import('../../cuda/launch.js');
      const r = await launch({ nproc, command, masterAddr: f.masterAddr, masterPort: port, graceMs: intOpt('--grace', f.grace, { min: 0, max: 2 ** 31 - 1 - 2000 }) /* (+2 s for the SIGKILL timer: a setTimeout's range) */ });
      if (r.code !== 0) throw new RingAttnError(`launch: rank ${r.failedRank} failed (${r.ranks.map((e) => `rank ${e.rank}: ${e.signal ?? `exit ${e.code}`}`).join(', ')}): ${(r.message ?? '').replace(/^rank \d+: /, '')}`);
    });
}
